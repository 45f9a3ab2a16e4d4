"""Firmware updates on the device: download (resume, cap, SHA-256), install through RAUC's D-Bus API,
reboot through logind inside the install window, mark the new slot good after the health check."""

"""Privacy guarantees the device enforces itself: policy, key delivery, telemetry minimisation."""

"""The control plane on the device: signed documents over MQTT, trust root, apply, acks, audit."""

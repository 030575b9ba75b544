"""Per-device hardware profiles (YAML) and measured latency tables."""

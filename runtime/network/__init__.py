"""Network side of hibernation: packet hold, activity telemetry, shadow ports,
the health-check proxy. See docs/network.md."""

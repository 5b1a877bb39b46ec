"""Health: per-type probes producing InfluxDB HealthChecks, and the background monitor."""

"""watchdog: component liveness, health, degradation level, alerts, and the audit / DLQ writer."""

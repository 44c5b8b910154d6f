"""gateway: the operator REST API (SPEC §10), the dashboard and the metrics endpoint."""

"""HTTP and WebSocket routes of the venue simulator, one module per area."""

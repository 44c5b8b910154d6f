"""strategy: signal generators with an explicit state machine."""

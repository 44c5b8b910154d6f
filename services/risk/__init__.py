"""risk: trading state machine and pre-trade checks."""

"""Venue simulator: a Binance USD-M futures lookalike that replays recordings and injects faults."""

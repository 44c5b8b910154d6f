"""Binance protocol helpers shared by the venue simulator and the venue clients."""

"""Test support: real embedded infrastructure on free ports in temp dirs (never mocks)."""

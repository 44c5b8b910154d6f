"""Bulwark services: one package per process, each with domain / handlers / adapters / main."""

"""Bulwark contracts: every message, subject and stream the services exchange.

`proto` is the only place messages and subjects are defined. Schema evolution rules (msgspec's):
new fields get defaults, existing fields never change type, tags never change.
"""

"""Decimals written for people and JSON: plain digits, no exponent, no trailing zeros."""

from __future__ import annotations

from decimal import Decimal

__all__ = ["plain"]


def plain(value: Decimal, *, places: int | None = None) -> str:
    """`value` as plain digits (`1E+2` -> `100`, `0.50` -> `0.5`), rounded to `places` decimals when given."""
    if places is not None:
        value = value.quantize(Decimal(1).scaleb(-places))
    return format(value.normalize(), "f")

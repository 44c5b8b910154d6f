"""Bounds on every value that enters the system from outside (API, CLI, settings): the one place
that says how big a number, how long a string and how deep a JSON document may be.

A value out of bounds is refused where it enters with a `BoundsError` naming the field, so it
never reaches arithmetic that blows up (`Decimal` normalising `1e1000000`), a Postgres column that
refuses it (`numeric` with 20 000 places, `bigint` above 2**63, `text` with NUL) or a recursive
parser (`[[[[...`). The checks are pure and cheap; callers map `BoundsError` to their own error
(a 422 in the gateway, a usage error in the CLI, `SettingsError` in the settings).
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation

__all__ = [
    "DECIMAL_MAX_DIGITS",
    "DECIMAL_MAX_INTEGER_DIGITS",
    "DECIMAL_MAX_PLACES",
    "INT64_MAX",
    "INT64_MIN",
    "JSON_MAX_DEPTH",
    "TEXT_MAX_LENGTH",
    "BoundsError",
    "check_decimal",
    "check_finite",
    "check_int",
    "check_json_depth",
    "check_text",
    "json_depth",
    "parse_decimal",
]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
"""Postgres `bigint`: every id, sequence and `*_ns` column."""

DECIMAL_MAX_INTEGER_DIGITS = 18
"""Digits before the point: 10**18 is far above any price or quantity a venue accepts."""
DECIMAL_MAX_PLACES = 18
"""Digits after the point (trailing zeros do not count): venues quote at most 8 to 10."""
DECIMAL_MAX_DIGITS = 28
"""Significant digits: the precision of the default `decimal` context, so arithmetic and
normalising never round a value that was accepted."""

TEXT_MAX_LENGTH = 4096
"""Default length limit of a free-text value."""

JSON_MAX_DEPTH = 32
"""Nesting of `[`/`{` in a JSON document: none of the API's documents goes deeper than 4."""


class BoundsError(ValueError):
    """A value outside its bounds; `field` names it, the message says which bound."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = message


def check_decimal(
    value: Decimal,
    field: str = "",
    *,
    max_integer_digits: int = DECIMAL_MAX_INTEGER_DIGITS,
    max_places: int = DECIMAL_MAX_PLACES,
    max_digits: int = DECIMAL_MAX_DIGITS,
    allow_negative: bool = False,
    allow_zero: bool = True,
) -> Decimal:
    """`value` when it is finite, of bounded size and precision, and of the allowed sign.

    Works on the digit tuple only (no arithmetic), so even `1e1000000` is refused without an
    overflow.

    Raises:
        BoundsError: NaN or infinite, too many digits before or after the point, or a sign not allowed.
    """
    if not value.is_finite():
        raise BoundsError(field, "must be a finite number")
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite
    significant = list(digits)
    # Trailing zeros say nothing about size or precision ("1.000" is 1): drop them first.
    while len(significant) > 1 and significant[-1] == 0:
        significant.pop()
        exponent += 1
    if significant == [0]:
        if not allow_zero:
            raise BoundsError(field, "must not be zero")
        return value
    places = max(0, -exponent)
    integer_digits = max(0, len(significant) + exponent)
    if integer_digits > max_integer_digits:
        raise BoundsError(field, f"has more than {max_integer_digits} digits before the decimal point")
    if places > max_places:
        raise BoundsError(field, f"has more than {max_places} digits after the decimal point")
    if len(significant) > max_digits:
        raise BoundsError(field, f"has more than {max_digits} significant digits")
    if sign and not allow_negative:
        raise BoundsError(field, "must not be negative")
    return value


def parse_decimal(raw: str, field: str = "", **bounds: object) -> Decimal:
    """A decimal from text, within `check_decimal`'s bounds (same keyword arguments).

    Raises:
        BoundsError: not a number, or out of bounds.
    """
    if len(raw) > 64:
        raise BoundsError(field, "is longer than 64 characters")
    try:
        value = Decimal(raw.strip())
    except InvalidOperation as exc:
        raise BoundsError(field, f"not a decimal number: {raw[:40]!r}") from exc
    return check_decimal(value, field, **bounds)  # type: ignore[arg-type]


def check_int(value: int, field: str = "", *, minimum: int = INT64_MIN, maximum: int = INT64_MAX) -> int:
    """`value` when it lies in [minimum, maximum] (default: a Postgres `bigint`).

    Raises:
        BoundsError: outside the range.
    """
    if not minimum <= value <= maximum:
        raise BoundsError(field, f"must be between {minimum} and {maximum}")
    return value


def check_finite(value: float, field: str = "", *, minimum: float | None = None) -> float:
    """`value` when it is finite (not NaN, not infinite) and at least `minimum` when given.

    Raises:
        BoundsError: NaN, infinite, or below `minimum`.
    """
    if not math.isfinite(value):
        raise BoundsError(field, "must be a finite number")
    if minimum is not None and value < minimum:
        raise BoundsError(field, f"must be >= {minimum:g}")
    return value


def check_text(value: str, field: str = "", *, max_length: int = TEXT_MAX_LENGTH) -> str:
    """`value` when it is at most `max_length` characters, has no NUL and is valid UTF-8 text
    (Postgres `text` and `jsonb` refuse NUL; a lone surrogate cannot be encoded at all).

    Raises:
        BoundsError: too long, a NUL character, or an unpaired surrogate.
    """
    if len(value) > max_length:
        raise BoundsError(field, f"is longer than {max_length} characters")
    if "\x00" in value:
        raise BoundsError(field, "must not contain a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BoundsError(field, "is not valid UTF-8 text") from exc
    return value


def json_depth(text: str | bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON document, without parsing it (brackets
    inside strings do not count), so a document too deep for a recursive parser is recognised first."""
    data = text.encode("utf-8", errors="replace") if isinstance(text, str) else text
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def check_json_depth(text: str | bytes, field: str = "", *, max_depth: int = JSON_MAX_DEPTH) -> None:
    """Refuse a JSON document nested deeper than `max_depth`.

    Raises:
        BoundsError: nested too deep.
    """
    opening = text.count("[") + text.count("{") if isinstance(text, str) else text.count(b"[") + text.count(b"{")
    if opening > max_depth and json_depth(text) > max_depth:
        raise BoundsError(field, f"JSON nested deeper than {max_depth} levels")

"""Field types of the API's request models and parameters, bounded by `libs.bounds`.

A value outside them is refused by validation with a 422 naming the field, before any route,
arithmetic, Postgres column or bus message sees it.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from fastapi import Path, Query
from pydantic import AfterValidator, Field

from libs.bounds import INT64_MAX, check_decimal, check_text


def _positive_amount(value: Decimal) -> Decimal:
    return check_decimal(value, allow_zero=False)


def _text(value: str) -> str:
    return check_text(value)


Amount = Annotated[Decimal, AfterValidator(_positive_amount)]
"""A price or quantity: finite, > 0, at most 18 digits before and after the point, 28 in all."""

Text = Annotated[str, AfterValidator(_text)]
"""Free text (with its own `max_length`): no NUL, valid UTF-8."""

Int64Id = Annotated[int, Field(ge=1, le=INT64_MAX)]
"""A row id (`bigserial`)."""

LETTER_ID = Path(ge=1, le=INT64_MAX)
"""`{letter_id}`: a dead letter's `bigserial` id."""


def timestamp_ns(description: str) -> object:
    """A `*_ns` query parameter: a Postgres `bigint`, not negative."""
    return Query(ge=0, le=INT64_MAX, description=description)

"""Explicit state machines: a `(state, trigger) -> state` table and one lookup for all of them."""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import TypeVar

S = TypeVar("S", bound=Enum)
T = TypeVar("T", bound=Enum)


class IllegalTransition(ValueError):
    """The trigger is not allowed in the current state (base of each machine's own error)."""


def next_state(
    table: Mapping[tuple[S, T], S], state: S, trigger: T, error: type[IllegalTransition] = IllegalTransition
) -> S:
    """The state that follows `state` under `trigger` in `table`.

    Raises:
        IllegalTransition (or `error`): the pair is not in the table.
    """
    try:
        return table[(state, trigger)]
    except KeyError:
        raise error(f"{trigger.value} is not allowed in {state.value}") from None

"""Messages stamped with the time and ids they are given: domain code builds its messages through a
`Stamper` (a `Clock` and an id source) instead of the envelope's defaults (the wall clock, `uuid4`),
so a run on a `libs.clock.ManualClock` with `sequential_ids` produces the same bytes every time
(replays, backtests, tests). Adapters and handlers may keep the envelope's defaults.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, TypeVar

from libs.clock import Clock, wall_clock
from proto.envelope import Message, new_message_id

M = TypeVar("M", bound=Message)

IdSource = Callable[[], str]
"""Returns a fresh message id on every call."""


def sequential_ids(prefix: str = "msg-") -> IdSource:
    """Deterministic message ids `<prefix>000000000001`, `...2`, ...: the same on every run."""
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter):012d}"


class Stamper:
    """Builds messages with the envelope filled from its clock and id source.

    Args:
        clock: the time of `ts_init_ns`, and of `ts_event_ns` when the caller gives none.
        new_id: the id source of `message_id` (default: a fresh UUID4 hex each time).
    """

    def __init__(self, clock: Clock = wall_clock, new_id: IdSource = new_message_id) -> None:
        self.clock = clock
        self.new_id = new_id

    def __call__(self, kind: type[M], /, **fields: Any) -> M:
        """A `kind` message of `fields`; `message_id`, `ts_init_ns` and `ts_event_ns` are stamped
        unless given (a `ts_event_ns` of None counts as not given: the event happened now)."""
        now = self.clock()
        if fields.get("message_id") is None:
            fields["message_id"] = self.new_id()
        if fields.get("ts_init_ns") is None:
            fields["ts_init_ns"] = now
        if fields.get("ts_event_ns") is None:
            fields["ts_event_ns"] = now
        return kind(**fields)

"""The position service's projection rows (FM-C3): each written at once; while Postgres is down,
kept in order and written when it is back; a row Postgres refuses (a value it cannot store) goes to
the dead-letter queue with the reason and never holds back the rows behind it
(`libs.deferred_writes`, classified by `libs.store_errors`).

The event log is the source of truth and every row here is already on it: a dead-lettered row is
rebuilt from the ORDERS stream (`bulwark projections rebuild`) once the refused value is dealt with.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from typing import Any

import msgspec

from libs.bus import Bus
from libs.deferred_writes import DeferredWrites, Write
from libs.logging import Logger
from libs.store_errors import WriteFailure
from proto import subjects
from proto.messages import DeadLettered

TABLES_BY_KIND = {"order": "orders", "fill": "fills", "position": "positions"}


def row_payload(key: str, row: Any) -> str:
    """The JSON a dead letter carries for a projection row: its key and every field as text."""
    fields = asdict(row) if is_dataclass(row) and not isinstance(row, type) else {"value": row}
    return msgspec.json.encode({"key": key, "row": {name: _text(value) for name, value in fields.items()}}).decode()


def _text(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, set | frozenset | list | tuple):
        return [_text(item) for item in sorted(value, key=str)]
    if isinstance(value, dict):
        return {str(name): _text(item) for name, item in value.items()}
    return str(value)


class ProjectionWrites:
    """Projection writes of one position process.

    Args:
        bus: where dead letters go (`dlq.<component>-projections`).
        log: structured logger.
        component: the process's component name.
        row_of: the current in-memory row behind a key (`order:<coid>`, `fill:<coid>:<trade id>`),
            for the dead letter's payload (None: not in memory any more).
    """

    def __init__(self, bus: Bus, log: Logger, component: str, row_of: Callable[[str], Any]) -> None:
        self.bus = bus
        self.writer = subjects.position_projections_writer(component)
        self.row_of = row_of
        self.rows = DeferredWrites("projection", log, self.dead_letter)

    async def write(self, key: str, write: Write, later: Write | None = None) -> bool:
        """Write a row now; on failure keep `later` (default `write`) for `flush`. True when written."""
        return await self.rows.write_or_defer(key, write, later)

    def defer(self, key: str, write: Write, exc: BaseException) -> WriteFailure:
        """Keep a row whose write failed with `exc` (a bad one is dead-lettered by the next `flush`)."""
        return self.rows.defer(key, write, exc)

    async def flush(self) -> int:
        """Retry the kept rows (see `libs.deferred_writes`); returns how many were written."""
        return await self.rows.flush()

    async def dead_letter(self, key: str, reason: str, attempts: int) -> None:
        """Publish one refused row on the DLQ stream (de-duplicated per key and reason)."""
        kind = key.split(":", 1)[0]
        letter = DeadLettered(
            consumer=self.writer,
            subject=subjects.projection_row(TABLES_BY_KIND.get(kind, kind)),
            reason=reason[:1000],
            deliveries=attempts,
            payload=row_payload(key, self.row_of(key))[:65536],
            original_message_id=key,
        )
        await self.bus.publish(
            subjects.dlq(self.writer), letter, msg_id=f"dlq:{self.writer}:{key}:{zlib.crc32(reason.encode()):08x}"
        )

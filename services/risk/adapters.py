"""risk's edges: persisted trading state, breakers and degradation level, hot state and positions
read from the bus, book depth from the state-builder, CPU and memory from /proc."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import msgspec

from libs.bus import Bus
from proto import subjects
from proto.codec import decode_as
from proto.enums import ConnectionState, DegradationLevel, HotStateStatus
from proto.kv import (
    BackgroundWorkValue,
    BreakerValue,
    LinkValue,
    TradingStateValue,
    decode_value,
    encode_value,
)
from proto.messages import HotStateRecord, PositionChanged, SymbolHotState, SymbolsReply
from proto.replies import BookReply, ReplyDecodeError, decode_reply

from .checks import parse_degradation
from .trading_state import load_trading_state


async def read_trading_state(bus: Bus) -> TradingStateValue:
    """The persisted trading state (ACTIVE when never set, HALTED when unreadable)."""
    entry = await bus.kv_get(subjects.KEY_TRADING_STATE)
    return load_trading_state(entry[0] if entry else None)


async def write_trading_state(bus: Bus, value: TradingStateValue) -> None:
    """Persist the trading state in KV `trading_state`."""
    await bus.kv_put(subjects.KEY_TRADING_STATE, encode_value(value))


def parse_hot_state(raw: bytes) -> HotStateStatus | None:
    """Hot-state status from a KV `hotstate.<SYM>` value; None when unreadable (so: not VALID)."""
    try:
        return decode_as(raw, HotStateRecord).status
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


async def read_hot_state(bus: Bus, symbol: str) -> HotStateStatus | None:
    """Hot state of one symbol from KV `hotstate.<SYM>` (None when never set)."""
    entry = await bus.kv_get(subjects.key_hot_state(symbol))
    return parse_hot_state(entry[0]) if entry else None


async def read_link(bus: Bus, venue: str, link: str) -> LinkValue | None:
    """A venue link's record from KV `link.<venue>.<link>` (None when never set or unreadable)."""
    entry = await bus.kv_get(subjects.key_link(venue, link))
    return decode_value(LinkValue, entry[0]) if entry else None


async def read_link_state(bus: Bus, venue: str, link: str) -> ConnectionState | None:
    """A venue link's state from KV `link.<venue>.<link>` (None when never set or unreadable)."""
    value = await read_link(bus, venue, link)
    return value.state if value is not None else None


async def read_last_position(bus: Bus, venue: str, symbol: str) -> PositionChanged | None:
    """The newest `PositionChanged` of a symbol on the ORDERS stream (None when there is none)."""
    return await bus.last_message(subjects.STREAM_ORDERS.name, subjects.evt_position(venue, symbol), PositionChanged)


def parse_symbols_reply(raw: bytes) -> dict[str, SymbolHotState]:
    """Per-symbol hot state from a `svc.state-builder.symbols` reply.

    Raises:
        msgspec.DecodeError / msgspec.ValidationError: the reply is not a `SymbolsReply`.
    """
    return decode_as(raw, SymbolsReply).symbols


# --------------------------------------------------------------------------- breakers, degradation, resources


async def read_breaker(bus: Bus, breaker_id: str) -> tuple[BreakerValue | None, str | None]:
    """(record, error) of KV `breaker.<id>`: (None, None) when never set, (None, why) when unreadable."""
    entry = await bus.kv_get(subjects.key_breaker(breaker_id))
    if entry is None:
        return None, None
    record = decode_value(BreakerValue, entry[0])
    if record is None:
        return None, f"not a {BreakerValue.__name__}: {bytes(entry[0][:120])!r}"
    return record, None


async def write_breaker(bus: Bus, record: BreakerValue) -> None:
    """Persist a breaker in KV `breaker.<id>` (what the gateway lists)."""
    await bus.kv_put(subjects.key_breaker(record.breaker), encode_value(record))


async def read_degradation_level(bus: Bus) -> tuple[DegradationLevel | None, int]:
    """(level, ts_ns) from KV `degradation_level`; level None when unreadable (fail closed)."""
    entry = await bus.kv_get(subjects.KEY_DEGRADATION_LEVEL)
    return parse_degradation(entry[0] if entry else None)


async def write_background_work(bus: Bus, paused: bool, reason: str, ts_ns: int) -> None:
    """KV `background_work`: whether background jobs may run (CB-4)."""
    await bus.kv_put(
        subjects.KEY_BACKGROUND_WORK, encode_value(BackgroundWorkValue(paused=paused, reason=reason, ts_ns=ts_ns))
    )


def book_depth(raw: bytes) -> tuple[Decimal, Decimal | None] | None:
    """(quote notional of the served levels, mid price) from a VALID `svc.state-builder.book` reply.

    None when the reply is an error or the book is not VALID (a resyncing book is not a thin market).
    """
    try:
        reply = decode_reply(BookReply, raw)
    except ReplyDecodeError:
        return None
    if not isinstance(reply, BookReply) or reply.status != HotStateStatus.VALID:
        return None
    bids, asks = reply.bids, reply.asks
    depth = sum((p * q for p, q in bids + asks), Decimal(0))
    mid = (bids[0][0] + asks[0][0]) / 2 if bids and asks else None
    return depth, mid


class ProcResources:
    """System CPU and memory use from /proc (Linux); None where it cannot be read."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self._proc = proc
        self._last_cpu: tuple[int, int] | None = None

    def cpu_fraction(self) -> float | None:
        """Busy share of all CPUs since the previous call (None on the first call)."""
        try:
            line = (self._proc / "stat").read_text().splitlines()[0]
            values = [int(v) for v in line.split()[1:9]]
        except (OSError, IndexError, ValueError):
            return None
        idle, total = values[3] + values[4], sum(values)
        previous, self._last_cpu = self._last_cpu, (idle, total)
        if previous is None or total <= previous[1]:
            return None
        return 1.0 - (idle - previous[0]) / (total - previous[1])

    def memory_fraction(self) -> float | None:
        """Used share of memory (1 - MemAvailable / MemTotal)."""
        try:
            fields: dict[str, int] = {}
            for line in (self._proc / "meminfo").read_text().splitlines():
                name, _, rest = line.partition(":")
                if name in ("MemTotal", "MemAvailable"):
                    fields[name] = int(rest.split()[0])
            return 1.0 - fields["MemAvailable"] / fields["MemTotal"]
        except (OSError, KeyError, IndexError, ValueError, ZeroDivisionError):
            return None

"""What the watchdog observes once per evaluation, read from the outside world: hot state per symbol
(asked from the state-builder, the KV bucket when it does not answer), venue link states (KV at start,
then `evt.link.>`), and the state-builder's answer latency.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.errors import NoKeysError

from libs.clock import Clock
from libs.runtime.service import ServiceContext
from proto import subjects
from proto.codec import decode_as
from proto.enums import HotStateStatus
from proto.kv import LinkValue
from proto.messages import HotStateRecord, LinkStateChanged, SymbolsReply
from proto.replies import ReplyDecodeError, decode_reply
from services.watchdog import adapters
from services.watchdog.observations import (
    LatencyObservation,
    LatencyWindow,
    LinkObservation,
    SymbolObservation,
    latencies_from_views,
    symbols_from_reply,
)

SYMBOLS_TIMEOUT_S = 0.5
STALE_AFTER_MS = 1000


class Observer:
    """Collects what the rules look at, once per evaluation: hot state per symbol (asked from the
    state-builder, the KV bucket when it does not answer), link states (KV at start, then
    `evt.link.>`), machine resources and the state-builder's answer latency.

    Args:
        ctx: the service context.
        clock: wall clock (ns): the age of a hot state read from KV.
    """

    def __init__(self, ctx: ServiceContext, clock: Clock) -> None:
        self._ctx = ctx
        self._clock = clock
        self.links: dict[str, LinkObservation] = {}
        """`<venue>.<link>` -> its last known state."""
        self.latency = LatencyWindow(size=60)

    async def start(self) -> None:
        try:
            # The bucket's subject list, not `KeyValue.keys()`: that needs an ephemeral consumer,
            # which the watchdog's bus user may not create (`proto.permissions`).
            for key in await self._ctx.bus.kv_keys(subjects.KEY_LINK_PREFIX):
                if key.startswith(subjects.KEY_LINK_PREFIX):
                    value, _ = await adapters.read_kv_value(self._ctx.bus, self._ctx.log, key, LinkValue)
                    name = key.removeprefix(subjects.KEY_LINK_PREFIX)
                    if value is not None:
                        self.links[name] = LinkObservation(
                            name, value.state.value, value.reason, frozenset(value.causes)
                        )
        except NoKeysError:
            pass

        async def on_link(msg: Msg) -> None:
            try:
                event = decode_as(msg.data, LinkStateChanged)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self._ctx.log.warning("link_event_invalid", subject=msg.subject, error=str(exc)[:200])
                return
            name = f"{event.venue}.{event.link}"
            self.links[name] = LinkObservation(name, event.current.value, event.reason, frozenset(event.causes))

        await self._ctx.bus.subscribe_core(subjects.EVT_LINK_ALL, on_link)

    async def symbols(self) -> list[SymbolObservation]:
        started = time.monotonic()
        try:
            raw = await self._ctx.bus.request(subjects.SVC_STATE_BUILDER_SYMBOLS, b"{}", timeout_s=SYMBOLS_TIMEOUT_S)
            found = symbols_from_reply(decode_reply(SymbolsReply, raw))
        except (NatsError, TimeoutError, ReplyDecodeError) as exc:
            self._ctx.log.debug("symbols_query_failed", error=type(exc).__name__, action_taken="hot state from KV")
        else:
            self.latency.add((time.monotonic() - started) * 1000.0)
            if found:
                return found
        return await self._symbols_from_kv()

    async def _symbols_from_kv(self) -> list[SymbolObservation]:
        found = []
        now = self._clock()
        for symbol in self._ctx.settings.symbols:
            record, _ = await adapters.read_kv_value(
                self._ctx.bus, self._ctx.log, subjects.key_hot_state(symbol), HotStateRecord
            )
            if record is None:
                continue
            age_ms = None
            if record.status == HotStateStatus.STALE and record.ts_ns:
                # STALE is declared 1 s after the last update (FM-D1): the data is that much older.
                age_ms = (now - record.ts_ns) // 1_000_000 + STALE_AFTER_MS
            found.append(SymbolObservation(symbol, record.status.value, age_ms, record.stale_since_ns))
        return found

    def link_observations(self) -> list[LinkObservation]:
        return [self.links[name] for name in sorted(self.links)]

    def latencies(self, views: dict[str, Any]) -> list[LatencyObservation]:
        own = self.latency.observation(f"{subjects.STATE_BUILDER}-query")
        return [*latencies_from_views(views), *([own] if own is not None else [])]

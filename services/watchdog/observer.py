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

from libs.runtime.service import ServiceContext
from proto import subjects
from proto.codec import decode_as
from proto.enums import HotStateStatus
from proto.messages import HotStateRecord, LinkStateChanged
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


def link_observation(name: str, state: str, reason: Any, causes: Any) -> LinkObservation:
    """A link's state as the evaluator sees it, from an event or a KV record (fields may be missing)."""
    return LinkObservation(
        name,
        state,
        reason if isinstance(reason, str) else "",
        frozenset(str(cause) for cause in causes) if isinstance(causes, list) else frozenset(),
    )


class Observer:
    """Collects what the rules look at, once per evaluation: hot state per symbol (asked from the
    state-builder, the KV bucket when it does not answer), link states (KV at start, then
    `evt.link.>`), machine resources and the state-builder's answer latency."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self.links: dict[str, LinkObservation] = {}
        """`<venue>.<link>` -> its last known state."""
        self.latency = LatencyWindow(size=60)

    async def start(self) -> None:
        try:
            kv = await self._ctx.bus.kv()
            for key in await kv.keys():
                if key.startswith("link."):
                    record, _ = await adapters.read_kv_record(self._ctx.bus, self._ctx.log, key)
                    name = key.removeprefix("link.")
                    if isinstance(record.get("state"), str):
                        self.links[name] = link_observation(
                            name, record["state"], record.get("reason"), record.get("causes")
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
            self.links[name] = link_observation(name, event.current.value, event.reason, event.causes)

        await self._ctx.bus.subscribe_core(subjects.EVT_LINK_ALL, on_link)

    async def symbols(self) -> list[SymbolObservation]:
        started = time.monotonic()
        try:
            reply = await self._ctx.bus.request(
                subjects.service_query(subjects.STATE_BUILDER, "symbols"), b"{}", timeout_s=SYMBOLS_TIMEOUT_S
            )
            found = symbols_from_reply(msgspec.json.decode(reply))
        except (NatsError, TimeoutError, msgspec.DecodeError) as exc:
            self._ctx.log.debug("symbols_query_failed", error=type(exc).__name__, action_taken="hot state from KV")
        else:
            self.latency.add((time.monotonic() - started) * 1000.0)
            if found:
                return found
        return await self._symbols_from_kv()

    async def _symbols_from_kv(self) -> list[SymbolObservation]:
        found = []
        now = time.time_ns()
        for symbol in self._ctx.settings.symbols:
            entry = await self._ctx.bus.kv_get(subjects.key_hot_state(symbol))
            if entry is None:
                continue
            try:
                record = msgspec.json.decode(entry[0], type=HotStateRecord)
            except (msgspec.DecodeError, msgspec.ValidationError):
                self._ctx.log.warning("kv_value_unreadable", key=subjects.key_hot_state(symbol))
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

"""`Gateway`: what every route shares, built once per process, and the gateway's use of the bus.

It holds the service context, the timeouts, the heartbeat tracker (core subscription on `hb.>`),
the Idempotency-Key store, the bearer tokens, the metrics and the clock; and it does the bus work
of the routes: request/reply and KV reads (decoded with the `proto` structs, see `replies`),
publishing commands and the operator audit event. A bus that is down is a 503 with `Retry-After`,
a reply that does not decode a 502, never a 500.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from redis.exceptions import RedisError

from libs.clock import Clock, monotonic_clock, wall_clock
from libs.heartbeat import HeartbeatTracker, expected_components
from libs.runtime.service import ServiceContext
from proto import subjects
from proto.codec import decode_as
from proto.enums import ComponentState
from proto.messages import Heartbeat, OperatorActionTaken
from proto.replies import ErrorReply, ReplyDecodeError, decode_reply
from services.gateway import queries
from services.gateway.admission import AdmissionLimits
from services.gateway.auth import Principal, TokenTable
from services.gateway.domain import jsonable
from services.gateway.errors import bad_reply, unavailable
from services.gateway.guard import GuardLimits
from services.gateway.idempotency import IdempotencyStore
from services.gateway.metrics import GatewayMetrics
from services.gateway.replies import Stored, reader, stored
from services.gateway.restarts import RestartCounter

BUS_ERRORS: tuple[type[BaseException], ...] = (NatsError, asyncio.TimeoutError, OSError, RuntimeError)
PING_ERRORS: tuple[type[BaseException], ...] = (*queries.PG_ERRORS, RedisError, *BUS_ERRORS)

R = TypeVar("R", bound=msgspec.Struct)
V = TypeVar("V", bound=msgspec.Struct)


@dataclass
class GatewayConfig:
    """Timeouts of the gateway's calls (seconds)."""

    outcome_timeout_s: float = 5.0
    symbols_timeout_s: float = 0.5
    request_timeout_s: float = 3.0
    ready_timeout_s: float = 1.0
    ping_timeout_s: float = 0.5
    guard: GuardLimits = field(default_factory=GuardLimits)
    """Sizes and deadlines every request must keep (`guard`)."""
    admission: AdmissionLimits = field(default_factory=AdmissionLimits)
    """Rate limits, concurrency budgets and event stream caps (`admission`)."""


@dataclass
class Gateway:
    """What every route needs, built once per process."""

    ctx: ServiceContext
    config: GatewayConfig = field(default_factory=GatewayConfig)
    tracker: HeartbeatTracker = field(init=False)
    restarts: RestartCounter = field(init=False)
    """Process restarts by component, from the same heartbeats."""
    idempotency: IdempotencyStore = field(init=False)
    tokens: TokenTable = field(init=False)
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    clock: Clock = wall_clock
    """UTC epoch ns: heartbeat ages, idempotency records, dead-letter updates."""
    monotonic: Clock = monotonic_clock
    """Monotonic ns: rate limit buckets."""
    ids: Callable[[], str] = field(default=lambda: uuid.uuid4().hex)
    """A fresh id: the de-duplication id of a command whose request carries no Idempotency-Key."""

    def __post_init__(self) -> None:
        self.tokens = TokenTable(self.ctx.settings)  # a malformed BULWARK_API_TOKENS stops the start-up
        self.tracker = HeartbeatTracker(
            timeout_ns=int(self.ctx.settings.heartbeat_timeout_s * 1e9), expected=expected_components(self.ctx.settings)
        )
        self.restarts = RestartCounter(counting_since_ns=self.clock(), timeout_ns=self.tracker.timeout_ns)
        self.idempotency = IdempotencyStore(self.ctx.cache, self.ctx.pool, self.ctx.log, self.clock)

    async def start(self) -> None:
        """Track heartbeats (core subscription on `hb.>`)."""

        async def on_heartbeat(msg: Msg) -> None:
            try:
                heartbeat = decode_as(msg.data, Heartbeat)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self.ctx.log.warning("heartbeat_invalid", subject=msg.subject, error=str(exc)[:200])
                return
            self.heard(heartbeat, self.clock())

        await self.ctx.bus.subscribe_core(subjects.HEARTBEAT_ALL, on_heartbeat)

    def heard(self, heartbeat: Heartbeat, received_ns: int) -> None:
        """Note a heartbeat: the component's state (`tracker`) and its process (`restarts`)."""
        self.tracker.record(heartbeat, received_ns)
        self.restarts.record(heartbeat, received_ns)

    def component_state(self, name: str) -> ComponentState:
        """The state of a component as the heartbeats tell it."""
        view = self.tracker.view(self.clock()).get(name)
        return view.state if view is not None else ComponentState.DOWN

    def require_bus(self) -> None:
        """Refuse early when the bus is disconnected.

        Raises:
            ApiError: 503 `dependency_unavailable` for `nats`.
        """
        if not self.ctx.bus.connected:
            raise unavailable("nats", "the message bus is disconnected")

    async def request(
        self, subject: str, body: msgspec.Struct | None, kind: type[R], timeout_s: float, dependency: str
    ) -> R | ErrorReply:
        """Ask a `svc.*` query: `body` encoded (None: the empty request `{}`), the reply decoded as
        `kind` or the `ErrorReply` it carries (`proto.replies.decode_reply`).

        Raises:
            ApiError: 503 when nobody answers in time or the bus is down; 502 when the reply is
                neither `kind` nor an error.
        """
        self.require_bus()
        payload = msgspec.json.encode(body) if body is not None else b"{}"
        try:
            reply = await self.ctx.bus.request(subject, payload, timeout_s=timeout_s)
        except NoRespondersError as exc:
            raise unavailable(dependency, f"{dependency} is not answering (no responders on {subject})") from exc
        except (TimeoutError, NatsTimeoutError) as exc:
            raise unavailable(dependency, f"{dependency} did not answer within {timeout_s:g} s") from exc
        except BUS_ERRORS as exc:
            raise unavailable("nats", f"bus request failed: {type(exc).__name__}: {exc}"[:300]) from exc
        try:
            return decode_reply(kind, reply)
        except ReplyDecodeError as exc:
            self.ctx.log.warning("reply_unreadable", subject=subject, error=str(exc)[:300])
            raise bad_reply(dependency, str(exc)[:300]) from exc

    async def dependencies(self) -> dict[str, str]:
        """`UP`/`DOWN` of the stores the gateway uses (quick pings), so an operator sees at once
        which reads will answer 503 (FM-C3) and whether idempotency runs on its fallback (FM-C7)."""

        async def ping(check: Callable[[], Awaitable[Any]]) -> str:
            try:
                await asyncio.wait_for(check(), self.config.ping_timeout_s)
            except PING_ERRORS:
                return "DOWN"
            return "UP"

        pool, cache = self.ctx.pool, self.ctx.cache
        postgres, valkey = await asyncio.gather(
            ping(lambda: queries.ping(pool)) if pool is not None else _constant("DOWN"),
            ping(lambda: cache.ping()) if cache is not None else _constant("DOWN"),
        )
        return {"nats": "UP" if self.ctx.bus.connected else "DOWN", "postgres": postgres, "valkey": valkey}

    async def kv_value(self, kind: type[V], key: str) -> V | None:
        """The KV value under `key` as `kind` (`proto.kv`), or None: never set, unreadable, or the bus is down."""
        found = await self.kv_stored(key, reader(kind))
        return found.value if found is not None else None

    async def kv_stored(self, key: str, decode: Callable[[bytes], V | None]) -> Stored[V] | None:
        """The KV value under `key` decoded with `decode` and as stored, or None (see `kv_value`)."""
        raw = await self._kv_raw(key)
        if raw is None:
            return None
        found = stored(raw, decode)
        if found is None:
            self.ctx.log.warning("kv_value_unreadable", key=key)
        return found

    async def kv_listing(self, prefix: str, decode: Callable[[bytes], V | None]) -> dict[str, Stored[V]]:
        """Every KV value under a key starting with `prefix` that decodes, by key without the prefix."""
        if not self.ctx.bus.connected:
            return {}
        try:
            keys = await asyncio.wait_for(self.ctx.bus.kv_keys(prefix), self.config.request_timeout_s)
        except BUS_ERRORS as exc:
            self.ctx.log.warning("kv_keys_failed", prefix=prefix, error=str(exc)[:200])
            return {}
        values: dict[str, Stored[V]] = {}
        for key in keys:
            found = await self.kv_stored(key, decode)
            if found is not None:  # else deleted since, or unreadable
                values[key[len(prefix) :]] = found
        return values

    async def _kv_raw(self, key: str) -> bytes | None:
        """The bytes under `key`, or None (never set, or the bus is down or fails)."""
        if not self.ctx.bus.connected:
            return None
        try:
            entry = await asyncio.wait_for(self.ctx.bus.kv_get(key), self.config.request_timeout_s)
        except BUS_ERRORS as exc:
            self.ctx.log.warning("kv_read_failed", key=key, error=str(exc)[:200])
            return None
        return entry[0] if entry is not None else None

    async def publish(self, subject: str, message: Any, *, msg_id: str | None = None) -> None:
        """Publish a command or event on the durable log.

        Raises:
            ApiError: 503 when the bus is down or the publish fails.
        """
        self.require_bus()
        try:
            await self.ctx.bus.publish(subject, message, msg_id=msg_id)
        except BUS_ERRORS as exc:
            raise unavailable("nats", f"publish failed: {type(exc).__name__}: {exc}"[:300]) from exc

    async def record_action(
        self, who: Principal, action: str, target: str, reason: str, details: dict[str, Any] | None = None
    ) -> None:
        """Publish `OperatorActionTaken` (audited by the watchdog). The action itself already happened,
        so a failure here is logged as an error, not answered to the operator as a failure."""
        event = OperatorActionTaken(
            operator=who.name,
            role=who.role.label,
            action=action,
            target=target,
            reason=reason,
            details={key: jsonable(value) for key, value in (details or {}).items()},
        )
        try:
            await self.ctx.bus.publish(subjects.evt_operator(action), event)
        except BUS_ERRORS as exc:
            self.ctx.log.error(
                "operator_action_not_audited", action=action, target=target, operator=who.name, error=str(exc)[:300]
            )


async def _constant(value: str) -> str:
    return value

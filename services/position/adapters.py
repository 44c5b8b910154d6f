"""position's adapters: the venue link (breaker, clock, retry classes) and the user-data stream.

The Postgres projections (`Projections`) live in `libs.projections`, shared with the rebuild.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import msgspec
import tenacity
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from libs.binance.classify import call_with_retries, classify, retry_policy
from libs.binance.client import RequestThrottled, endpoint_cost
from libs.binance.errors import VenueError, VenueTimeout, VenueUnreachable
from libs.binance.routes import user_stream_url
from libs.breaker import BreakerOpen, BreakerTransition, CircuitBreaker
from libs.logging import Logger
from libs.orders_model import OrderRecord
from libs.ratelimit import Admission, RateBudget
from proto.enums import ErrorClass, OrderType

from .algo_orders import NOT_FOUND, UNKNOWN_ON_CANCEL, AlgoRoute, is_conditional

T = TypeVar("T")

# ---------------------------------------------------------------------- venue link


def submit_is_ambiguous(error: BaseException) -> bool:
    """May an order placement that ended in `error` have been executed? (SPEC FM-N7)

    Stricter than the classifier: every 5xx counts, even with a "try again" code such as -1001,
    because the request reached the venue and an order may exist behind it.
    """
    return classify(error).ambiguous or (isinstance(error, VenueError) and error.status >= 500)


def order_params(order: OrderRecord) -> dict[str, str]:
    """Binance `POST /fapi/v1/order` parameters of an order (client order id included)."""
    params = {
        "symbol": order.symbol,
        "side": order.side.value,
        "type": order.order_type.value,
        "quantity": str(order.quantity),
        "newClientOrderId": order.client_order_id,
        "newOrderRespType": "RESULT",
    }
    if order.price is not None:
        params["price"] = str(order.price)
    if order.stop_price is not None:
        params["stopPrice"] = str(order.stop_price)
    if order.order_type == OrderType.LIMIT:
        params["timeInForce"] = order.time_in_force or "GTC"
    if order.reduce_only:
        params["reduceOnly"] = "true"
    return params


def hurts_venue_health(error: BaseException) -> bool:
    """Failures that say the venue (not our request) is in trouble: they count toward the breaker."""
    return isinstance(error, VenueUnreachable | VenueTimeout) or (isinstance(error, VenueError) and error.status >= 500)


BreakerListener = Callable[[BreakerTransition], Awaitable[None]]


class VenueLink:
    """The position service's calls to its venue, behind one circuit breaker (SPEC FM-N5).

    Reads are retried under SPEC's classes (`call_with_retries`); an order placement is retried only
    while it surely did not execute (unreachable, rate limited, clock skew) and never after an
    ambiguous outcome, which the caller resolves by a query (FM-N7). A -1021 answer resynchronises
    the signing clock from the venue's server time before the retry. While the breaker is open every
    call fails fast with `BreakerOpen` and nothing is sent.

    Args:
        client: a started `BinanceRestClient` (or a fake with the same methods).
        breaker: the venue's breaker.
        log: structured logger.
        wall_clock_ns: real time in ns (for the signing-clock offset).
        on_breaker: awaited with every breaker transition (publish, alert).
    """

    def __init__(
        self,
        client: Any,
        breaker: CircuitBreaker,
        log: Logger,
        wall_clock_ns: Callable[[], int],
        on_breaker: BreakerListener | None = None,
    ) -> None:
        self.client = client
        self.breaker = breaker
        self.log = log
        self.wall_clock_ns = wall_clock_ns
        self.on_breaker = on_breaker
        self.clock_resyncs = 0
        self.algo = AlgoRoute(client)
        """Conditional orders go through Binance's Algo Service (-4120 on /fapi/v1/order since 2025-12-09)."""

    def order_hold(self) -> Admission:
        """Would the request budget (FM-N2) let an order placement go out now?"""
        budget: RateBudget | None = getattr(self.client, "budget", None)
        if budget is None:
            return Admission(True)
        return budget.hold(*endpoint_cost("POST", "/fapi/v1/order", {}))

    async def _transition(self, transition: BreakerTransition | None) -> None:
        if transition is not None and self.on_breaker is not None:
            await self.on_breaker(transition)

    async def _once(self, operation: Callable[[], Awaitable[T]]) -> T:
        await self._transition(self.breaker.check())
        try:
            result = await operation()
        except RequestThrottled:
            raise  # our own budget held it back: nothing was sent, nothing learnt about the venue
        except (VenueError, VenueTimeout, VenueUnreachable) as exc:
            if hurts_venue_health(exc):
                await self._transition(self.breaker.record_failure(f"{type(exc).__name__}: {exc}"[:200]))
            elif isinstance(exc, VenueError):
                # A definite answer: the venue is up even if it refused this request.
                await self._transition(self.breaker.record_success())
            if classify(exc).reason == "clock_skew":
                await self.resync_clock()
            raise
        await self._transition(self.breaker.record_success())
        return result

    async def resync_clock(self) -> None:
        """Set the signing offset from the venue's server time (after -1021)."""
        try:
            server_ms = await self.client.server_time_ms()
        except (VenueError, VenueTimeout, VenueUnreachable) as exc:
            self.log.warning("clock_resync_failed", error=f"{type(exc).__name__}: {exc}")
            return
        offset = server_ms - self.wall_clock_ns() // 1_000_000
        self.log.warning("clock_resynced", previous_offset_ms=self.client.time_offset_ms, offset_ms=offset)
        self.client.time_offset_ms = offset
        self.clock_resyncs += 1

    async def read(self, operation: Callable[[], Awaitable[T]]) -> T:
        """A call without side effect (or an idempotent one): retried under SPEC's classes."""

        async def attempt() -> T:
            # A coroutine function, not a lambda: tenacity only awaits what it sees is async.
            return await self._once(operation)

        return await call_with_retries(attempt)

    async def place(self, operation: Callable[[], Awaitable[T]]) -> T:
        """An order placement: retried only while it surely was not executed.

        Raises:
            BreakerOpen: the venue is failing; nothing was sent.
            VenueError / VenueTimeout / VenueUnreachable: the last outcome (ambiguous ones at once).
        """
        try:
            return await self._once(operation)
        except (VenueError, VenueTimeout, VenueUnreachable) as exc:
            found = classify(exc)
            if submit_is_ambiguous(exc) or found.reason == "ip_banned":
                raise
            if found.error_class not in (ErrorClass.TRANSIENT, ErrorClass.RECOVERABLE):
                raise
            error_class = found.error_class
            self.log.warning("order_place_retry", error_class=error_class.value, reason=found.reason)

        def retryable(error: BaseException) -> bool:
            again = classify(error)
            return again.error_class is error_class and not submit_is_ambiguous(error) and again.reason != "ip_banned"

        policy = retry_policy(error_class).copy(retry=tenacity.retry_if_exception(retryable))
        return await policy(self._once, operation)

    # The client's methods, behind the breaker (names kept so handlers read like the client).

    async def place_order(self, **params: str) -> dict:
        if is_conditional(params):
            return await self.place(lambda: self.algo.place(params))
        return await self.place(lambda: self.client.place_order(**params))

    async def cancel_order(self, symbol: str, *, orig_client_order_id: str) -> dict:
        # A repeated cancel is answered -2011 and then resolved by a query: safe to retry.
        coid = orig_client_order_id
        return await self.read(
            lambda: self.algo.or_algo(
                coid,
                lambda: self.client.cancel_order(symbol, orig_client_order_id=coid),
                lambda: self.algo.cancel(symbol, coid),
                UNKNOWN_ON_CANCEL,
            )
        )

    async def query_order(self, symbol: str, *, orig_client_order_id: str) -> dict:
        coid = orig_client_order_id
        return await self.read(
            lambda: self.algo.or_algo(
                coid,
                lambda: self.client.query_order(symbol, orig_client_order_id=coid),
                lambda: self.algo.query(symbol, coid),
                NOT_FOUND,
            )
        )

    async def open_orders(self, symbol: str | None = None) -> list[dict]:
        """Open orders of the matching engine and untriggered conditional orders of the Algo Service."""
        regular = await self.read(lambda: self.client.open_orders(symbol))
        return [*regular, *await self.read(lambda: self.algo.open_orders(symbol))]

    async def user_trades(self, symbol: str, *, order_id: int | None = None, limit: int = 100) -> list[dict]:
        return await self.read(lambda: self.client.user_trades(symbol, order_id=order_id, limit=limit))

    async def position_risk(self) -> list[dict]:
        return await self.read(self.client.position_risk)

    async def server_time_ms(self) -> int:
        return await self.read(self.client.server_time_ms)

    async def countdown_cancel_all(self, symbol: str, countdown_ms: int) -> dict:
        return await self.read(lambda: self.client.countdown_cancel_all(symbol, countdown_ms))

    async def new_listen_key(self) -> str:
        return await self.read(self.client.new_listen_key)

    async def keepalive_listen_key(self) -> None:
        await self.read(self.client.keepalive_listen_key)


VENUE_FAILURES = (VenueError, VenueTimeout, VenueUnreachable, BreakerOpen)
"""Everything a `VenueLink` call can fail with."""


# ---------------------------------------------------------------------- user-data stream

_decoder = msgspec.json.Decoder()


class UserStreamClosed(Exception):
    """The user-data stream ended (close, error, silence)."""


async def user_stream_events(
    ws_base: str,
    listen_key: str,
    on_open: Callable[[], Awaitable[None]] | None = None,
    *,
    heartbeat_s: float = 10.0,
    routed: bool = True,
) -> AsyncIterator[dict]:
    """Events of Binance's user-data stream `<ws_base>/private/ws/<listenKey>` (raw, not combined;
    `/ws/<listenKey>` when not `routed`, `libs.binance.routes`).

    A user stream is silent while nothing happens, so liveness is checked by ping/pong
    (`heartbeat_s`), not by silence; `on_open` is awaited once the socket is up. Undecodable frames
    are skipped (the poll is the safety net); the iteration ends only by raising `UserStreamClosed`.
    """
    url = user_stream_url(ws_base, listen_key, routed=routed)
    try:
        async with aiohttp.ClientSession() as session, session.ws_connect(url, heartbeat=heartbeat_s) as ws:
            if on_open is not None:
                await on_open()
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    try:
                        event = _decoder.decode(message.data)
                    except msgspec.DecodeError:
                        continue
                    if isinstance(event, dict):
                        yield event
                elif message.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    break
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise UserStreamClosed(f"{type(exc).__name__}: {exc}") from exc
    raise UserStreamClosed("closed by the venue")


async def covered_sequence(js: JetStreamContext, stream: str, durables: tuple[str, ...], last: int) -> int:
    """The stream sequence a snapshot taken now covers: `last`, lowered to just before the first
    message one of `durables` has not handled yet (delivered and unacknowledged, or still pending).

    A message below the covered sequence that was not handled yet would be missing from the
    snapshot and skipped by the replay of the tail. The first unhandled message is the first one
    matching the consumer's filter after its ack floor; the ack floor itself is not the bound: for
    a filtered consumer it is the last message it handled, which may lie a million messages back
    (the last denial), and a snapshot held there makes the next restart fold all of them.
    """
    covered = last
    for durable in durables:
        try:
            info = await js.consumer_info(stream, durable)
        except NotFoundError:
            continue  # not created yet: nothing handled, nothing pending
        if not (info.num_pending or info.num_ack_pending):
            continue
        floor = info.ack_floor.stream_seq if info.ack_floor is not None and info.ack_floor.stream_seq else 0
        config = info.config
        filters = list(config.filter_subjects or []) or ([config.filter_subject] if config.filter_subject else [])
        first: int | None = None
        for subject in filters:
            try:
                found = await js.get_msg(stream, seq=floor + 1, subject=subject, next=True)
            except NotFoundError:
                continue
            if found.seq is not None:
                first = found.seq if first is None else min(first, found.seq)
        covered = min(covered, first - 1 if first is not None else floor)
    return covered

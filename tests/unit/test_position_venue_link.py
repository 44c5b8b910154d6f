"""The position service's venue link and handlers, with fakes for the venue, bus and projections:
retry classes, breaker, clock resync, queueing during an outage, user-stream de-duplication and the
invariant → HARD_SHUTDOWN path."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from libs.binance.errors import VenueError, VenueTimeout, VenueUnreachable
from libs.breaker import BreakerOpen, CircuitBreaker
from libs.bus import Delivery
from libs.clock import ManualClock
from libs.logging import get_logger
from libs.orders_model import Position
from libs.ratelimit import Admission
from proto import subjects
from proto.enums import ConnectionState, OrderSource, OrderStatus, OrderType, Side
from proto.messages import (
    AlertRaised,
    DeadLettered,
    DegradationLevelChanged,
    LinkStateChanged,
    OrderApproved,
    OrderFilled,
    OrderSubmitted,
    SubmitOrder,
)
from services.position.adapters import UserStreamClosed, VenueLink
from services.position.handlers import PositionService

S = 1_000_000_000


class FakeVenue:
    """Scripted answers per method: each call pops the next item (an exception is raised)."""

    def __init__(self, **scripts: list[Any]) -> None:
        self.scripts = scripts
        self.calls: list[str] = []
        self.open_orders_symbols: list[str | None] = []
        self.time_offset_ms = 0
        self.server_ms = 0
        self.hold = Admission(True)

    def order_hold(self) -> Admission:
        return self.hold

    def _next(self, name: str) -> Any:
        self.calls.append(name)
        script = self.scripts.get(name, [])
        item = script.pop(0) if len(script) > 1 else (script[0] if script else {})
        if isinstance(item, BaseException):
            raise item
        return item

    async def place_order(self, **params: str) -> Any:
        return self._next("place_order")

    async def query_order(self, symbol: str, *, orig_client_order_id: str) -> Any:
        return self._next("query_order")

    async def open_orders(self, symbol: str | None = None) -> Any:
        self.open_orders_symbols.append(symbol)
        return self._next("open_orders") or []

    async def user_trades(self, symbol: str, *, order_id: int | None = None, limit: int = 100) -> Any:
        return self._next("user_trades") or []

    async def position_risk(self) -> Any:
        return self._next("position_risk") or []

    async def server_time_ms(self) -> int:
        self.calls.append("server_time_ms")
        return self.server_ms


class FakeBus:
    def __init__(self) -> None:
        self.published: list[tuple[str, Any, str | None]] = []
        self.kv: dict[str, bytes] = {}
        self.requests: list[str] = []

    async def publish(self, subject: str, message: Any, *, msg_id: str | None = None) -> int:
        self.published.append((subject, message, msg_id))
        return len(self.published)

    async def kv_put(self, key: str, value: bytes) -> int:
        self.kv[key] = value
        return 1

    async def kv_get(self, key: str) -> tuple[bytes, int] | None:
        return (self.kv[key], 1) if key in self.kv else None

    async def request(self, subject: str, payload: bytes = b"{}", *, timeout_s: float = 3.0) -> bytes:
        self.requests.append(subject)
        return b"{}"

    def of(self, kind: type) -> list[Any]:
        return [message for _, message, _ in self.published if isinstance(message, kind)]


class FakeProjections:
    """Order rows by client order id (status only, plus full records in `records`); `down` raises as Postgres
    unreachable would."""

    def __init__(self) -> None:
        self.orders: dict[str, str] = {}
        self.records: dict[str, Any] = {}
        self.lookups: list[str] = []
        self.down = False

    async def upsert_order(self, order: Any, event_seq: int) -> None:
        if self.down:
            raise OSError("postgres down")
        self.orders[order.client_order_id] = order.status.value
        self.records[order.client_order_id] = copy.deepcopy(order)

    async def find_order(self, client_order_id: str) -> Any:
        self.lookups.append(client_order_id)
        if self.down:
            raise OSError("postgres down")
        return copy.deepcopy(self.records.get(client_order_id))

    async def record_fill(self, *args: Any) -> None:
        return None

    async def upsert_position(self, *args: Any) -> None:
        return None


def link(venue: FakeVenue, clock: Callable[[], int] | None = None, failures: int = 5) -> VenueLink:
    fake_clock = clock or ManualClock(1_700_000_000 * S)
    breaker = CircuitBreaker("venue-test", fake_clock, failure_threshold=failures)
    return VenueLink(venue, breaker, get_logger("test"), fake_clock)


async def test_place_when_ambiguous_5xx_then_raised_without_resend() -> None:
    venue = FakeVenue(place_order=[VenueError(503, -1001, "Internal error"), {"status": "NEW"}])
    with pytest.raises(VenueError):
        await link(venue).place_order(symbol="BTCUSDT")
    assert venue.calls == ["place_order"]


async def test_place_when_timeout_then_raised_without_resend() -> None:
    venue = FakeVenue(place_order=[VenueTimeout("no answer"), {"status": "NEW"}])
    with pytest.raises(VenueTimeout):
        await link(venue).place_order(symbol="BTCUSDT")
    assert venue.calls == ["place_order"]


async def test_place_when_unreachable_then_retried_because_nothing_was_sent() -> None:
    venue = FakeVenue(place_order=[VenueUnreachable("refused"), {"status": "NEW"}])
    assert await link(venue).place_order(symbol="BTCUSDT") == {"status": "NEW"}
    assert venue.calls == ["place_order", "place_order"]


async def test_place_when_clock_rejected_then_offset_resynced_and_retried() -> None:
    clock = ManualClock(1_700_000_000 * S)
    venue = FakeVenue(place_order=[VenueError(400, -1021, "Timestamp outside recvWindow"), {"status": "NEW"}])
    venue.server_ms = clock() // 1_000_000 + 10_000
    assert await link(venue, clock).place_order(symbol="BTCUSDT") == {"status": "NEW"}
    assert venue.time_offset_ms == 10_000
    assert venue.calls == ["place_order", "server_time_ms", "place_order"]


async def test_place_when_auth_refused_then_no_retry() -> None:
    venue = FakeVenue(place_order=[VenueError(401, -2015, "Invalid API-key"), {"status": "NEW"}])
    with pytest.raises(VenueError):
        await link(venue).place_order(symbol="BTCUSDT")
    assert venue.calls == ["place_order"]


async def test_reads_when_venue_keeps_failing_then_breaker_opens_and_fails_fast() -> None:
    venue = FakeVenue(open_orders=[VenueError(503, -1001, "down")])
    venue_link = link(venue)
    with pytest.raises(BreakerOpen):
        await venue_link.open_orders()
    calls = len(venue.calls)
    assert calls == 5  # SPEC: open after 5 failures in 10 s
    with pytest.raises(BreakerOpen):
        await venue_link.open_orders()
    assert len(venue.calls) == calls  # nothing sent while open


def service(
    venue: Any, bus: FakeBus, projections: FakeProjections | None = None, symbols: tuple[str, ...] = ("BTCUSDT",)
) -> PositionService:
    svc = PositionService(
        bus,  # type: ignore[arg-type]
        get_logger("test"),
        projections or FakeProjections(),  # type: ignore[arg-type]
        venue,
        "binance-usdm",
        ManualClock(1_700_000_000 * S),
        symbols=symbols,
    )
    svc.submission.query_backoff_s = (0.0,)
    svc.core.reconciled = True
    return svc


def approved(key: str, symbol: str = "BTCUSDT") -> OrderApproved:
    return OrderApproved(
        order=SubmitOrder(
            client_order_id=f"bw-{key}",
            idempotency_key=key,
            source=OrderSource.OPERATOR,
            symbol=symbol,
            side=Side.BUY,
            order_type=OrderType.MARKET,
            quantity=Decimal("0.01"),
        )
    )


DELIVERY = Delivery("evt.order.approved.binance-usdm.BTCUSDT", 0, 1, {})


async def test_approved_when_link_down_then_pending_submission_and_venue_untouched() -> None:
    venue, bus, projections = FakeVenue(), FakeBus(), FakeProjections()
    svc = service(venue, bus, projections)
    svc.core.link_state = ConnectionState.DISCONNECTED
    await svc.on_approved(approved("a"), DELIVERY)
    assert svc.ledger.orders["bw-a"].status == OrderStatus.PENDING_SUBMISSION
    assert projections.orders["bw-a"] == "PENDING_SUBMISSION"
    assert venue.calls == []


async def test_approved_when_budget_holds_orders_then_queued_visible_and_sent_in_order_once_free() -> None:
    placed = {"orderId": 7, "status": "NEW", "executedQty": "0"}
    venue, bus, projections = FakeVenue(place_order=[placed]), FakeBus(), FakeProjections()
    svc = service(venue, bus, projections)
    venue.hold = Admission(False, 4.0, "request rate halved")
    await svc.on_approved(approved("first"), DELIVERY)
    venue.hold = Admission(True)
    await svc.on_approved(approved("second"), DELIVERY)  # the budget is free, but "first" waits ahead
    # Recorded at once (visible and cancelable through the gateway), nothing sent inline.
    assert projections.orders == {"bw-first": "PENDING_SUBMISSION", "bw-second": "PENDING_SUBMISSION"}
    assert "request budget" in (svc.ledger.orders["bw-first"].reason or "")
    assert "behind 1 earlier order" in (svc.ledger.orders["bw-second"].reason or "")
    assert venue.calls == []
    await svc.venue_sync.poll_once(follow_live=False)
    assert venue.calls == ["place_order", "place_order"]
    submitted = [m.client_order_id for m in bus.of(OrderSubmitted)]
    assert submitted == ["bw-first", "bw-second"]  # oldest first
    assert {svc.ledger.orders[c].status for c in submitted} == {OrderStatus.NEW}


async def test_poll_when_a_queued_order_fails_to_send_then_the_next_one_still_goes_out() -> None:
    placed = {"orderId": 8, "status": "NEW", "executedQty": "0"}
    venue, bus = FakeVenue(place_order=[RuntimeError("unexpected"), placed]), FakeBus()
    svc = service(venue, bus)
    venue.hold = Admission(False, 1.0, "request rate halved")
    await svc.on_approved(approved("stuck"), DELIVERY)
    await svc.on_approved(approved("next"), DELIVERY)
    venue.hold = Admission(True)
    await svc.venue_sync.poll_once(follow_live=False)
    assert venue.calls == ["place_order", "place_order"]
    assert svc.ledger.orders["bw-next"].status == OrderStatus.NEW


async def test_breaker_open_when_transition_published_then_link_down_unreconciled_and_alerted() -> None:
    venue, bus = FakeVenue(open_orders=[VenueError(503, -1001, "down")]), FakeBus()
    svc = service(None, bus)
    venue_link = link(venue, failures=2)
    venue_link.on_breaker = svc.on_breaker
    svc.core.client = venue_link
    with pytest.raises(BreakerOpen):
        await svc.venue_sync.poll_once()
    assert svc.core.link_state == ConnectionState.DISCONNECTED and not svc.core.reconciled
    assert [event.current for event in bus.of(LinkStateChanged)] == [ConnectionState.DISCONNECTED]
    assert msgspec.json.decode(bus.kv[subjects.key_link("binance-usdm", "orders")])["state"] == "DISCONNECTED"


async def test_approved_when_venue_rejects_permanently_then_rejected_dead_lettered_and_alerted() -> None:
    venue, bus = FakeVenue(place_order=[VenueError(400, -2019, "Margin is insufficient.")]), FakeBus()
    svc = service(venue, bus)
    await svc.on_approved(approved("b"), DELIVERY)
    assert svc.ledger.orders["bw-b"].status == OrderStatus.REJECTED
    (letter,) = bus.of(DeadLettered)
    assert letter.consumer == "position-orders" and "insufficient_funds" in letter.reason
    assert any(subject == subjects.dlq("position-orders") for subject, _, _ in bus.published)
    assert venue.calls == ["place_order"]


async def test_user_stream_when_same_trade_twice_then_counted_once() -> None:
    venue = FakeVenue(place_order=[{"orderId": 7, "status": "NEW", "executedQty": "0"}])
    bus = FakeBus()
    svc = service(venue, bus)
    await svc.on_approved(approved("c"), DELIVERY)
    update = {"c": "bw-c", "i": 7, "x": "TRADE", "X": "FILLED", "t": 99, "l": "0.01", "L": "100", "z": "0.01"}
    event = {"e": "ORDER_TRADE_UPDATE", "o": update}
    await svc.on_user_event(event)
    await svc.on_user_event(event)
    assert svc.ledger.orders["bw-c"].status == OrderStatus.FILLED
    assert len(bus.of(OrderFilled)) == 1
    assert svc.ledger.positions["BTCUSDT"].quantity == Decimal("0.01")
    assert not svc.core.hard_shutdown


async def test_invariant_when_position_moves_without_fill_then_hard_shutdown_and_p0() -> None:
    bus = FakeBus()
    svc = service(FakeVenue(), bus)
    svc.ledger.rebase()
    svc.ledger.positions["BTCUSDT"] = Position(Decimal("1"), Decimal("100"))
    problems = await svc.integrity.check_invariants()
    assert problems and svc.core.hard_shutdown
    (level,) = bus.of(DegradationLevelChanged)
    assert level.current.value == "HARD_SHUTDOWN"
    assert msgspec.json.decode(bus.kv[subjects.KEY_DEGRADATION_LEVEL])["level"] == "HARD_SHUTDOWN"
    assert subjects.SVC_RISK_HALT in bus.requests
    assert [alert.severity.value for alert in bus.of(AlertRaised)] == ["P0"]
    assert svc.core.flattening()  # SPEC §5 HARD_SHUTDOWN: no entries, flatten at market


async def test_poll_when_no_live_order_then_one_symbols_open_orders_asked() -> None:
    venue = FakeVenue()
    svc = service(venue, FakeBus(), symbols=("BTCUSDT", "ETHUSDT", "SOLUSDT"))
    await svc.venue_sync.poll_once()
    # Weight 1: the all-symbol request (weight 40 a second) would be the IP's whole budget (FM-N2).
    assert venue.open_orders_symbols == ["BTCUSDT"]


async def test_poll_when_orders_live_on_two_symbols_then_each_asked_once_and_missing_one_queried() -> None:
    resting = {"orderId": 7, "status": "NEW", "executedQty": "0"}
    venue = FakeVenue(
        place_order=[resting],
        open_orders=[[{**resting, "symbol": "ETHUSDT", "clientOrderId": "bw-e"}]],
        query_order=[{**resting, "status": "CANCELED"}],
    )
    svc = service(venue, FakeBus(), symbols=("BTCUSDT", "ETHUSDT", "SOLUSDT"))
    await svc.on_approved(approved("b", "BTCUSDT"), DELIVERY)
    await svc.on_approved(approved("e", "ETHUSDT"), DELIVERY)
    await svc.venue_sync.poll_once()
    assert sorted(venue.open_orders_symbols, key=str) == ["BTCUSDT", "ETHUSDT"]
    # The fake answers the same list for both symbols: bw-e is open; bw-b is not, so it is queried.
    assert svc.ledger.orders["bw-e"].status == OrderStatus.NEW
    assert svc.ledger.orders["bw-b"].status == OrderStatus.CANCELED
    assert venue.calls.count("query_order") == 1


async def test_poll_when_venue_fails_then_one_request_per_poll_whatever_the_symbols() -> None:
    resting = {"orderId": 7, "status": "NEW", "executedQty": "0"}
    venue = FakeVenue(place_order=[resting], open_orders=[VenueError(503, -1001, "down")])
    svc = service(venue, FakeBus(), symbols=("BTCUSDT", "ETHUSDT"))
    await svc.on_approved(approved("b", "BTCUSDT"), DELIVERY)
    await svc.on_approved(approved("e", "ETHUSDT"), DELIVERY)
    with pytest.raises(VenueError):
        await svc.venue_sync.poll_once()
    assert venue.open_orders_symbols == ["BTCUSDT"]  # the venue breaker counts one failure per poll


async def test_user_stream_when_main_endpoint_refuses_then_alternate_used_and_reconciliation_asked() -> None:
    """FM-N4/N6 for the user-data stream: a connection to the main endpoint that never opens moves
    the stream to the configured alternate; opening there asks for a reconciliation (updates may
    have been missed) and its fills are applied."""
    venue = FakeVenue(place_order=[{"orderId": 7, "status": "NEW", "executedQty": "0"}])

    async def new_listen_key() -> str:
        return "key"

    venue.new_listen_key = new_listen_key  # type: ignore[attr-defined]
    svc = service(venue, FakeBus())
    await svc.on_approved(approved("c"), DELIVERY)
    tried: list[str] = []
    opened = asyncio.Event()

    async def stream(ws_base: str, listen_key: str, on_open: Callable[[], Any]) -> Any:
        tried.append(ws_base)
        if ws_base == "ws://main":
            raise UserStreamClosed("ClientConnectorError: connection refused")
        await on_open()
        update = {"c": "bw-c", "i": 7, "x": "TRADE", "X": "FILLED", "t": 1, "l": "0.01", "L": "100", "z": "0.01"}
        yield {"e": "ORDER_TRADE_UPDATE", "o": update}
        opened.set()
        await asyncio.Event().wait()  # stays up

    task = asyncio.create_task(svc.user_stream_forever(["ws://main", "ws://backup"], stream))
    try:
        await asyncio.wait_for(opened.wait(), 10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert tried == ["ws://main", "ws://backup"]
    assert svc.core.user_stream_up and not svc.core.reconciled, "an opened stream must ask for a reconciliation"
    assert svc.ledger.orders["bw-c"].status == OrderStatus.FILLED

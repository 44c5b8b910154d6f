"""What the position service writes for other processes keeps the shape earlier versions wrote, now
through the proto structs: the `svc.position.state` reply, the KV values (protective levels, the
venue breaker, the order link, HARD_SHUTDOWN) and the halt request to risk. Values written by an
earlier version are still read.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

from libs.breaker import BreakerTransition
from libs.bus import Delivery
from libs.orders_model import OrderRecord, Position
from libs.projections import fold_events
from proto import subjects
from proto.enums import BreakerState, ConnectionState, DegradationLevel, OrderSource, OrderStatus, OrderType, Side
from proto.messages import BreakerStateChanged, DegradationLevelChanged, OrderDenied
from services.position.domain import Protection
from tests.unit.test_position_venue_link import FakeBus, FakeVenue, approved, service

D = Decimal
VENUE = "binance-usdm"


class RequestRecordingBus(FakeBus):
    """A fake bus that also keeps the payload of each request."""

    def __init__(self) -> None:
        super().__init__()
        self.payloads: list[tuple[str, bytes]] = []

    async def request(self, subject: str, payload: bytes = b"{}", *, timeout_s: float = 3.0) -> bytes:
        self.payloads.append((subject, payload))
        return await super().request(subject, payload, timeout_s=timeout_s)


def filled_order(coid: str, quantity: str) -> OrderRecord:
    record = OrderRecord(
        client_order_id=coid,
        idempotency_key=coid,
        source=OrderSource.OPERATOR,
        venue=VENUE,
        symbol="BTCUSDT",
        side=Side.BUY,
        order_type=OrderType.MARKET,
        quantity=D(quantity),
        status=OrderStatus.FILLED,
        created_ns=1,
        updated_ns=1,
    )
    record.add_fill(1, D(quantity), D("100"))
    return record


async def test_state_query_when_answered_then_keys_and_value_formats_as_before() -> None:
    svc = service(FakeVenue(), FakeBus())
    svc.ledger.orders["bw-a"] = filled_order("bw-a", "0.010")
    svc.ledger.positions["BTCUSDT"] = Position(D("0.010"), D("100"))
    svc.ledger.protections["BTCUSDT"] = Protection("bw-a", "BTCUSDT", D("90.50"), None)
    raw = await svc.state_query(b"{}")
    # The reply as earlier versions built it by hand (a dict): the same bytes, key order included.
    before: dict[str, Any] = {
        "orders": {"bw-a": {"status": "FILLED", "filled_quantity": "0.010", "symbol": "BTCUSDT"}},
        "positions": {"BTCUSDT": "0.010"},
        "protections": {"BTCUSDT": {"entry": "bw-a", "stop_loss": "90.50", "take_profit": "None"}},
        "reconciled": True,
        "recovery": None,
        "memory": {
            "orders": 1,
            "evicted": 0,
            "evicted_until_ns": 0,
            "retention_s": 600.0,
            "retention_max_terminal": 2000,
        },
    }
    assert raw == msgspec.json.encode(before)


async def test_protection_levels_when_remembered_then_value_as_before_and_an_old_value_loads() -> None:
    bus = FakeBus()
    svc = service(FakeVenue(), bus)
    key = subjects.key_protection(VENUE, "BTCUSDT")
    assert key == "protection.binance-usdm.BTCUSDT"
    await svc.levels.remember(Protection("bw-e", "BTCUSDT", D("90.50"), None))
    assert bus.kv[key] == msgspec.json.encode({"entry": "bw-e", "stop_loss": "90.50", "take_profit": None})

    bus.kv[key] = b'{"entry": "bw-f", "stop_loss": null, "take_profit": "110.0"}'  # an earlier version's
    await svc.levels.load()
    assert svc.ledger.protections == {"BTCUSDT": Protection("bw-f", "BTCUSDT", None, D("110.0"))}


async def test_protection_levels_when_value_unreadable_then_ignored_and_snapshot_not_used() -> None:
    bus = FakeBus()
    svc = service(FakeVenue(), bus)
    bus.kv[subjects.key_protection(VENUE, "BTCUSDT")] = b'{"stop_loss": "90"}'  # no entry
    await svc.levels.load(fallback=[Protection("bw-old", "BTCUSDT", D("80"), None)])
    assert svc.ledger.protections == {}


async def test_venue_breaker_when_transition_then_kv_value_as_the_breaker_records_it() -> None:
    bus = FakeBus()
    svc = service(FakeVenue(), bus)
    name = subjects.position_venue_breaker(VENUE)
    assert name == "venue-binance-usdm"
    transition = BreakerTransition(name, BreakerState.CLOSED, BreakerState.OPEN, "5 failures in 10 s")
    await svc.on_breaker(transition)
    (event,) = bus.of(BreakerStateChanged)
    assert bus.kv[subjects.key_breaker(name)] == msgspec.json.encode(transition.record(event.ts_event_ns))


async def test_order_link_when_set_then_state_reason_and_time_with_no_causes() -> None:
    bus = FakeBus()
    svc = service(FakeVenue(), bus)
    await svc.core.set_link(ConnectionState.DISCONNECTED, "venue breaker open")
    value = msgspec.json.decode(bus.kv[subjects.key_link(VENUE, subjects.ORDER_LINK)])
    ts_ns = value.pop("ts_ns")
    assert isinstance(ts_ns, int) and ts_ns > 0
    assert value == {"state": "DISCONNECTED", "reason": "venue breaker open", "causes": []}


async def test_degradation_level_when_written_by_watchdog_or_gateway_then_read() -> None:
    bus = FakeBus()
    svc = service(FakeVenue(), bus)
    watchdog = {"level": "EMERGENCY_MODE", "reason": "red", "previous": None, "ts_ns": 7}
    bus.kv[subjects.KEY_DEGRADATION_LEVEL] = msgspec.json.encode(watchdog)
    assert await svc.core.read_level() == (DegradationLevel.EMERGENCY_MODE, 7)
    gateway = {"level": "HARD_SHUTDOWN", "reason": "stop (by ops)", "operator": "ops", "ts_ns": 8}
    bus.kv[subjects.KEY_DEGRADATION_LEVEL] = msgspec.json.encode(gateway)
    assert await svc.core.read_level() == (DegradationLevel.HARD_SHUTDOWN, 8)
    bus.kv[subjects.KEY_DEGRADATION_LEVEL] = b'{"level": "SIDEWAYS", "ts_ns": 9}'
    level, _ = await svc.core.read_level()
    assert level is None  # unreadable: no level (fail closed where the reader needs one)


async def test_hard_shutdown_when_invariant_violated_then_level_value_and_halt_request_as_before() -> None:
    bus = RequestRecordingBus()
    svc = service(FakeVenue(), bus)
    bus.kv[subjects.KEY_DEGRADATION_LEVEL] = msgspec.json.encode({"level": "NORMAL", "ts_ns": 1})
    svc.ledger.rebase()
    svc.ledger.positions["BTCUSDT"] = Position(D("1"), D("100"))
    await svc.integrity.check_invariants()
    (changed,) = bus.of(DegradationLevelChanged)
    assert changed.previous == DegradationLevel.NORMAL
    # As the watchdog and the gateway write it: with the level before (readers ignore what they do not know).
    record = {"level": "HARD_SHUTDOWN", "reason": changed.reason, "previous": "NORMAL", "ts_ns": changed.ts_event_ns}
    assert bus.kv[subjects.KEY_DEGRADATION_LEVEL] == msgspec.json.encode(record)
    ((subject, payload),) = bus.payloads
    assert subject == subjects.SVC_RISK_HALT
    assert payload == msgspec.json.encode({"operator": "position", "reason": changed.reason})


async def test_denial_when_recorded_live_then_the_row_a_rebuild_from_the_log_makes() -> None:
    svc = service(FakeVenue(), FakeBus())
    svc.core.clock = lambda: 9_999_999_999  # the handling time must not end up in the row
    denied = OrderDenied(order=approved("d").order, reason="trading HALTED", ts_event_ns=1_234, ts_init_ns=1_234)
    await svc.on_denied(denied, Delivery("evt.order.denied.binance-usdm.BTCUSDT", 7, 1, {}))
    live = svc.ledger.orders["bw-d"]
    rebuilt = fold_events([(denied, 7)]).orders["bw-d"]
    assert (live.status, live.reason, live.created_ns, live.updated_ns) == (
        rebuilt.status,
        rebuilt.reason,
        rebuilt.created_ns,
        rebuilt.updated_ns,
    )
    assert live.created_ns == 1_234

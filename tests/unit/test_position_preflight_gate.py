"""The preflight gate of the order link: which orders wait for, or are refused by, the venue
preflight of the current connection."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from libs.binance.errors import VenueError, VenueTimeout
from libs.orders_model import OrderRecord
from proto.enums import OrderSource, OrderStatus, OrderType, Side
from services.position.preflight_gate import GateState, PreflightGate
from tests.unit.test_position_venue_link import DELIVERY, FakeBus, FakeVenue, approved, service


def _order(reduce_only: bool) -> OrderRecord:
    return OrderRecord(
        client_order_id="c1",
        idempotency_key="k1",
        source=OrderSource.OPERATOR,
        symbol="BTCUSDT",
        side=Side.BUY,
        order_type=OrderType.MARKET,
        quantity=Decimal("0.01"),
        status=OrderStatus.PENDING_SUBMISSION,
        venue="binance-usdm",
        reduce_only=reduce_only,
        created_ns=1,
        updated_ns=1,
    )


def test_gate_when_no_preflight_wired_then_nothing_held_even_after_a_link_drop() -> None:
    gate = PreflightGate()
    gate.link_down()
    assert not gate.holds(_order(False)) and not gate.refuses(_order(False))


def test_gate_when_armed_then_entries_wait_for_the_first_verdict_and_reduce_only_goes() -> None:
    gate = PreflightGate()
    gate.arm()
    assert gate.holds(_order(False)) and not gate.refuses(_order(False))
    assert not gate.holds(_order(True))
    gate.settle(ok=True, reachable=True, reason="")
    assert gate.state == GateState.PASSED and not gate.holds(_order(False))


def test_gate_when_link_drops_after_passing_then_pending_again_until_the_next_verdict() -> None:
    gate = PreflightGate()
    gate.arm()
    gate.settle(ok=True, reachable=True, reason="")
    gate.link_down()
    assert gate.holds(_order(False))
    gate.settle(ok=False, reachable=False, reason="venue unreachable: timeout")
    assert gate.holds(_order(False)) and "incomplete" in gate.reason


def test_gate_when_preflight_failed_then_entries_refused_with_the_reason_and_reduce_only_passes() -> None:
    gate = PreflightGate()
    gate.arm()
    gate.settle(ok=False, reachable=True, reason="position_mode: hedge mode")
    assert gate.refuses(_order(False)) and not gate.holds(_order(False))
    assert not gate.refuses(_order(True)) and not gate.holds(_order(True))
    assert gate.reason == "venue preflight failed: position_mode: hedge mode"
    assert gate.fields()["preflight_gate"] == "FAILED"


class _GateFailsDuringQuery(FakeVenue):
    """Times out the placement; the preflight of the connection fails before the query answers."""

    def __init__(self, svc_box: list[Any]) -> None:
        super().__init__(
            place_order=[VenueTimeout("no answer")],
            query_order=[VenueError(400, -2013, "Order does not exist.")],
        )
        self.svc_box = svc_box

    async def query_order(self, symbol: str, *, orig_client_order_id: str) -> Any:
        self.svc_box[0].core.preflight_gate.settle(ok=False, reachable=True, reason="position_mode: hedge mode")
        return await super().query_order(symbol, orig_client_order_id=orig_client_order_id)


async def test_resend_when_preflight_failed_meanwhile_then_entry_rejected_not_resent() -> None:
    box: list[Any] = []
    venue = _GateFailsDuringQuery(box)
    svc = service(venue, FakeBus())
    box.append(svc)
    svc.core.preflight_gate.arm()
    svc.core.preflight_gate.settle(ok=True, reachable=True, reason="")
    await svc.on_approved(approved("r"), DELIVERY)
    order = svc.ledger.orders["bw-r"]
    assert venue.calls.count("place_order") == 1, "sent once while the preflight passed"
    assert order.status == OrderStatus.REJECTED and "preflight failed" in (order.reason or "")

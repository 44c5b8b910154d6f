"""Soak (issue 15, point 6): many orders and messages through the components whose per-key maps
grow with traffic, and memory stays flat once their bounds are reached.

One order every 0.6 s of event time (a day is 144 000 orders): each is approved and canceled in
risk's state (decided orders, pending exposure, order → strategy, the rate window), raises an
alert no one resolves in the watchdog's router, and has its protective order refused (position);
strategy instances come and go under new names every ten minutes (heartbeat tracker, evaluator).
After a warm-up past every bound (risk's 100 000 decided orders, a day of heartbeats) and past the
first rehash of the maps that churn at their bound, traced memory over many more orders grows by
less than the tolerance.
"""

from __future__ import annotations

import gc
import tracemalloc
from decimal import Decimal

import pytest

from libs.clock import ManualClock
from libs.heartbeat import HeartbeatTracker
from proto.enums import AlertSeverity, ComponentState, OrderSource, OrderType, Side
from proto.messages import AlertRaised, Heartbeat, OrderApproved, OrderCanceled, SubmitOrder
from services.position.protection import newly_given_up
from services.risk.state import RiskState
from services.risk.state import apply as risk_apply
from services.watchdog import alerts
from services.watchdog.alerts import AlertRouter
from services.watchdog.evaluator import WatchdogEvaluator

STEP_NS = 600_000_000
WARM_UP = 200_000
MEASURED = 60_000
TOLERANCE_BYTES = 2 * 1024 * 1024


class Traffic:
    def __init__(self) -> None:
        self.clock = ManualClock(1_700_000_000 * 1_000_000_000)
        self.risk = RiskState(venue="binance-usdm")
        self.router = AlertRouter()
        self.tracker = HeartbeatTracker(timeout_ns=3_000_000_000, expected=("risk", "position"))
        self.evaluator = WatchdogEvaluator(self.clock, grace_ns=0)
        self.given_up: dict[str, None] = {}
        self.sent = 0

    def drive(self, orders: int) -> None:
        for _ in range(orders):
            n = self.sent
            self.sent += 1
            self.clock.now += STEP_NS
            now = self.clock()
            coid = f"bw-{n:012d}"
            order = SubmitOrder(
                client_order_id=coid,
                idempotency_key=coid,
                source=OrderSource.STRATEGY,
                symbol="BTCUSDT",
                side=Side.BUY,
                order_type=OrderType.MARKET,
                quantity=Decimal("0.001"),
                strategy="trend",
            )
            risk_apply(self.risk, OrderApproved(order=order, ts_event_ns=now))
            risk_apply(self.risk, OrderCanceled(client_order_id=coid, symbol="BTCUSDT", ts_event_ns=now))
            alerts.apply(
                self.router,
                AlertRaised(
                    key=f"order-vanished:{coid}",
                    severity=AlertSeverity.P1,
                    component="position",
                    title="live order unknown to the venue",
                    ts_event_ns=now,
                ),
            )
            # A strategy instance lives ten minutes, then another name takes over (deployments).
            name = f"strategy-{n // 1_000}"
            self.tracker.record(Heartbeat(component=name, pid=n, state=ComponentState.READY, started_ns=now), now)
            newly_given_up(self.given_up, f"protect:{coid}:stop")
            if n % 1_000 == 0:
                self.evaluator.evaluate(self.tracker.view(now))


def traced_bytes() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


@pytest.mark.slow
def test_soak_when_orders_keep_coming_then_memory_flat_after_warm_up() -> None:
    traffic = Traffic()
    tracemalloc.start()
    try:
        traffic.drive(WARM_UP)
        before = traced_bytes()
        traffic.drive(MEASURED)
        after = traced_bytes()
    finally:
        tracemalloc.stop()

    assert after - before < TOLERANCE_BYTES, f"grew {(after - before) / 1e6:.1f} MB over {MEASURED} orders"
    assert len(traffic.risk.decided) <= 100_000
    assert len(traffic.router.open) <= 1_000
    assert len(traffic.tracker.view(traffic.clock())) <= 24 * 6 + 3  # a day of names at most, then forgotten

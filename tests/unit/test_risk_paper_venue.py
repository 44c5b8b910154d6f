"""Paper beside live (`bulwark up --paper-link`): risk sends a paper-mode strategy's orders to the
paper venue and nothing else there, and keeps that venue out of live routing, live exposure, the
holders of live symbols and the loss breakers (`services.risk.paper`, `routing`, `decisions`)."""

from __future__ import annotations

from decimal import Decimal as D

from libs.clock import ManualClock
from libs.ids import client_order_id_for
from libs.logging import get_logger
from libs.settings import Settings
from proto.enums import ConnectionState, OrderSource, OrderType, Side, StrategyMode, TradingState
from proto.kv import TradingStateValue
from proto.messages import EnableStrategy, OrderApproved, PositionChanged, SubmitOrder
from services.risk import decisions
from services.risk.checks import RiskLimits
from services.risk.handlers import RiskService
from services.risk.main import breakers_from
from services.risk.paper import PaperModes
from services.risk.routing import live_view, paper_route
from services.risk.state import apply
from tests.unit.test_risk_contracts import MemoryBus

S = 1_000_000_000
MAIN = "binance-usdm"
BACKUP = "binance-usdm-backup"
PAPER = "binance-usdm-paper"
LIMITS = RiskLimits(symbols=frozenset({"BTCUSDT"}), max_position_qty=D(1), max_order_notional=D(100000))


def order(key: str, strategy: str | None = "trend", venue: str = MAIN, side: Side = Side.BUY) -> SubmitOrder:
    return SubmitOrder(
        client_order_id=client_order_id_for(key),
        idempotency_key=key,
        source=OrderSource.STRATEGY if strategy else OrderSource.OPERATOR,
        symbol="BTCUSDT",
        side=side,
        order_type=OrderType.MARKET,
        quantity=D("0.01"),
        venue=venue,
        strategy=strategy,
    )


def risk(paper_venue: str = PAPER, backup: str = "") -> RiskService:
    service = RiskService(
        MemoryBus(),  # type: ignore[arg-type]
        get_logger("risk-test"),
        LIMITS,
        MAIN,
        ManualClock(100 * S),
        TradingStateValue(state=TradingState.ACTIVE),
        breakers=breakers_from(Settings()),
        monotonic=ManualClock(10 * S),
        backup_venue=backup,
        paper=PaperModes(venue=paper_venue),
    )
    service.paper.on_enabled(EnableStrategy(strategy="paper-one", operator="op", reason="try", mode=StrategyMode.PAPER))
    return service


def position(venue: str, quantity: str, cause: str | None = None, ts: int = 1, pnl: str = "0") -> PositionChanged:
    return PositionChanged(
        venue=venue,
        symbol="BTCUSDT",
        quantity=D(quantity),
        average_entry_price=D(100),
        realized_pnl=D(pnl),
        caused_by_client_order_id=cause,
        ts_event_ns=ts,
    )


# --------------------------------------------------------------------------- pure parts


def test_paper_route_when_strategy_order_names_main_then_paper_venue_with_reason() -> None:
    route = paper_route(order("a", "paper-one"), PAPER)
    assert route.venue == PAPER and "paper" in route.reason


def test_live_view_when_paper_position_and_in_flight_then_left_out() -> None:
    positions, in_flight = live_view({MAIN: D(0), PAPER: D(1)}, {PAPER, MAIN}, PAPER)
    assert positions == {MAIN: D(0)} and in_flight == {MAIN}
    assert live_view({MAIN: D(1)}, {MAIN}, "") == ({MAIN: D(1)}, {MAIN})


def test_paper_modes_when_paper_venue_then_link_and_routed_only_for_paper_orders() -> None:
    modes = PaperModes(venue=PAPER)
    modes.on_enabled(EnableStrategy(strategy="paper-one", operator="op", reason="", mode=StrategyMode.PAPER))
    assert modes.has_link and modes.denial(order("a", "paper-one")) is None
    assert modes.routed_venue(order("a", "paper-one")) == PAPER
    assert modes.routed_venue(order("b", "trend")) is None  # a live strategy: live routing
    assert modes.routed_venue(order("c", None)) is None  # an operator's order: live
    assert modes.routed_venue(order("d", None, venue=PAPER)) == PAPER  # names the paper venue itself
    whole = PaperModes(paper_link=True, venue=PAPER)  # the whole system on paper: its own link
    assert whole.venue == "" and whole.routed_venue(order("a", "paper-one")) is None
    none = PaperModes()
    none.on_enabled(EnableStrategy(strategy="paper-one", operator="op", reason="", mode=StrategyMode.PAPER))
    assert none.denial(order("a", "paper-one")) is not None  # fail closed without any paper link


# --------------------------------------------------------------------------- risk's routing


def test_route_when_paper_strategy_then_paper_venue_and_live_strategy_then_main() -> None:
    service = risk()
    paper, reason = decisions.route(service, order("p", "paper-one")) or (None, "")
    assert paper is not None and paper.venue == PAPER and "paper" in reason
    live, _ = decisions.route(service, order("l", "trend")) or (None, "")
    assert live is not None and live.venue == MAIN


def test_route_when_live_order_names_paper_venue_without_paper_venue_configured_then_not_configured() -> None:
    assert decisions.route(risk(paper_venue=""), order("x", "trend", venue=PAPER)) is None


def test_route_when_paper_position_and_order_in_flight_then_live_order_not_pinned_to_paper() -> None:
    service = risk(backup=BACKUP)
    apply(service.state, OrderApproved(order=order("p1", "paper-one", venue=PAPER)))
    apply(service.state, position(PAPER, "0.01", client_order_id_for("p1")))
    service.order_links = {MAIN: ConnectionState.CONNECTED, BACKUP: ConnectionState.CONNECTED}
    live, reason = decisions.route(service, order("l", "trend")) or (None, "")
    # With the paper venue counted as a holding venue the order would follow the paper position.
    assert live is not None and live.venue == MAIN and reason == ""


def test_exposure_when_paper_order_in_flight_then_not_live_exposure_nor_live_holder() -> None:
    service = risk()
    apply(service.state, OrderApproved(order=order("p1", "paper-one", venue=PAPER)))
    assert service.pending.totals("BTCUSDT", PAPER, paper=False) == (D(0), D(0))
    assert service.pending.totals("BTCUSDT", PAPER, paper=True) == (D("0.01"), D(0))
    assert decisions._holders(service, "BTCUSDT") == frozenset()
    assert decisions._holders(service, "BTCUSDT", paper=True) == frozenset({"paper-one"})


def test_holders_when_live_position_then_not_a_paper_holder_and_paper_position_not_live() -> None:
    service = risk()
    apply(service.state, OrderApproved(order=order("l1", "trend")))
    apply(service.state, position(MAIN, "0.01", client_order_id_for("l1"), ts=1))
    apply(service.state, OrderApproved(order=order("p1", "paper-one", venue=PAPER)))
    apply(service.state, position(PAPER, "0.02", client_order_id_for("p1"), ts=2))
    live = decisions._holders(service, "BTCUSDT")
    paper = decisions._holders(service, "BTCUSDT", paper=True)
    assert live == frozenset({"trend"}) and paper == frozenset({"paper-one"})
    assert service.state.position(PAPER, "BTCUSDT") == D("0.02")
    assert service.state.position(MAIN, "BTCUSDT") == D("0.01")


def test_paper_fills_when_loss_then_no_loss_breaker_input_and_live_loss_counts() -> None:
    service = risk()
    state = service.state
    apply(state, OrderApproved(order=order("p1", "paper-one", venue=PAPER)))
    apply(state, position(PAPER, "0.01", client_order_id_for("p1"), ts=1))
    apply(state, OrderApproved(order=order("p2", "paper-one", venue=PAPER, side=Side.SELL)))
    closed = position(PAPER, "0", client_order_id_for("p2"), ts=2, pnl="-500")
    assert apply(state, closed) is None  # a paper loss is no CB-1/CB-3 input
    apply(state, OrderApproved(order=order("l1", "trend")))
    apply(state, position(MAIN, "0.01", client_order_id_for("l1"), ts=3))
    apply(state, OrderApproved(order=order("l2", "trend", side=Side.SELL)))
    live_close = position(MAIN, "0", client_order_id_for("l2"), ts=4, pnl="-500")
    assert apply(state, live_close) is not None


def test_paper_position_when_no_paper_venue_then_ignored() -> None:
    service = risk(paper_venue="")
    apply(service.state, position(PAPER, "1"))
    assert service.state.positions == {}


def test_route_when_switched_to_paper_while_holding_live_then_exit_goes_live_and_entries_to_paper() -> None:
    # paper-one opened a live position, then was enabled on paper: its exit must close that position
    # where it is (on the paper venue it would be refused, leaving the live position without exit).
    service = risk()
    apply(service.state, OrderApproved(order=order("l1", "paper-one")))
    apply(service.state, position(MAIN, "0.01", client_order_id_for("l1"), ts=1))
    exit_, _ = decisions.route(service, order("x", "paper-one", side=Side.SELL)) or (None, "")
    assert exit_ is not None and exit_.venue == MAIN
    entry, _ = decisions.route(service, order("e", "paper-one", side=Side.BUY)) or (None, "")
    assert entry is not None and entry.venue == PAPER

    # Another strategy's live position is not paper-one's to close: its sell stays on paper.
    other = risk()
    apply(other.state, OrderApproved(order=order("t1", "trend")))
    apply(other.state, position(MAIN, "0.01", client_order_id_for("t1"), ts=1))
    sell, _ = decisions.route(other, order("s", "paper-one", side=Side.SELL)) or (None, "")
    assert sell is not None and sell.venue == PAPER

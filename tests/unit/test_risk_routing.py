"""Which venue an order goes to (FM-N6 failover to a configured backup venue): `route_order`,
position books per venue, pending orders per venue, and a flatten that closes each position where
it is."""

from __future__ import annotations

from decimal import Decimal as D

from libs.ids import client_order_id_for
from proto.enums import ConnectionState, OrderSource, OrderType, Side
from proto.messages import SubmitOrder
from services.risk.exposure import PendingExposure
from services.risk.routing import OrderLinks, book_key, flatten_orders, route_order, split_book

MAIN = "binance-usdm"
BACKUP = "binance-usdm-backup"
UP = ConnectionState.CONNECTED
DOWN = ConnectionState.DISCONNECTED


def order(side: Side = Side.BUY, quantity: str = "0.01", venue: str = MAIN, **extra: object) -> SubmitOrder:
    key = f"k-{side.value}-{quantity}-{venue}"
    return SubmitOrder(
        client_order_id=client_order_id_for(key),
        idempotency_key=key,
        source=OrderSource.OPERATOR,
        symbol="BTCUSDT",
        side=side,
        order_type=OrderType.MARKET,
        quantity=D(quantity),
        venue=venue,
        **extra,  # type: ignore[arg-type]
    )


def links(main: ConnectionState | None, backup: ConnectionState | None) -> OrderLinks:
    return OrderLinks(main=MAIN, backup=BACKUP, states={MAIN: main, BACKUP: backup})


FLAT = {MAIN: D(0), BACKUP: D(0)}


def test_route_when_main_link_up_then_main() -> None:
    route = route_order(order(), links(UP, UP), FLAT, set())
    assert route is not None and route.venue == MAIN and route.reason == ""


def test_route_when_main_down_and_backup_connected_and_symbol_flat_then_backup_with_reason() -> None:
    route = route_order(order(), links(DOWN, UP), FLAT, set())
    assert route is not None and route.venue == BACKUP
    assert "failover" in route.reason and MAIN in route.reason


def test_route_when_both_down_then_main_where_it_waits_as_pending_submission() -> None:
    for backup in (DOWN, None, ConnectionState.SUSPECT):
        route = route_order(order(), links(DOWN, backup), FLAT, set())
        assert route is not None and route.venue == MAIN, backup


def test_route_when_main_link_never_heard_of_then_main() -> None:
    # Unknown is not down: the main venue's process may simply not have said anything yet.
    route = route_order(order(), links(None, UP), FLAT, set())
    assert route is not None and route.venue == MAIN


def test_route_when_main_holds_the_position_and_is_down_then_exit_and_entry_stay_on_main() -> None:
    positions = {MAIN: D("0.02"), BACKUP: D(0)}
    for candidate in (order(Side.SELL, "0.02", reduce_only=True), order(Side.BUY, "0.01")):
        route = route_order(candidate, links(DOWN, UP), positions, set())
        assert route is not None and route.venue == MAIN


def test_route_when_orders_in_flight_on_main_then_next_entry_joins_them() -> None:
    # A queued entry on the down main venue: a second one must not open the symbol on the backup too.
    route = route_order(order(), links(DOWN, UP), FLAT, {MAIN})
    assert route is not None and route.venue == MAIN


def test_route_when_backup_holds_the_position_then_orders_go_there_also_once_main_is_back() -> None:
    positions = {MAIN: D(0), BACKUP: D("0.01")}
    exit_order = order(Side.SELL, "0.01", reduce_only=True)
    route = route_order(exit_order, links(UP, UP), positions, set())
    assert route is not None and route.venue == BACKUP and "on binance-usdm-backup" in route.reason
    route = route_order(order(), links(UP, UP), FLAT, {BACKUP})
    assert route is not None and route.venue == BACKUP


def test_route_when_positions_on_both_venues_then_a_reducing_order_goes_where_it_reduces() -> None:
    positions = {MAIN: D("0.01"), BACKUP: D("-0.03")}
    buy = route_order(order(Side.BUY, "0.03"), links(UP, UP), positions, set())
    assert buy is not None and buy.venue == BACKUP
    sell = route_order(order(Side.SELL, "0.01"), links(UP, UP), positions, set())
    assert sell is not None and sell.venue == MAIN


def test_route_when_no_backup_configured_then_always_the_main_venue() -> None:
    alone = OrderLinks(main=MAIN, states={MAIN: DOWN})
    route = route_order(order(), alone, {MAIN: D(0)}, set())
    assert route is not None and route.venue == MAIN


def test_route_when_order_names_an_unknown_venue_then_none() -> None:
    assert route_order(order(venue="elsewhere"), links(UP, UP), FLAT, set()) is None
    alone = OrderLinks(main=MAIN, states={MAIN: UP})
    assert route_order(order(venue=BACKUP), alone, {MAIN: D(0)}, set()) is None


def test_route_when_order_names_the_backup_then_backup() -> None:
    route = route_order(order(venue=BACKUP), links(UP, UP), FLAT, set())
    assert route is not None and route.venue == BACKUP


def test_book_key_when_main_then_symbol_else_venue_prefixed_and_split_back() -> None:
    assert book_key(MAIN, "BTCUSDT", MAIN) == "BTCUSDT"
    assert book_key("", "BTCUSDT", MAIN) == "BTCUSDT"
    assert book_key(BACKUP, "BTCUSDT", MAIN) == f"{BACKUP}:BTCUSDT"
    assert split_book("BTCUSDT", MAIN) == (MAIN, "BTCUSDT")
    assert split_book(f"{BACKUP}:BTCUSDT", MAIN) == (BACKUP, "BTCUSDT")


def test_flatten_when_positions_on_two_venues_then_each_closed_on_its_own_venue() -> None:
    orders = flatten_orders({"BTCUSDT": D("0.5"), f"{BACKUP}:ETHUSDT": D("-2")}, "CB-1:7", MAIN)
    by_venue = {o.venue: o for o in orders}
    assert set(by_venue) == {MAIN, BACKUP}
    assert (by_venue[MAIN].symbol, by_venue[MAIN].side, by_venue[MAIN].quantity) == ("BTCUSDT", Side.SELL, D("0.5"))
    assert (by_venue[BACKUP].symbol, by_venue[BACKUP].side, by_venue[BACKUP].quantity) == ("ETHUSDT", Side.BUY, D(2))
    assert all(o.reduce_only for o in orders)
    # The main venue's key is what it always was: a flatten re-run after an upgrade is still sent once.
    assert by_venue[MAIN].idempotency_key == "flatten:CB-1:7:BTCUSDT"
    assert len({o.client_order_id for o in orders}) == 2


def test_pending_when_orders_in_flight_then_venues_per_symbol_kept_in_snapshot() -> None:
    pending = PendingExposure()
    pending.add(order(venue=BACKUP))
    pending.add(order(Side.SELL, "0.02"))
    assert pending.venues("BTCUSDT", MAIN) == {MAIN, BACKUP}
    assert pending.venues("ETHUSDT", MAIN) == set()
    restored = PendingExposure.from_state(pending.to_state())
    assert restored.venues("BTCUSDT", MAIN) == {MAIN, BACKUP}

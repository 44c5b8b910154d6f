"""Venues (FM-N6), pure: position book keys per venue, the route an order takes, and the
reduce-only orders that flatten every position where it is held.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec

from libs.ids import client_order_id_for
from proto.enums import ConnectionState, OrderSource, OrderType, Side
from proto.messages import SubmitOrder

from .checks import reduces_exposure


def book_key(venue: str, symbol: str, main_venue: str) -> str:
    """Key of one venue's position in a symbol: the symbol itself on the main venue (the form
    snapshots always had), `<venue>:<symbol>` on a backup venue."""
    return symbol if venue in ("", main_venue) else f"{venue}:{symbol}"


def split_book(book: str, main_venue: str) -> tuple[str, str]:
    """(venue, symbol) of a `book_key`."""
    venue, _, symbol = book.rpartition(":")
    return (venue or main_venue), symbol


class OrderLinks(msgspec.Struct, frozen=True, kw_only=True):
    """The venues orders may go to and the state of each one's order link (position's
    `LinkStateChanged`, link `orders`; None: never heard of, e.g. its process not started yet)."""

    main: str
    backup: str = ""
    states: dict[str, ConnectionState | None] = {}

    def usable(self, venue: str) -> bool:
        """Would an order sent to `venue` now go out (not queued behind a venue outage)?"""
        return self.states.get(venue) != ConnectionState.DISCONNECTED

    def known(self, venue: str) -> bool:
        return venue == self.main or (self.backup != "" and venue == self.backup)


class Route(msgspec.Struct, frozen=True):
    venue: str
    reason: str


def route_order(
    order: SubmitOrder, links: OrderLinks, positions: dict[str, Decimal], in_flight: set[str]
) -> Route | None:
    """The venue an order goes to (FM-N6), None for a venue that is not configured.

    A symbol's position lives on one venue: an order in a symbol that has a position or orders in
    flight on a venue goes there (an exit can only close the position where it is; an entry next to
    a queued one would otherwise split the symbol over two venues). An order in a flat symbol with
    nothing in flight goes to the main venue, or to the backup while the main venue's order link is
    DISCONNECTED and the backup's is not. An order naming the backup venue itself is sent there.
    `positions` is keyed by venue (this symbol only); `in_flight` are the venues with pending orders.
    """
    requested = order.venue or links.main
    if not links.known(requested):
        return None
    if not links.backup:
        return Route(requested, "")
    held = {venue for venue, quantity in positions.items() if quantity != 0} | in_flight
    if len(held) == 1:
        (venue,) = held
        return Route(venue, "" if venue == requested else f"{order.symbol} is on {venue}")
    if len(held) > 1:
        # Positions on both venues (only an adopted outside position can do that): an order that
        # reduces one of them goes there; anything else stays where it was asked for.
        for venue in sorted(held):
            if reduces_exposure(order, positions.get(venue, Decimal(0))):
                return Route(venue, f"reduces the {order.symbol} position on {venue}")
        return Route(requested, "")
    if (
        requested == links.main
        and not links.usable(links.main)
        and links.states.get(links.backup) == ConnectionState.CONNECTED
    ):
        return Route(links.backup, f"failover: the {links.main} order link is DISCONNECTED (FM-N6)")
    return Route(requested, "")


def paper_route(order: SubmitOrder, paper_venue: str) -> Route:
    """The route of a paper strategy's order: the paper venue, whatever venue it names (a paper
    strategy's order never reaches a live venue)."""
    return Route(paper_venue, "" if order.venue == paper_venue else f"strategy {order.strategy} trades on paper")


def live_view(
    positions: dict[str, Decimal], in_flight: set[str], paper_venue: str
) -> tuple[dict[str, Decimal], set[str]]:
    """Positions and in-flight venues of a symbol without the paper venue's: paper orders and
    positions never decide where a live order goes (no paper position pins a symbol to a venue)."""
    if not paper_venue:
        return positions, in_flight
    return {venue: q for venue, q in positions.items() if venue != paper_venue}, in_flight - {paper_venue}


def flatten_orders(positions: dict[str, Decimal], key: str, main_venue: str) -> list[SubmitOrder]:
    """Reduce-only MARKET orders that close every open position, each on the venue that holds it.

    `positions` is keyed by `book_key`. `key` names the cause (e.g. the breaker trip); the
    idempotency key `flatten:<key>:<book>` makes a re-run of the same flatten produce the same
    client order ids, so it is sent once.
    """
    orders = []
    for book, quantity in sorted(positions.items()):
        if quantity == 0:
            continue
        venue, symbol = split_book(book, main_venue)
        idempotency_key = f"flatten:{key}:{book}"
        orders.append(
            SubmitOrder(
                client_order_id=client_order_id_for(idempotency_key),
                idempotency_key=idempotency_key,
                source=OrderSource.RISK,
                symbol=symbol,
                side=Side.SELL if quantity > 0 else Side.BUY,
                order_type=OrderType.MARKET,
                quantity=abs(quantity),
                venue=venue,
                reduce_only=True,
                correlation_id=idempotency_key,
            )
        )
    return orders

"""The ledger: the orders and positions of one venue as the position service holds them in memory.

It owns the orders (by client order id), the positions (by symbol), the protective levels, the
ORDERS stream sequence of the newest event about each order and position, the baselines that make
SPEC §6's "position = baseline + sum of fills" exact, and the bound on memory (finished orders
beyond the retention leave it, their fills folded into the baselines). It does no I/O.

`Ledger.apply(event, seq)` folds one ORDERS event into it, `Ledger.fold(events)` many: the fold of
`libs.projections.fold_events` (the projection rebuild's), restricted to this venue. Recovery
replays the stream through it; the live handlers apply the events they published or consumed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from libs.orders_model import OrderRecord, Position
from libs.projections import Folded, fold_events
from proto.envelope import Message
from proto.messages import OrderApproved, OrderDenied, PositionChanged

from .domain import (
    PositionCheckpoint,
    Protection,
    Retention,
    evictable_orders,
    fold_evicted,
    pinned_orders,
    position_baselines,
)


def of_venue(message: Message, venue: str) -> bool:
    """Is an ORDERS event about one venue's orders or positions? Approvals, denials and positions
    name their venue; every other order event names an order, whose approval decided its venue (an
    event about another venue's order finds no order here and is left out by the fold)."""
    match message:
        case OrderApproved(order=command) | OrderDenied(order=command):
            return command.venue == venue
        case PositionChanged():
            return message.venue == venue
        case _:
            return True


@dataclass
class Ledger:
    """Orders, positions and protections of one venue, with the bookkeeping that goes with them."""

    venue: str
    orders: dict[str, OrderRecord] = field(default_factory=dict)
    positions: dict[str, Position] = field(default_factory=dict)
    protections: dict[str, Protection] = field(default_factory=dict)
    """Protective levels by symbol (FM-C2); KV holds them durably."""
    baselines: dict[str, Decimal] = field(default_factory=dict)
    """Position per symbol not explained by the fills in memory (adopted, corrected, evicted)."""
    order_seq: dict[str, int] = field(default_factory=dict)
    """ORDERS sequence of the newest event about each order (the projection row's version)."""
    position_seqs: dict[str, int] = field(default_factory=dict)
    """ORDERS sequence of the newest `PositionChanged` of each symbol."""
    changed: set[str] = field(default_factory=set)
    """Orders changed since the last invariant check."""
    evicted_until_ns: int = 0
    """Newest `updated_ns` of an order that left memory: approvals newer than this are decided from memory."""
    orders_evicted: int = 0

    def position(self, symbol: str) -> Position:
        """The position of `symbol` (flat when none)."""
        return self.positions.get(symbol, Position())

    def published(self, coid: str, seq: int) -> None:
        """An event about order `coid` is on the ORDERS stream at `seq`."""
        self.order_seq[coid] = max(seq, self.order_seq.get(coid, 0))
        self.changed.add(coid)

    def apply(self, event: Message, seq: int) -> Folded:
        """Fold one ORDERS event (stream sequence `seq`) into the ledger; see `fold`."""
        return self.fold([(event, seq)])

    def fold(self, events: Iterable[tuple[Message, int]]) -> Folded:
        """Fold ORDERS events, in stream order, into the ledger (idempotent: a re-applied event
        changes nothing); events of other venues are left out.

        This is `libs.projections.fold_events` over the ledger's own orders and positions, so the
        live path, recovery and the projection rebuild agree on what an event means.

        Returns:
            The fold's record of what the events changed (touched rows, new fills), for the projections.
        """
        start = Folded(
            orders=self.orders,
            order_seq=self.order_seq,
            positions={(self.venue, s): (p, self.position_seqs.get(s, 0), 0) for s, p in self.positions.items()},
        )
        folded = fold_events(((event, seq) for event, seq in events if of_venue(event, self.venue)), start)
        for (_, symbol), (position, seq, _) in folded.positions.items():
            self.positions[symbol] = position
            self.position_seqs[symbol] = seq
        return folded

    def restore(self, checkpoint: PositionCheckpoint) -> None:
        """Take a snapshot's state (orders, positions, their sequences, protections) as the ledger's."""
        self.orders = {order.client_order_id: order for order in checkpoint.orders}
        self.order_seq = dict(checkpoint.order_seq)
        self.positions = dict(checkpoint.positions)
        self.position_seqs = dict(checkpoint.position_seq)
        self.protections = {p.symbol: p for p in checkpoint.protections}
        self.evicted_until_ns = checkpoint.evicted_until_ns

    def rebase(self) -> None:
        """Take the current positions as explained (after loading or an audited correction)."""
        self.baselines = position_baselines(self.orders, self.positions)

    def trim(self, now_ns: int, retention: Retention, flatten_key: str | None, component: str) -> list[OrderRecord]:
        """Let finished orders beyond the retention leave memory; returns those that left.

        Their fills move into the baselines (`fold_evicted`), so §6's position = baseline + sum of
        fills stays exact. Live orders, and finished ones the protection / flatten logic still
        numbers its attempts from (`pinned_orders`), stay.
        """
        pinned = pinned_orders(self.orders, list(self.protections.values()), flatten_key, component=component)
        coids = evictable_orders(self.orders, now_ns, retention, pinned)
        if not coids:
            return []
        evicted = [self.orders.pop(coid) for coid in coids]
        for coid in coids:
            self.order_seq.pop(coid, None)
            self.changed.discard(coid)
        self.baselines = fold_evicted(self.baselines, evicted)
        self.evicted_until_ns = max(self.evicted_until_ns, max(order.updated_ns for order in evicted))
        self.orders_evicted += len(evicted)
        return evicted

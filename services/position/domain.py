"""Pure position-service logic: the order state machine, position arithmetic and reconciliation.

No I/O and no clock here; handlers feed venue answers in and act on what comes out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

import msgspec

from libs.orders_model import OrderRecord, Position, is_terminal
from libs.stamping import Stamper
from proto.enums import OrderStatus, OrderType, Side, TimeInForce
from proto.messages import SubmitOrder


@dataclass(frozen=True)
class ReconciliationPlan:
    """What start-up reconciliation must do about differences with the venue."""

    adopt: list[dict]  # venue open orders unknown locally
    resolve: list[str]  # local live orders the venue does not list as open: query them
    position_mismatches: dict[str, tuple[Decimal, Decimal]]  # symbol -> (local, venue)


def plan_reconciliation(
    local_live: dict[str, OrderRecord],
    venue_open: list[dict],
    local_positions: dict[str, Decimal],
    venue_positions: dict[str, Decimal],
    known_client_order_ids: set[str],
) -> ReconciliationPlan:
    """Compare local state with the venue's open orders and positions."""
    venue_ids = {str(order.get("clientOrderId")) for order in venue_open}
    adopt = [order for order in venue_open if str(order.get("clientOrderId")) not in known_client_order_ids]
    resolve = sorted(coid for coid in local_live if coid not in venue_ids)
    mismatches: dict[str, tuple[Decimal, Decimal]] = {}
    for symbol in sorted(set(local_positions) | set(venue_positions)):
        local = local_positions.get(symbol, Decimal(0))
        remote = venue_positions.get(symbol, Decimal(0))
        if local != remote:
            mismatches[symbol] = (local, remote)
    return ReconciliationPlan(adopt=adopt, resolve=resolve, position_mismatches=mismatches)


def command_from_record(order: OrderRecord, stamp: Stamper) -> SubmitOrder:
    """The `SubmitOrder` an order came from (for dead letters an operator can inspect and retry),
    built by `stamp` (a fresh id; the time the order was taken in as its event time)."""
    return stamp(
        SubmitOrder,
        ts_event_ns=order.created_ns,
        client_order_id=order.client_order_id,
        idempotency_key=order.idempotency_key,
        source=order.source,
        symbol=order.symbol,
        side=order.side,
        order_type=order.order_type,
        quantity=order.quantity,
        venue=order.venue,
        price=order.price,
        stop_price=order.stop_price,
        reduce_only=order.reduce_only,
        time_in_force=TimeInForce(order.time_in_force)
        if order.time_in_force is not None and order.time_in_force in TimeInForce.__members__
        else None,
        strategy=order.strategy,
    )


# ---------------------------------------------------------------------- invariants (SPEC §6)


def order_invariant_violations(order: OrderRecord) -> list[str]:
    """What is wrong with one order: filled + remaining = quantity, fills add up, nothing negative."""
    problems: list[str] = []
    coid = order.client_order_id
    if order.filled_quantity < 0 or order.filled_quantity > order.quantity:
        problems.append(f"{coid}: filled {order.filled_quantity} outside [0, {order.quantity}]")
    if order.filled_quantity + order.remaining != order.quantity:
        problems.append(f"{coid}: filled + remaining != quantity")
    fills_total = sum(order.fill_quantities.values(), Decimal(0))
    if order.fill_quantities and fills_total != order.filled_quantity:
        problems.append(f"{coid}: fills sum to {fills_total}, order says {order.filled_quantity}")
    if order.status == OrderStatus.FILLED and order.filled_quantity != order.quantity and order.fill_quantities:
        problems.append(f"{coid}: FILLED with {order.filled_quantity} of {order.quantity}")
    return problems


def fills_by_symbol(orders: dict[str, OrderRecord]) -> dict[str, Decimal]:
    """Signed sum of the filled quantity of every order, per symbol."""
    sums: dict[str, Decimal] = {}
    for order in orders.values():
        if order.filled_quantity:
            sums[order.symbol] = sums.get(order.symbol, Decimal(0)) + order.signed_filled
    return sums


def position_baselines(orders: dict[str, OrderRecord], positions: dict[str, Position]) -> dict[str, Decimal]:
    """Per symbol, the part of the position not explained by the fills of known orders.

    Taken after loading and after every audited reconciliation correction (a venue position the
    local fills do not explain, or fills adopted with an external order); from then on every change
    of a position must come from a fill of an order: position = baseline + sum of fills.
    """
    sums = fills_by_symbol(orders)
    return {
        symbol: positions.get(symbol, Position()).quantity - sums.get(symbol, Decimal(0))
        for symbol in set(sums) | set(positions)
    }


def position_invariant_violations(
    orders: dict[str, OrderRecord], positions: dict[str, Position], baselines: dict[str, Decimal]
) -> list[str]:
    """Symbols whose position is not its baseline plus the sum of its orders' fills."""
    sums = fills_by_symbol(orders)
    problems: list[str] = []
    for symbol in sorted(set(sums) | set(positions) | set(baselines)):
        expected = baselines.get(symbol, Decimal(0)) + sums.get(symbol, Decimal(0))
        actual = positions.get(symbol, Position()).quantity
        if expected != actual:
            problems.append(f"{symbol}: position {actual} != sum of fills {expected}")
    return problems


# ---------------------------------------------------------------------- dead-man's switch (FM-N8)


@dataclass
class CountdownPlanner:
    """Which symbols' venue auto-cancel countdown to arm, refresh or disarm (times in ns).

    A symbol with live orders at the venue is armed and re-armed every `refresh_ns`; a symbol that
    was armed and has no live order any more is disarmed once (countdownTime=0).
    """

    countdown_ms: int
    refresh_ns: int
    armed_at: dict[str, int] = field(default_factory=dict)

    def due(self, live_symbols: set[str], now_ns: int) -> dict[str, int]:
        """symbol -> countdown to send now (0 disarms); empty when nothing is due."""
        if self.countdown_ms <= 0:
            return {}
        actions: dict[str, int] = {}
        for symbol in sorted(live_symbols):
            armed = self.armed_at.get(symbol)
            if armed is None or now_ns - armed >= self.refresh_ns:
                actions[symbol] = self.countdown_ms
        for symbol in sorted(set(self.armed_at) - live_symbols):
            actions[symbol] = 0
        return actions

    def sent(self, symbol: str, countdown_ms: int, now_ns: int) -> None:
        """Record a successful arm (or disarm) call."""
        if countdown_ms > 0:
            self.armed_at[symbol] = now_ns
        else:
            self.armed_at.pop(symbol, None)

    def forget(self) -> None:
        """The venue link was lost: re-arm (or disarm) every known symbol at the next chance."""
        for symbol in self.armed_at:
            self.armed_at[symbol] = -(2**62)


# ---------------------------------------------------------------------- protective stops (FM-C2)

PROTECT_PREFIX = "protect:"
"""Idempotency keys of the position service's own protective orders start with this."""
PROTECT_CLOSE_PREFIX = "protect-close:"
"""Idempotency keys of the reduce-only MARKET orders that close a position whose stop or take-profit
the venue refused because it would trigger at once (-2021): `protect-close:<kind>:<entry>:<size>:<n>`.
Not protective orders themselves (nothing cancels them as stale protection)."""
IMMEDIATE_TRIGGER_REASON = "would trigger immediately"
"""Start of the reason of a protective order refused with -2021; such refusals do not count towards
MAX_PROTECT_ATTEMPTS (the position is closed at market instead)."""


def is_protective(order: OrderRecord) -> bool:
    """True for a stop-loss or take-profit order the position service placed itself."""
    return order.idempotency_key.startswith(PROTECT_PREFIX)


@dataclass(frozen=True)
class Protection:
    """The protective levels of a symbol's position, from the entry order that carried them."""

    entry: str  # client order id of the entry
    symbol: str
    stop_loss: Decimal | None
    take_profit: Decimal | None


MAX_PROTECT_ATTEMPTS = 3
"""Venue refusals of the same protective order (same entry, kind and size) before it is given up and alerted."""


class ProtectKind(StrEnum):
    """The two protective orders of a position."""

    STOP = "stop"  # STOP_MARKET at the stop-loss
    TAKE_PROFIT = "tp"  # TAKE_PROFIT_MARKET at the take-profit


@dataclass(frozen=True)
class ProtectiveOrder:
    """One reduce-only conditional order that should rest at the venue for a position.

    `key_stem` (`protect:<kind>:<entry>:<size>`) names it; the idempotency key of each attempt is
    `<key_stem>:<n>`, n counting the attempts of this stem already known (see `plan_protection`).
    """

    kind: ProtectKind
    entry: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: Decimal
    stop_price: Decimal

    @property
    def key_stem(self) -> str:
        return f"{PROTECT_PREFIX}{self.kind.value}:{self.entry}:{self.quantity}"

    def attempt_key(self, attempt: int) -> str:
        """Idempotency key of the `attempt`-th order placed for this stem (0 first)."""
        return f"{self.key_stem}:{attempt}"

    def matches(self, order: OrderRecord) -> bool:
        """Is `order` one of this stem's orders (any attempt)?"""
        return (
            order.idempotency_key.startswith(f"{self.key_stem}:")
            and order.symbol == self.symbol
            and order.side == self.side
            and order.stop_price == self.stop_price
        )


def protective_orders(protection: Protection | None, position: Decimal) -> list[ProtectiveOrder]:
    """The reduce-only stop (STOP_MARKET) and take-profit (TAKE_PROFIT_MARKET) a position needs.

    Both are sized to the whole position (after a partial fill of the entry: to what is filled) and
    trigger on the venue's mark price, so they work while this service is down (FM-C2).
    """
    if protection is None or position == 0:
        return []
    side = Side.SELL if position > 0 else Side.BUY
    size = abs(position).normalize()
    wanted: list[ProtectiveOrder] = []
    if protection.stop_loss is not None:
        wanted.append(
            ProtectiveOrder(
                ProtectKind.STOP,
                protection.entry,
                protection.symbol,
                side,
                OrderType.STOP_MARKET,
                size,
                protection.stop_loss,
            )
        )
    if protection.take_profit is not None:
        wanted.append(
            ProtectiveOrder(
                ProtectKind.TAKE_PROFIT,
                protection.entry,
                protection.symbol,
                side,
                OrderType.TAKE_PROFIT_MARKET,
                size,
                protection.take_profit,
            )
        )
    return wanted


@dataclass(frozen=True)
class ProtectionPlan:
    """What to do at the venue so the symbol's protective orders match its position."""

    place: list[tuple[ProtectiveOrder, str]]  # (order, idempotency key of this attempt)
    cancel: list[str]  # client order ids of live protective orders no longer wanted
    unavailable: list[str]  # key stems the venue refused MAX_PROTECT_ATTEMPTS times (given up, alerted)


def plan_protection(
    wanted: list[ProtectiveOrder],
    orders: dict[str, OrderRecord],
    symbol: str,
    coid_for: Callable[[str], str],
) -> ProtectionPlan:
    """Compare wanted protective orders with the known ones of `symbol`.

    A wanted order already live (any attempt of its stem) is kept. Otherwise the next attempt is
    placed under the first attempt key whose client order id is unknown: deterministic, so a restart
    with the same known orders asks for the same id (the venue refuses a duplicate; nothing is
    placed twice), while a stem whose earlier order is finished (cancelled by a resize that was later
    undone, rejected) still gets a fresh id. Every live protective order of the symbol that no wanted
    order keeps is cancelled — after the placements, so a resize never leaves the position bare.

    Args:
        wanted: `protective_orders(...)` for the symbol's position.
        orders: every known order.
        symbol: the symbol.
        coid_for: idempotency key -> client order id (`libs.ids.client_order_id_for`).
    """
    keep: set[str] = set()
    place: list[tuple[ProtectiveOrder, str]] = []
    unavailable: list[str] = []
    for item in wanted:
        attempts = [order for order in orders.values() if item.matches(order)]
        live = [order for order in attempts if not is_terminal(order.status)]
        if live:
            keep.update(order.client_order_id for order in live)
            continue
        refused = sum(
            1
            for order in attempts
            if order.status == OrderStatus.REJECTED and not (order.reason or "").startswith(IMMEDIATE_TRIGGER_REASON)
        )
        if refused >= MAX_PROTECT_ATTEMPTS:
            unavailable.append(item.key_stem)
            continue
        attempt = 0
        while coid_for(item.attempt_key(attempt)) in orders:
            attempt += 1
        place.append((item, item.attempt_key(attempt)))
    cancel = sorted(
        coid
        for coid, order in orders.items()
        if order.symbol == symbol and is_protective(order) and not is_terminal(order.status) and coid not in keep
    )
    return ProtectionPlan(place=place, cancel=cancel, unavailable=unavailable)


def protection_entry_of(idempotency_key: str) -> str | None:
    """The entry client order id a protective or protect-close key is named after, else None.

    Keys are `protect:<kind>:<entry>:<size>:<n>` and `protect-close:<kind>:<entry>:<size>:<n>`;
    client order ids (`bw` + hex) never contain a colon.
    """
    if not idempotency_key.startswith((PROTECT_PREFIX, PROTECT_CLOSE_PREFIX)):
        return None
    parts = idempotency_key.split(":")
    return parts[2] if len(parts) >= 5 else None


# ---------------------------------------------------------------------- bounded memory (issue 4)


@dataclass(frozen=True)
class Retention:
    """How many finished orders the service keeps in memory and in its snapshots.

    Live orders and positions are always kept. A terminal order stays while it was updated less
    than `keep_ns` ago, and at most the `max_terminal` most recently updated ones stay. The default
    window (10 min) covers the redelivery horizon of the order consumers (ack wait 30 s x 5
    deliveries plus nak delays, about 3 min), so the usual redelivery after a crash is answered from
    memory; anything older is answered by the projections (`Projections.find_order`).
    """

    keep_ns: int = 600 * 1_000_000_000
    max_terminal: int = 2000


def evictable_orders(orders: dict[str, OrderRecord], now_ns: int, retention: Retention, pinned: set[str]) -> list[str]:
    """Client order ids of the terminal orders that leave memory now (sorted).

    Terminal orders updated before `now_ns - keep_ns`, then the oldest beyond `max_terminal`;
    never a live order nor a `pinned` one.
    """
    cutoff = now_ns - retention.keep_ns
    terminal = [o for o in orders.values() if is_terminal(o.status) and o.client_order_id not in pinned]
    out = {o.client_order_id for o in terminal if o.updated_ns < cutoff}
    kept = [o for o in terminal if o.client_order_id not in out]
    if len(kept) > retention.max_terminal:
        kept.sort(key=lambda o: (o.updated_ns, o.client_order_id))
        out.update(o.client_order_id for o in kept[: len(kept) - retention.max_terminal])
    return sorted(out)


def fold_evicted(baselines: dict[str, Decimal], evicted: list[OrderRecord]) -> dict[str, Decimal]:
    """Baselines once `evicted` leave memory: their fills move into the baseline of their symbol,
    so position = baseline + sum of the fills of the orders still in memory stays exact (§6)."""
    out = dict(baselines)
    for order in evicted:
        if order.filled_quantity:
            out[order.symbol] = out.get(order.symbol, Decimal(0)) + order.signed_filled
    return out


def flatten_stem(component: str, flatten_key: str) -> str:
    """Idempotency-key prefix of the flatten backstop's orders of one flatten (`<stem><symbol>:<n>`):
    `flatten:position:<flatten_key>:` on the main venue; a backup venue's process puts its own
    component name there, so two venues flattening one symbol never name the same order."""
    return f"flatten:{component}:{flatten_key}:"


def pinned_orders(
    orders: dict[str, OrderRecord],
    protections: list[Protection],
    flatten_key: str | None,
    *,
    component: str = "position",
) -> set[str]:
    """Terminal orders that must stay in memory whatever their age.

    The entry of every current protection and every protective / protect-close attempt named after
    it: `plan_protection` numbers attempts and counts refusals from the orders in memory, so an
    evicted attempt would be asked for again under the same client order id. Likewise the flatten
    backstop's attempts of the current flatten (`flatten_stem(component, flatten_key)`).
    """
    entries = {p.entry for p in protections}
    pinned = set(entries) & set(orders)
    flatten_prefix = flatten_stem(component, flatten_key) if flatten_key else None
    for coid, order in orders.items():
        key = order.idempotency_key
        if protection_entry_of(key) in entries or (flatten_prefix and key.startswith(flatten_prefix)):
            pinned.add(coid)
    return pinned


# ---------------------------------------------------------------------- snapshot (SPEC §8)

SNAPSHOT_COMPONENT = "position"
"""`snapshots.component` of the main venue's position process's snapshots (libs.snapshot); a backup
venue's process snapshots under its own component name (`position-<venue>`)."""
SNAPSHOT_VERSION = 1


class PositionCheckpoint(msgspec.Struct, frozen=True):
    """Everything the position service knows, covering the ORDERS stream up to `stream_seq`.

    ORDERS carries the orders, fills and positions (`evt.order.*`, `evt.fill.*`, `evt.position.*`),
    so one sequence covers them all: a restart folds only the messages after it.
    """

    version: int
    stream_seq: int
    orders: list[OrderRecord]
    order_seq: dict[str, int]
    """Client order id -> sequence of the latest ORDERS event about it (projection upserts)."""
    positions: dict[str, Position]
    position_seq: dict[str, int]
    protections: list[Protection]
    evicted_until_ns: int = 0
    """Newest `updated_ns` of any order that left memory (see `Retention`); 0: none ever left. An
    approval whose order is not in memory and that is newer than this was never handled."""


def decode_checkpoint(state: bytes) -> PositionCheckpoint:
    """Decode a stored snapshot.

    Raises:
        msgspec.DecodeError, msgspec.ValidationError: not a position checkpoint of this version.
    """
    checkpoint = msgspec.json.decode(state, type=PositionCheckpoint)
    if checkpoint.version != SNAPSHOT_VERSION:
        raise msgspec.ValidationError(f"snapshot version {checkpoint.version}, expected {SNAPSHOT_VERSION}")
    return checkpoint


def checkpoint_problem(state: bytes) -> str | None:
    """`SnapshotStore.load_latest_valid(accept=...)`: None when the bytes decode, else why not."""
    try:
        decode_checkpoint(state)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return f"undecodable position snapshot: {exc}"[:300]
    return None

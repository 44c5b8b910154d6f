"""Request and reply bodies of the `svc.<component>.<operation>` queries (core NATS request/reply).

Each query has a request struct (an empty request is `{}`) and a reply struct; every query may
answer `ErrorReply` instead (`{"error": {"code", "message"}}`). The asking side decodes with
`decode_reply`, which tells the two apart, so no caller guesses at a dict's keys. Shapes follow the
message rules: frozen, new fields only with defaults, Decimals as strings.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, TypeVar

import msgspec

from proto.enums import BreakerState, DegradationLevel, HotStateStatus, OrderType, Side, TradingState

R = TypeVar("R", bound=msgspec.Struct)


# --------------------------------------------------------------------------- errors


class ErrorDetail(msgspec.Struct, frozen=True, kw_only=True):
    """What went wrong: a stable machine `code` (`bad_request`, `not_found`, `invalid_transition`, ...)
    and a sentence for a person."""

    code: str
    message: str


class ErrorReply(msgspec.Struct, frozen=True, kw_only=True):
    """The one error reply of every query."""

    error: ErrorDetail


def error_reply(code: str, message: str) -> bytes:
    """Encode an `ErrorReply`."""
    return msgspec.json.encode(ErrorReply(error=ErrorDetail(code=code, message=message)))


class ReplyDecodeError(ValueError):
    """A reply that is neither the expected body nor an `ErrorReply` (a peer on another version, a bug)."""


def decode_reply(kind: type[R], raw: bytes) -> R | ErrorReply:
    """The reply `raw` as `kind`, or the `ErrorReply` it carries.

    Raises:
        ReplyDecodeError: `raw` is neither.
    """
    try:
        envelope = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ReplyDecodeError(f"reply is not JSON: {exc}") from exc
    try:
        if isinstance(envelope, dict) and "error" in envelope:
            return msgspec.convert(envelope, ErrorReply)
        return msgspec.convert(envelope, kind)
    except msgspec.ValidationError as exc:
        raise ReplyDecodeError(f"reply is not a {kind.__name__}: {exc}") from exc


# --------------------------------------------------------------------------- risk


class TradingControlRequest(msgspec.Struct, frozen=True, kw_only=True):
    """`svc.risk.halt`, `svc.risk.resume`, `svc.risk.reduce`: who asks and why (a reason is required)."""

    operator: str = "unknown"
    reason: str = ""


class TradingControlReply(msgspec.Struct, frozen=True, kw_only=True):
    """The trading state after the change, and before it."""

    trading_state: TradingState
    previous: TradingState | None = None


class BreakerResetRequest(msgspec.Struct, frozen=True, kw_only=True):
    """`svc.risk.breaker_reset`: a manual reset of a tripped breaker (operator and reason required)."""

    breaker: str = ""
    operator: str = ""
    reason: str = ""


class BreakerResetReply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The breaker's state after the reset; `note` says when trading stays HALTED (CB-1)."""

    breaker: str
    state: BreakerState
    previous: BreakerState
    trading_state: TradingState
    note: str | None = None


class RiskStateReply(msgspec.Struct, frozen=True, kw_only=True):
    """`svc.risk.state`: what risk decides with — trading state, level, positions, pending, hot state, breakers."""

    trading_state: TradingState
    reason: str = ""
    operator: str | None = None
    ts_ns: int = 0
    degradation_level: DegradationLevel | None = None
    positions: dict[str, Decimal] = {}
    pending: dict[str, list[Decimal]] = {}
    """Per symbol, the pending buy and sell quantities."""
    hot_state: dict[str, HotStateStatus | None] = {}
    breakers: dict[str, BreakerState] = {}
    entries_halted: str | None = None
    """Why new entries are HALTED by a lost dependency (bus, state-builder); None when they are not."""
    recovery: dict[str, Any] | None = None
    orders_seq: int = 0


class OrderRulesRequest(msgspec.Struct, frozen=True, kw_only=True):
    """`svc.risk.validate_order`: an order's terms, checked against its venue's trading rules."""

    symbol: str
    side: Side
    order_type: OrderType
    quantity: Decimal
    price: Decimal | None = None
    stop_price: Decimal | None = None
    reduce_only: bool = False
    venue: str = ""
    """"" : the main venue."""


class OrderRulesReply(msgspec.Struct, frozen=True, kw_only=True):
    """`rule` the order breaks (`MIN_NOTIONAL`, `PRICE_FILTER`, `LOT_SIZE`, ...) and why; `rule` None
    when it breaks none (or the venue's rules are not known yet: `checked` False)."""

    rule: str | None = None
    reason: str = ""
    checked: bool = True


class EntryBlocker(msgspec.Struct, frozen=True, kw_only=True):
    """One reason a new entry is not allowed right now.

    `gate` names what blocks (`trading_state`, `breaker`, `dependency`, `link`, `degradation`,
    `hot_state`, `order_link`, `position`, `lease`, `reconciliation`, `preflight`, `risk`); `reason`
    is the sentence risk (or the position process) gives an order it refuses for it; `since_ns` when
    it began (UTC ns; None when not known).
    """

    gate: str
    reason: str
    since_ns: int | None = None


class VenueEntryGates(msgspec.Struct, frozen=True, kw_only=True):
    """What blocks an entry in one symbol on one venue besides the symbol's own gates."""

    blocked_by: list[EntryBlocker] = []


class SymbolEntryGates(msgspec.Struct, frozen=True, kw_only=True):
    """A symbol's entry gates: the venue a new entry goes to now (`routing.route_order`), what blocks
    an entry on every venue (`blocked_by`), and what blocks it on each venue in addition (`venues`)."""

    entry_venue: str
    blocked_by: list[EntryBlocker] = []
    venues: dict[str, VenueEntryGates] = {}


class EntryGatesReply(msgspec.Struct, frozen=True, kw_only=True):
    """`svc.risk.entry_gates`: per symbol, every reason risk would deny a new entry right now, from the
    same checks its decisions run (`services/risk/entry_gates.py`); `ts_ns` when it was answered."""

    symbols: dict[str, SymbolEntryGates] = {}
    ts_ns: int = 0


# --------------------------------------------------------------------------- state-builder


class BookRequest(msgspec.Struct, frozen=True, kw_only=True):
    """`svc.state-builder.book`: the top `depth` levels of one symbol's book."""

    symbol: str
    depth: int | None = None


class BookReply(msgspec.Struct, frozen=True, kw_only=True):
    """A book's top levels as (price, quantity), best first, with its status and last update id."""

    symbol: str
    status: HotStateStatus
    last_update_id: int | None = None
    bids: list[tuple[Decimal, Decimal]] = []
    asks: list[tuple[Decimal, Decimal]] = []


# --------------------------------------------------------------------------- market-data


class ResyncRequest(msgspec.Struct, frozen=True, kw_only=True):
    """`svc.market-data.resync`: rebuild one symbol's book from a new snapshot."""

    symbol: str


class ResyncReply(msgspec.Struct, frozen=True, kw_only=True):
    """`resyncing` (started now) or `already_resyncing`."""

    symbol: str
    status: str


# --------------------------------------------------------------------------- position


class PositionOrderState(msgspec.Struct, frozen=True, kw_only=True):
    """One order as the position process holds it."""

    status: str
    filled_quantity: Decimal
    symbol: str


class PositionProtectionState(msgspec.Struct, frozen=True, kw_only=True):
    """The levels protecting one symbol's position (`None` rendered as the string "None" by older versions)."""

    entry: str
    stop_loss: str | None = None
    take_profit: str | None = None


class PositionMemoryState(msgspec.Struct, frozen=True, kw_only=True):
    """What the position process keeps in memory: its orders, those that left it, and the retention."""

    orders: int = 0
    evicted: int = 0
    """Finished orders that left memory (beyond the retention) since the process started."""
    evicted_until_ns: int = 0
    """Orders updated before this may have left memory (the projections answer for them)."""
    retention_s: float = 0.0
    retention_max_terminal: int = 0


class PositionStateReply(msgspec.Struct, frozen=True, kw_only=True):
    """`svc.position.state` (and `svc.position-<venue>.state`): orders, positions, protections, recovery."""

    orders: dict[str, PositionOrderState] = {}
    positions: dict[str, Decimal] = {}
    protections: dict[str, PositionProtectionState] = {}
    reconciled: bool = False
    recovery: dict[str, Any] | None = None
    memory: PositionMemoryState = msgspec.field(default_factory=PositionMemoryState)


REQUEST_REPLY_TYPES: tuple[type[msgspec.Struct], ...] = (
    ErrorReply,
    TradingControlRequest,
    TradingControlReply,
    BreakerResetRequest,
    BreakerResetReply,
    RiskStateReply,
    EntryGatesReply,
    OrderRulesRequest,
    OrderRulesReply,
    BookRequest,
    BookReply,
    ResyncRequest,
    ResyncReply,
    PositionStateReply,
)
"""Every request and reply body (their JSON Schemas are checked in with the messages')."""

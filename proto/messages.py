"""Every message on the bus: market data, hot state, signals, order commands and events, fills,
positions, heartbeats, state transitions and alerts.

Commands are imperative (`SubmitOrder`), events past tense (`OrderFilled`). All are frozen,
tagged msgspec structs deriving from the shared envelope `Message`. Prices and quantities are
`Decimal` (decimal strings on the wire); times are integer nanoseconds UTC.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

from proto.enums import (
    AlertSeverity,
    ComponentState,
    ConnectionState,
    DegradationLevel,
    Health,
    HotStateStatus,
    OrderSource,
    OrderStatus,
    OrderType,
    Side,
    StrategyMode,
    StrategyState,
    TimeInForce,
    TradingState,
)
from proto.envelope import Message

Level = tuple[Decimal, Decimal]
"""One book level: (price, quantity). Quantity 0 in a diff removes the level."""


# --------------------------------------------------------------------------- market data


class DepthDiff(Message, frozen=True, tag=True):
    """A validated order-book diff (Binance `depthUpdate`), chained onto the previous one."""

    venue: str
    symbol: str
    first_update_id: int
    final_update_id: int
    prev_final_update_id: int | None
    bids: list[Level]
    asks: list[Level]


class BookSnapshot(Message, frozen=True, tag=True):
    """A full book from the venue's REST snapshot; diffs that follow chain onto `last_update_id`."""

    venue: str
    symbol: str
    last_update_id: int
    bids: list[Level]
    asks: list[Level]


class Trade(Message, frozen=True, tag=True):
    venue: str
    symbol: str
    trade_id: int
    price: Decimal
    quantity: Decimal
    buyer_is_maker: bool


class MarkPrice(Message, frozen=True, tag=True):
    venue: str
    symbol: str
    mark_price: Decimal
    index_price: Decimal | None = None
    funding_rate: Decimal | None = None
    next_funding_time_ns: int | None = None


class OpenInterest(Message, frozen=True, tag=True):
    venue: str
    symbol: str
    open_interest: Decimal


class Liquidation(Message, frozen=True, tag=True):
    """A forced order (Binance `forceOrder`)."""

    venue: str
    symbol: str
    side: Side
    price: Decimal
    quantity: Decimal


class BookResyncStarted(Message, frozen=True, tag=True):
    """market-data detected a break in the diff chain and is rebuilding from a new snapshot."""

    venue: str
    symbol: str
    reason: str
    expected_prev_update_id: int | None = None
    received_prev_update_id: int | None = None


class MarketDataFlagged(Message, frozen=True, tag=True):
    """market-data's verdict on a suspicious value (SPEC FM-D3 timestamps, FM-D5 sanity checks).

    `check` names the rule (`price_jump`, `price_below_min`, `zscore`, `volume`, `oi_change`,
    `future_ts`, `backward_ts`, `trade_gap`, ...); `verdict` is `warning` (published, watch it),
    `suspect` (published with receive time), `rejected` (not published) or `confirmed` (a second
    source agreed with a warned value).
    """

    venue: str
    symbol: str
    check: str
    verdict: str
    detail: str = ""
    value: str | None = None


class LinkStateChanged(Message, frozen=True, tag=True):
    """A venue link (market-data WebSocket, order REST) changed connection state."""

    venue: str
    link: str
    previous: ConnectionState | None
    current: ConnectionState
    reason: str
    symbols: list[str] = []
    causes: list[str] = []
    """Why a connected link is DEGRADED (`LinkDegradeCause` values, sorted); empty otherwise."""


# --------------------------------------------------------------------------- hot state


class HotStateStatusChanged(Message, frozen=True, tag=True):
    symbol: str
    previous: HotStateStatus | None
    current: HotStateStatus
    reason: str
    last_update_id: int | None = None
    stale_since_ns: int | None = None
    """FM-D1: last update while VALID, once the symbol left VALID (None while VALID / never VALID)."""


class SymbolHotState(msgspec.Struct, frozen=True, kw_only=True):
    """Per-symbol hot state as served to operators (not a bus event)."""

    symbol: str
    hot_state: HotStateStatus
    age_ms: int | None
    last_update_id: int | None
    mark_price: Decimal | None = None
    funding_rate: Decimal | None = None
    open_interest: Decimal | None = None
    best_bid: Decimal | None = None
    best_ask: Decimal | None = None
    stale_since_ns: int | None = None
    """FM-D1: last update while VALID, once the symbol left VALID; unlike `age_ms` a resync's REST
    snapshot does not reset it (None while VALID, or before the symbol was ever VALID)."""
    stale_ms: int | None = None
    """Milliseconds since `stale_since_ns`, by the state-builder's clock."""


class HotStateRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The persisted hot state of one symbol (KV `hotstate.<SYM>`)."""

    status: HotStateStatus
    reason: str
    last_update_id: int | None = None
    ts_ns: int = 0
    stale_since_ns: int | None = None
    """FM-D1: last update while VALID, once the symbol left VALID (None while VALID / never VALID)."""


class SymbolsReply(msgspec.Struct, frozen=True, kw_only=True):
    """Reply of `svc.state-builder.symbols`: every symbol's hot state."""

    symbols: dict[str, SymbolHotState]


# --------------------------------------------------------------------------- strategy


class SignalGenerated(Message, frozen=True, tag=True):
    """A strategy's wish to trade; its `message_id` is the idempotency key of the order it leads to."""

    strategy: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: Decimal
    price: Decimal | None = None
    reduce_only: bool = False
    reason: str = ""
    confidence: Decimal | None = None
    """Strength of the signal in [0, 1]; risk demands a minimum in REDUCED_FUNCTIONALITY (None: unknown)."""
    stop_loss: Decimal | None = None
    """Protective stop price of the entry (the position service places it; None: no stop asked)."""
    take_profit: Decimal | None = None
    """Take-profit price of the entry (None: none asked)."""


class StrategyStateChanged(Message, frozen=True, tag=True):
    strategy: str
    previous: StrategyState | None
    current: StrategyState
    reason: str


class EnableStrategy(Message, frozen=True, tag=True):
    strategy: str
    operator: str
    reason: str = ""
    mode: StrategyMode = StrategyMode.LIVE
    """`paper`: the strategy's orders go to the paper order link, never the venue (docs/strategies.md)."""
    override: bool = False
    """A live enable of a strategy that CB-3 or FAILED (FM-C2) keeps on paper, forced by the operator
    (`reason` says why); audited with the command."""


class DisableStrategy(Message, frozen=True, tag=True):
    strategy: str
    operator: str
    reason: str = ""


class StrategyCrashed(Message, frozen=True, tag=True):
    """A strategy's handler raised or its process died (FM-C2): what it was doing, and what follows.

    `restarted_into` is SCANNING after a restart through DISABLED, or FAILED after more than 3 crashes
    in 10 minutes (then only an operator re-enables it).
    """

    strategy: str
    error_type: str
    error: str
    stack_trace: str = ""
    input: str = ""
    """The input being handled when it crashed (truncated), or `process-restart` after a dead process."""
    state: StrategyState | None = None
    symbol: str | None = None
    positions: dict[str, Decimal] = {}
    active_events: list[dict[str, Any]] = []
    crashes_in_window: int = 1
    restarted_into: StrategyState = StrategyState.SCANNING
    surrendered_symbols: list[str] = []
    """Symbols whose open position the strategy leaves to the position service (never re-entered)."""


# --------------------------------------------------------------------------- orders


class SubmitOrder(Message, frozen=True, tag=True):
    """Command: place an order. `client_order_id` is derived from the idempotency key."""

    client_order_id: str
    idempotency_key: str
    source: OrderSource
    symbol: str
    side: Side
    order_type: OrderType
    quantity: Decimal
    venue: str = "binance-usdm"
    price: Decimal | None = None
    stop_price: Decimal | None = None
    reduce_only: bool = False
    time_in_force: TimeInForce | None = None
    strategy: str | None = None
    stop_loss: Decimal | None = None
    """Protective levels of an entry: the position service keeps a reduce-only stop (and a
    take-profit) for the position this order opens, also after the strategy is gone (FM-C2)."""
    take_profit: Decimal | None = None


class CancelOrder(Message, frozen=True, tag=True):
    client_order_id: str
    operator: str | None = None
    reason: str = ""


class OrderApproved(Message, frozen=True, tag=True):
    """risk passed the pre-trade checks; position may send the order."""

    order: SubmitOrder


class OrderDenied(Message, frozen=True, tag=True):
    """risk refused the order (trading state, limits, stale data, ...)."""

    order: SubmitOrder
    reason: str


class OrderSubmitted(Message, frozen=True, tag=True):
    """position is about to send the order to the venue (durable before the venue call)."""

    client_order_id: str
    symbol: str
    venue: str


class OrderAccepted(Message, frozen=True, tag=True):
    client_order_id: str
    venue_order_id: int
    symbol: str
    status: OrderStatus


class OrderRejected(Message, frozen=True, tag=True):
    client_order_id: str
    symbol: str
    reason: str
    error_class: str | None = None
    venue_code: int | None = None


class OrderCanceled(Message, frozen=True, tag=True):
    client_order_id: str
    symbol: str
    reason: str = ""


class OrderCancelRequested(Message, frozen=True, tag=True):
    """position asked the venue to cancel the order (PENDING_CANCEL until the venue answers)."""

    client_order_id: str
    symbol: str
    reason: str = ""


class OrderQueued(Message, frozen=True, tag=True):
    """position keeps the order PENDING_SUBMISSION until it may be sent (venue link down, not
    reconciled, a request budget held back, or surely not sent after a placement failed)."""

    client_order_id: str
    symbol: str
    reason: str


class OrderStatusUnknown(Message, frozen=True, tag=True):
    """The venue's answer was ambiguous (timeout, 5xx); resolved only by a query, never a resend.

    `resend`: the query said the venue does not hold the order, so it is sent once more with the
    same id; the one resend an order gets is used up (a replay must not resend it again)."""

    client_order_id: str
    symbol: str
    reason: str
    resend: bool = False


class OrderFilled(Message, frozen=True, tag=True):
    """One execution against an order (partial or final)."""

    client_order_id: str
    venue_order_id: int
    trade_id: int
    symbol: str
    side: Side
    price: Decimal
    quantity: Decimal
    cumulative_quantity: Decimal
    order_quantity: Decimal
    commission: Decimal = Decimal(0)
    realized_pnl: Decimal = Decimal(0)


class OrderView(msgspec.Struct, frozen=True, kw_only=True):
    """An order as operators see it (projection row, not a bus event)."""

    order_id: str
    client_order_id: str
    symbol: str
    side: Side
    type: OrderType
    quantity: Decimal
    filled_quantity: Decimal
    status: OrderStatus
    source: OrderSource
    price: Decimal | None = None
    stop_price: Decimal | None = None
    reduce_only: bool = False
    venue_order_id: int | None = None
    average_price: Decimal | None = None
    reason: str | None = None
    strategy: str | None = None
    created_ns: int = 0
    updated_ns: int = 0
    venue: str = ""
    resend_used: bool = False
    """The order's one resend (FM-N7: its submit was UNKNOWN and the venue did not hold it) was used."""


# --------------------------------------------------------------------------- positions


class PositionChanged(Message, frozen=True, tag=True):
    venue: str
    symbol: str
    quantity: Decimal
    average_entry_price: Decimal
    realized_pnl: Decimal
    caused_by_client_order_id: str | None = None


# --------------------------------------------------------------------------- control


class HaltTrading(Message, frozen=True, tag=True):
    operator: str
    reason: str


class ResumeTrading(Message, frozen=True, tag=True):
    operator: str
    reason: str


class TradingStateChanged(Message, frozen=True, tag=True):
    previous: TradingState | None
    current: TradingState
    reason: str
    operator: str | None = None
    symbol: str | None = None


class DegradationLevelChanged(Message, frozen=True, tag=True):
    previous: DegradationLevel | None
    current: DegradationLevel
    reason: str


class HealthChanged(Message, frozen=True, tag=True):
    previous: Health | None
    current: Health
    reasons: list[str] = []


class Heartbeat(Message, frozen=True, tag=True):
    """Liveness signal every component sends every second (core NATS, not persisted)."""

    component: str
    pid: int
    state: ComponentState
    started_ns: int
    details: dict[str, Any] = {}
    metrics_url: str | None = None
    """Where Prometheus scrapes this process (`/metrics` on its own port); None without an endpoint."""


class ComponentStatusChanged(Message, frozen=True, tag=True):
    component: str
    previous: ComponentState | None
    current: ComponentState
    reason: str
    pid: int | None = None


class BreakerStateChanged(Message, frozen=True, tag=True):
    breaker: str
    previous: str | None
    current: str
    reason: str
    operator: str | None = None
    details: dict[str, Any] = {}


class BackgroundWorkPaused(Message, frozen=True, tag=True):
    """Background work (backtests, history, reports) must pause: resources go to trading (CB-4)."""

    reason: str
    breaker: str = "CB-4"


class BackgroundWorkResumed(Message, frozen=True, tag=True):
    """Background work may run again (CB-4 closed)."""

    reason: str
    breaker: str = "CB-4"


class AlertRaised(Message, frozen=True, tag=True):
    """An alert; `key` de-duplicates it while its condition holds.

    `runbook_url` names the operator's runbook page; empty (the default) means "the page the alert
    key maps to" (`libs.runbooks`), filled in by the watchdog before the alert reaches a sink.
    """

    key: str
    severity: AlertSeverity
    component: str
    title: str
    details: dict[str, Any] = {}
    runbook_url: str = ""


class AlertResolved(Message, frozen=True, tag=True):
    key: str
    component: str
    reason: str = ""


class ProjectionsVerified(Message, frozen=True, tag=True):
    """Outcome of one periodic full replay of the ORDERS stream compared with the Postgres
    projections (SPEC §8 "a periodic full replay verifies that the log rebuilds the same state").

    `outcome` is `consistent`, `diverged` (`differences` counts rows per table, `sample` shows the
    first ones) or `failed` (the verification could not run: `error` says why).
    """

    outcome: str
    consistent: bool
    events: int = 0
    differences: dict[str, int] = {}
    sample: dict[str, Any] = {}
    error: str = ""
    duration_ms: int = 0


class OperatorActionTaken(Message, frozen=True, tag=True):
    """An operator acted through the gateway: who (`operator`, `role`), what (`action`), on what
    (`target`). The audit trail of manual actions such as dead-letter retries and removals."""

    operator: str
    role: str
    action: str
    target: str = ""
    reason: str = ""
    details: dict[str, Any] = {}


class DeadLettered(Message, frozen=True, tag=True):
    """A message a consumer could not process within its bounded deliveries."""

    consumer: str
    subject: str
    reason: str
    deliveries: int
    payload: str
    original_message_id: str | None = None


AnyMessage = (
    DepthDiff
    | BookSnapshot
    | Trade
    | MarkPrice
    | OpenInterest
    | Liquidation
    | BookResyncStarted
    | LinkStateChanged
    | MarketDataFlagged
    | HotStateStatusChanged
    | SignalGenerated
    | StrategyStateChanged
    | EnableStrategy
    | DisableStrategy
    | StrategyCrashed
    | SubmitOrder
    | CancelOrder
    | OrderApproved
    | OrderDenied
    | OrderSubmitted
    | OrderAccepted
    | OrderRejected
    | OrderCanceled
    | OrderCancelRequested
    | OrderQueued
    | OrderStatusUnknown
    | OrderFilled
    | PositionChanged
    | HaltTrading
    | ResumeTrading
    | TradingStateChanged
    | DegradationLevelChanged
    | HealthChanged
    | Heartbeat
    | ComponentStatusChanged
    | BreakerStateChanged
    | BackgroundWorkPaused
    | BackgroundWorkResumed
    | AlertRaised
    | AlertResolved
    | ProjectionsVerified
    | OperatorActionTaken
    | DeadLettered
)

ALL_MESSAGE_TYPES: tuple[type[Message], ...] = AnyMessage.__args__

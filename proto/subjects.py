"""Every subject, wildcard, stream, durable consumer and key-value key, in one place.

Subjects are dotted and typed: `cmd.*` commands, `evt.*` events, `md.*` normalized market data,
`hb.*` heartbeats (core NATS, not persisted), `svc.*` request/reply queries (core NATS),
`dlq.*` dead letters. Tokens never contain dots; symbols are upper case (`BTCUSDT`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_VENUE = "binance-usdm"

# --------------------------------------------------------------------------- market data


def md_depth(venue: str, symbol: str) -> str:
    return f"md.depth.{venue}.{symbol}"


def md_snapshot(venue: str, symbol: str) -> str:
    return f"md.snapshot.{venue}.{symbol}"


def md_trade(venue: str, symbol: str) -> str:
    return f"md.trade.{venue}.{symbol}"


def md_mark(venue: str, symbol: str) -> str:
    return f"md.mark.{venue}.{symbol}"


def md_open_interest(venue: str, symbol: str) -> str:
    return f"md.oi.{venue}.{symbol}"


def md_liquidation(venue: str, symbol: str) -> str:
    return f"md.liquidation.{venue}.{symbol}"


def md_resync(venue: str, symbol: str) -> str:
    return f"md.resync.{venue}.{symbol}"


def md_flag(venue: str, symbol: str) -> str:
    """Data-quality verdicts of market-data (FM-D3/D5): suspect, rejected, confirmed values."""
    return f"md.flag.{venue}.{symbol}"


MD_ALL = "md.>"
MD_MARK_ALL = "md.mark.>"
MD_TRADE_ALL = "md.trade.>"
MD_LIQUIDATION_ALL = "md.liquidation.>"
MD_OPEN_INTEREST_ALL = "md.oi.>"
MD_RESYNC_ALL = "md.resync.>"


# --------------------------------------------------------------------------- events

EVT_ALL = "evt.>"
CMD_ALL = "cmd.>"
EVT_LINK_ALL = "evt.link.>"
EVT_HOT_STATE_ALL = "evt.hotstate.>"
EVT_SIGNAL_ALL = "evt.signal.>"
EVT_ORDER_ALL = "evt.order.>"
EVT_FILL_ALL = "evt.fill.>"
EVT_POSITION_ALL = "evt.position.>"
EVT_ALERT_ALL = "evt.alert.>"
CMD_STRATEGY_ENABLE_ALL = "cmd.strategy.*.enable"
"""Every strategy instance's enable command (risk follows them for CB-3)."""


def evt_link_all_venues(link: str) -> str:
    """One link's state changes on every venue, e.g. `evt.link.*.market-ws`."""
    return f"evt.link.*.{link}"


def cmd_strategy_all(strategy: str) -> str:
    """Every command to one strategy instance."""
    return f"cmd.strategy.{strategy}.>"


def evt_order_all_for_symbol(symbol: str) -> str:
    """Every order event of one symbol, any kind and venue."""
    return f"evt.order.*.*.{symbol}"


def evt_fill_all_for_symbol(symbol: str) -> str:
    """Every fill of one symbol, any venue."""
    return f"evt.fill.*.{symbol}"


def evt_link(venue: str, link: str) -> str:
    return f"evt.link.{venue}.{link}"


def evt_hot_state(symbol: str) -> str:
    return f"evt.hotstate.{symbol}"


def evt_signal(strategy: str, symbol: str) -> str:
    return f"evt.signal.{strategy}.{symbol}"


def evt_strategy_state(strategy: str) -> str:
    return f"evt.strategy.{strategy}"


def evt_strategy_crashed(strategy: str) -> str:
    """`StrategyCrashed` events of one strategy instance (FM-C2)."""
    return f"evt.strategy.{strategy}.crashed"


def cmd_strategy(strategy: str, action: str) -> str:
    """`action` is `enable` or `disable`."""
    return f"cmd.strategy.{strategy}.{action}"


CMD_ORDER_SUBMIT = "cmd.order.submit"
CMD_ORDER_CANCEL = "cmd.order.cancel"


def evt_order(event: str, venue: str, symbol: str) -> str:
    """`event`: approved, denied, submitted, accepted, rejected, canceled, unknown."""
    return f"evt.order.{event}.{venue}.{symbol}"


def evt_fill(venue: str, symbol: str) -> str:
    return f"evt.fill.{venue}.{symbol}"


def evt_position(venue: str, symbol: str) -> str:
    return f"evt.position.{venue}.{symbol}"


CMD_TRADING_HALT = "cmd.trading.halt"
CMD_TRADING_RESUME = "cmd.trading.resume"
EVT_TRADING_STATE = "evt.trading.state"
EVT_DEGRADATION = "evt.degradation.level"
EVT_HEALTH = "evt.health.changed"


def evt_component(component: str) -> str:
    return f"evt.component.{component}"


def evt_breaker(breaker: str) -> str:
    return f"evt.breaker.{breaker}"


EVT_BACKGROUND_WORK = "evt.background.work"
"""`BackgroundWorkPaused` / `BackgroundWorkResumed` (risk, CB-4)."""


def evt_operator(action: str) -> str:
    """`OperatorActionTaken` of one kind, e.g. `evt.operator.dlq_retry` (gateway)."""
    return f"evt.operator.{action}"


EVT_ALERT_RAISED = "evt.alert.raised"
EVT_ALERT_RESOLVED = "evt.alert.resolved"
EVT_PROJECTIONS_VERIFIED = "evt.projections.verified"
"""`ProjectionsVerified` (watchdog's periodic full-replay verification, SPEC §8)."""


def dlq(consumer: str) -> str:
    return f"{DLQ_PREFIX}{consumer}"


EVT_STRATEGY_CRASHED_ALL = "evt.strategy.*.crashed"
"""Every strategy instance's `StrategyCrashed` events (FM-C2)."""


def evt_order_all_for_venue(event: str, venue: str) -> str:
    """One kind of order event on one venue, every symbol, e.g. `evt.order.approved.<venue>.>` (the
    approvals and denials a position process consumes)."""
    return f"evt.order.{event}.{venue}.>"


# --------------------------------------------------------------------------- core NATS


def heartbeat(component: str) -> str:
    return f"{HEARTBEAT_PREFIX}{component}"


HEARTBEAT_ALL = "hb.>"


def service_query(component: str, operation: str) -> str:
    """Request/reply subject answered by one component, e.g. `svc.state-builder.book`."""
    return f"{SERVICE_QUERY_PREFIX}{component}.{operation}"


DLQ_PREFIX = "dlq."
"""Every dead letter's subject starts with it (`dlq(consumer)`)."""
HEARTBEAT_PREFIX = "hb."
"""Every heartbeat's subject starts with it (`heartbeat(component)`; core NATS, not persisted)."""
SERVICE_QUERY_PREFIX = "svc."
"""Every request/reply query's subject starts with it (`service_query(component, operation)`; core NATS)."""


# --------------------------------------------------------------------------- streams


@dataclass(frozen=True)
class StreamSpec:
    """A JetStream stream: name, subjects and retention (see README "Event log")."""

    name: str
    subjects: tuple[str, ...]
    max_age_s: float = 0.0  # 0: keep forever
    max_bytes: int = -1
    max_msgs: int = -1
    duplicate_window_s: float = 120.0
    description: str = ""
    extra: dict[str, object] = field(default_factory=dict)


STREAM_MARKET_DATA = StreamSpec(
    name="MARKET_DATA",
    subjects=(MD_ALL,),
    max_age_s=6 * 3600.0,
    max_bytes=2 * 1024**3,
    duplicate_window_s=60.0,
    description="normalized market data; bounded by age and size, rebuilt from the venue on loss",
)
STREAM_ORDERS = StreamSpec(
    name="ORDERS",
    subjects=("cmd.order.>", EVT_ORDER_ALL, EVT_FILL_ALL, EVT_POSITION_ALL),
    duplicate_window_s=24 * 3600.0,
    description="order commands, order events, fills and positions: the source of truth (RPO 0)",
)
STREAM_SIGNALS = StreamSpec(
    name="SIGNALS",
    subjects=(EVT_SIGNAL_ALL, "evt.strategy.>", "cmd.strategy.>"),
    duplicate_window_s=24 * 3600.0,
    description="strategy signals and strategy state transitions",
)
STREAM_CONTROL = StreamSpec(
    name="CONTROL",
    subjects=(
        "cmd.trading.>",
        "evt.trading.>",
        "evt.degradation.>",
        "evt.health.>",
        EVT_HOT_STATE_ALL,
        EVT_LINK_ALL,
        "evt.component.>",
        "evt.breaker.>",
        EVT_ALERT_ALL,
        "evt.operator.>",
        "evt.background.>",
        "evt.projections.>",
    ),
    duplicate_window_s=3600.0,
    description="trading state, degradation, health, hot state, links, components, breakers, alerts",
)
STREAM_DLQ = StreamSpec(
    name="DLQ",
    subjects=("dlq.>",),
    max_age_s=30 * 24 * 3600.0,
    description="messages a consumer gave up on after bounded deliveries",
)

ALL_STREAMS: tuple[StreamSpec, ...] = (
    STREAM_MARKET_DATA,
    STREAM_ORDERS,
    STREAM_SIGNALS,
    STREAM_CONTROL,
    STREAM_DLQ,
)

# --------------------------------------------------------------------------- key-value

KV_STATE = "bulwark-state"
"""Current value of every persisted state (fail closed across restarts)."""

KEY_TRADING_STATE = "trading_state"
KEY_DEGRADATION_LEVEL = "degradation_level"
KEY_HEALTH = "health"
KEY_BACKGROUND_WORK = "background_work"
"""risk (CB-4): {"paused": bool, "reason", "ts_ns"}; background jobs check it before they start."""


def key_hot_state(symbol: str) -> str:
    return f"hotstate.{symbol}"


def key_symbol_rules(venue: str, symbol: str) -> str:
    """KV `rules.<venue>.<symbol>`: the venue's trading rules of a symbol (`proto.kv.SymbolRulesValue`;
    written by the venue's position process from `exchangeInfo`)."""
    return f"rules.{venue}.{symbol}"


KEY_BREAKER_PREFIX = "breaker."
"""Every breaker's key starts with it; the rest is the breaker's id (`CB-1`, `venue.<venue>`, `dependency.<name>`)."""


def key_breaker(breaker: str) -> str:
    return f"{KEY_BREAKER_PREFIX}{breaker}"


MARKET_WS_LINK = "market-ws"
"""market-data's WebSocket link name (`LinkStateChanged.link`, KV `link.<venue>.market-ws`)."""
ORDER_LINK = "orders"
"""The position process's order path to its venue (`evt.link.<venue>.orders`, KV `link.<venue>.orders`)."""


KEY_LINK_PREFIX = "link."
"""Every link's key starts with it; the rest is `<venue>.<link>`."""


def key_link(venue: str, link: str) -> str:
    return f"{KEY_LINK_PREFIX}{venue}.{link}"


def key_strategy(strategy: str) -> str:
    return f"strategy.{strategy}"


KEY_STRATEGY_MODE_PREFIX = "strategy_mode."
"""Every strategy's order mode key starts with it; the rest is the strategy's name."""


def key_strategy_mode(strategy: str) -> str:
    """Where a strategy's orders go, live or paper (`proto.kv.StrategyModeValue`), written by the gateway."""
    return f"{KEY_STRATEGY_MODE_PREFIX}{strategy}"


def key_strategy_crashes(strategy: str) -> str:
    """Crash history of a strategy instance (FM-C2: survives its restarts)."""
    return f"strategy.{strategy}.crashes"


def key_ratelimit_ban(venue: str) -> str:
    """A venue's current ban (SPEC FM-N2), shared by every process that talks to it (`libs.ratelimit.SharedBans`):
    {"venue", "status": 418|429, "until_ns", "origin", "reason", "ts_ns"}."""
    return f"ratelimit.{venue}.ban"


KEY_PREFLIGHT_PREFIX = "preflight."
"""Every venue preflight's key starts with it; the rest is the venue's name."""


def key_preflight(venue: str) -> str:
    """The latest preflight of `venue`'s account (`proto.kv.PreflightValue`), written by its position process."""
    return f"{KEY_PREFLIGHT_PREFIX}{venue}"


def key_protection(venue: str, symbol: str) -> str:
    """The levels protecting a position of `symbol` on `venue` (FM-C2), written by its position process."""
    return f"protection.{venue}.{symbol}"


def position_venue_breaker(venue: str) -> str:
    """Breaker id of a position process's order link to its venue (`venue-binance-usdm`):
    `evt.breaker.<id>` and KV `breaker.<id>` (market-data's breaker of the same venue is `venue.<venue>`)."""
    return f"venue-{venue}"


# --------------------------------------------------------------------------- components

GATEWAY = "gateway"
MARKET_DATA = "market-data"
STATE_BUILDER = "state-builder"
RISK = "risk"
POSITION = "position"


def position_component(venue: str, main_venue: str) -> str:
    """Component name of the position process trading `venue`: `position` for the main venue,
    `position-<venue>` for a backup. It names the process's heartbeat, lease (`lease.<name>`),
    durable consumers (`<name>-orders`, `<name>-denials`, `<name>-cancels`), snapshots and
    query subjects (`svc.<name>.*`)."""
    return POSITION if venue in ("", main_venue) else f"{POSITION}-{venue}"


WATCHDOG = "watchdog"
VENUE_SIM = "venue-sim"


def strategy_component(name: str) -> str:
    return f"strategy-{name}"


CORE_COMPONENTS: tuple[str, ...] = (GATEWAY, MARKET_DATA, STATE_BUILDER, RISK, POSITION, WATCHDOG)


def strategy_lease(strategy: str) -> str:
    """Name of a strategy instance's single-writer lease (`libs.lease`, key `lease.strategy.<name>`),
    which every process running the instance competes for."""
    return f"strategy.{strategy}"


# --------------------------------------------------------------------------- durable consumers
# `<service>-<purpose>`. A durable's name is its position in a stream: renaming one starts it over.

RISK_ORDER_EVENTS_CONSUMER = "risk-events"
"""risk: order events, fills and positions (exposure, CB-1/CB-3 trades)."""
RISK_ORDERS_CONSUMER = "risk-orders"
"""risk: operator order commands to check."""
RISK_SIGNALS_CONSUMER = "risk-signals"
"""risk: strategy signals to check."""
STATE_BUILDER_MARKET_DATA_CONSUMER = "state-builder-md"
"""state-builder: the MARKET_DATA stream it builds books from."""
WATCHDOG_ALERTS_CONSUMER = "watchdog-alerts"
"""watchdog: alerts to route (Slack, PagerDuty)."""
WATCHDOG_DLQ_CONSUMER = "watchdog-dlq"
"""watchdog: dead letters to record in Postgres."""
WATCHDOG_AUDIT_CONSUMERS: tuple[tuple[StreamSpec, str], ...] = (
    (STREAM_ORDERS, "watchdog-audit-orders"),
    (STREAM_SIGNALS, "watchdog-audit-signals"),
    (STREAM_CONTROL, "watchdog-audit-control"),
)
"""watchdog: the audit writer's consumer of each audited stream."""


def position_orders_consumer(component: str) -> str:
    """A position process's approvals (`position-orders` on the main venue)."""
    return f"{component}-orders"


def position_denials_consumer(component: str) -> str:
    """A position process's denials (`position-denials` on the main venue)."""
    return f"{component}-denials"


def position_cancels_consumer(component: str) -> str:
    """A position process's cancels (`position-cancels` on the main venue)."""
    return f"{component}-cancels"


def position_projections_writer(component: str) -> str:
    """A position process's projection writer: the `consumer` of the rows it dead-letters (not a durable)."""
    return f"{component}-projections"


PROJECTION_ROW_PREFIX = "projection."
"""The `subject` of a dead-lettered projection row (`projection.orders`, `.fills`): no stream stores it,
the row is rebuilt from the ORDERS log once the value that Postgres refused is dealt with."""


def projection_row(table: str) -> str:
    """The `subject` of a dead-lettered row of projection table `table`."""
    return f"{PROJECTION_ROW_PREFIX}{table}"


def strategy_market_data_consumer(strategy: str) -> str:
    """A strategy instance's market data."""
    return f"strategy-{strategy}-md"


def strategy_commands_consumer(strategy: str) -> str:
    """A strategy instance's enable/disable commands."""
    return f"strategy-{strategy}-commands"


# --------------------------------------------------------------------------- request/reply queries
# Bodies in `proto.replies`.

SVC_RISK_HALT = service_query(RISK, "halt")
"""`TradingControlRequest` → `TradingControlReply`: HALT trading (operators, market-data on FM-D3, position)."""
SVC_RISK_RESUME = service_query(RISK, "resume")
"""`TradingControlRequest` → `TradingControlReply`: back to ACTIVE."""
SVC_RISK_REDUCE = service_query(RISK, "reduce")
"""`TradingControlRequest` → `TradingControlReply`: only orders that reduce exposure."""
SVC_RISK_STATE = service_query(RISK, "state")
"""`{}` → `RiskStateReply`."""
SVC_RISK_BREAKER_RESET = service_query(RISK, "breaker_reset")
"""`BreakerResetRequest` → `BreakerResetReply`."""
SVC_RISK_VALIDATE_ORDER = service_query(RISK, "validate_order")
"""`OrderRulesRequest` → `OrderRulesReply`: would the venue's rules refuse this order (the gateway asks
before it accepts an operator order)."""
SVC_RISK_ENTRY_GATES = service_query(RISK, "entry_gates")
"""`{}` → `EntryGatesReply`: per symbol and venue, why a new entry would be denied now (`/v1/status`)."""
SVC_STATE_BUILDER_BOOK = service_query(STATE_BUILDER, "book")
"""`BookRequest` → `BookReply`."""
SVC_STATE_BUILDER_SYMBOLS = service_query(STATE_BUILDER, "symbols")
"""`{}` → `SymbolsReply`."""
SVC_MARKET_DATA_RESYNC = service_query(MARKET_DATA, "resync")
"""`ResyncRequest` → `ResyncReply`."""


def svc_position_state(component: str) -> str:
    """`{}` → `PositionStateReply` of one position process (`position_component`)."""
    return service_query(component, "state")

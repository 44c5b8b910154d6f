"""Vocabulary of SPEC §0 as string enums (their values are the wire form)."""

from __future__ import annotations

from enum import StrEnum


class TradingState(StrEnum):
    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"


class DegradationLevel(StrEnum):
    NORMAL = "NORMAL"
    REDUCED_FUNCTIONALITY = "REDUCED_FUNCTIONALITY"
    EMERGENCY_MODE = "EMERGENCY_MODE"
    HARD_SHUTDOWN = "HARD_SHUTDOWN"


class Health(StrEnum):
    GREEN = "GREEN"
    YELLOW = "YELLOW"
    RED = "RED"


class BreakerState(StrEnum):
    """A circuit breaker's state (risk's CB-1..CB-4, dependency and venue breakers), KV `breaker.<id>`."""

    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"


class LinkDegradeCause(StrEnum):
    """Why market-data's stream link is DEGRADED while it is connected (`LinkStateChanged.causes`,
    KV `link.<venue>.market-ws` field `causes`); the watchdog weighs them."""

    CORRUPTION = "corrupt messages"
    CLOCK = "clock offset"


class HotStateStatus(StrEnum):
    VALID = "VALID"
    STALE = "STALE"
    INVALID = "INVALID"


class ConnectionState(StrEnum):
    CONNECTED = "CONNECTED"
    SUSPECT = "SUSPECT"
    DISCONNECTED = "DISCONNECTED"
    DEGRADED = "DEGRADED"


class StrategyState(StrEnum):
    DISABLED = "DISABLED"
    SCANNING = "SCANNING"
    SETUP = "SETUP"
    IN_POSITION = "IN_POSITION"
    EXITING = "EXITING"
    FAILED = "FAILED"


class StrategyMode(StrEnum):
    """Where a strategy's orders go: the venue (`live`) or the paper order link (`paper`: the
    simulator's matching engine on the live book, never the venue)."""

    LIVE = "live"
    PAPER = "paper"


class ErrorClass(StrEnum):
    TRANSIENT = "TRANSIENT"
    RECOVERABLE = "RECOVERABLE"
    PERMANENT = "PERMANENT"
    CRITICAL = "CRITICAL"


class ComponentState(StrEnum):
    STARTING = "STARTING"
    READY = "READY"
    DEGRADED = "DEGRADED"
    STOPPING = "STOPPING"
    DOWN = "DOWN"


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class OrderType(StrEnum):
    MARKET = "MARKET"
    LIMIT = "LIMIT"
    STOP_MARKET = "STOP_MARKET"
    TAKE_PROFIT_MARKET = "TAKE_PROFIT_MARKET"  # the position service's take-profit: triggers on the mark price


class TimeInForce(StrEnum):
    GTC = "GTC"
    IOC = "IOC"
    FOK = "FOK"
    GTX = "GTX"


class OrderStatus(StrEnum):
    """Local order lifecycle; venue statuses map onto it (NEW, PARTIALLY_FILLED, FILLED, ...)."""

    PENDING_SUBMISSION = "PENDING_SUBMISSION"
    SUBMITTED = "SUBMITTED"
    NEW = "NEW"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    PENDING_CANCEL = "PENDING_CANCEL"
    CANCELED = "CANCELED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"
    DENIED = "DENIED"
    UNKNOWN = "UNKNOWN"


TERMINAL_ORDER_STATUSES = frozenset(
    {OrderStatus.FILLED, OrderStatus.CANCELED, OrderStatus.REJECTED, OrderStatus.EXPIRED, OrderStatus.DENIED}
)


class AlertSeverity(StrEnum):
    P0 = "P0"
    P1 = "P1"
    P2 = "P2"
    P3 = "P3"


class OrderSource(StrEnum):
    OPERATOR = "OPERATOR"
    STRATEGY = "STRATEGY"
    RISK = "RISK"
    EXTERNAL = "EXTERNAL"

"""The values of the key-value bucket `bulwark-state`: one struct per key family (keys in `proto.subjects`).

A value is written by its owner and read by others (the gateway, risk, the watchdog, a restarted
process of the same component), so its shape is a contract like a message's: frozen structs,
JSON on the wire, new fields only with defaults. Values written before a field existed still
decode; unknown fields are ignored. `decode_value` never raises: a value that cannot be read is
reported as None so that the reader can fail closed in its own way.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, TypeVar

import msgspec

from proto.enums import (
    BreakerState,
    ConnectionState,
    DegradationLevel,
    Health,
    StrategyMode,
    StrategyState,
    TradingState,
)

V = TypeVar("V", bound=msgspec.Struct)


class TradingStateValue(msgspec.Struct, frozen=True, kw_only=True):
    """KV `trading_state` (risk): the persisted trading state; never set means ACTIVE."""

    state: TradingState
    reason: str = ""
    operator: str | None = None
    ts_ns: int = 0


class DegradationLevelValue(msgspec.Struct, frozen=True, kw_only=True):
    """KV `degradation_level` (watchdog; the gateway and position write HARD_SHUTDOWN on an emergency stop)."""

    level: DegradationLevel
    reason: str = ""
    previous: DegradationLevel | None = None
    """The level before this one (the watchdog writes it; None when unknown)."""
    ts_ns: int = 0


class HealthValue(msgspec.Struct, frozen=True, kw_only=True):
    """KV `health` (watchdog): GREEN/YELLOW/RED with why, and the resource checks behind it."""

    health: Health
    reasons: list[str] = []
    checks: dict[str, Any] = {}
    ts_ns: int = 0


class BackgroundWorkValue(msgspec.Struct, frozen=True, kw_only=True):
    """KV `background_work` (risk, CB-4): whether background jobs may start."""

    paused: bool
    reason: str = ""
    ts_ns: int = 0


class LinkValue(msgspec.Struct, frozen=True, kw_only=True):
    """KV `link.<venue>.<link>` (market-data for `market-ws`, position for `orders`)."""

    state: ConnectionState
    reason: str = ""
    causes: list[str] = []
    """What keeps a market link from CONNECTED (`LinkDegradeCause` values); empty for the order link."""
    ts_ns: int = 0


class BreakerValue(msgspec.Struct, frozen=True, kw_only=True):
    """KV `breaker.<CB-n>` (risk): one of risk's circuit breakers (CB-1..CB-4) as the gateway shows it."""

    breaker: str
    title: str
    state: BreakerState = BreakerState.CLOSED
    reason: str = ""
    reset_mode: str = "manual"
    tripped_at_ns: int | None = None
    reset_at_ns: int | None = None
    operator: str | None = None
    trips: int = 0
    details: dict[str, Any] = {}
    ts_ns: int = 0


class DependencyBreakerValue(msgspec.Struct, frozen=True, kw_only=True):
    """KV `breaker.venue.<venue>` and `breaker.dependency.<name>`: a dependency or venue circuit breaker
    (SPEC §4 dependency breakers, FM-N5) of the service that calls it; it resets itself."""

    state: BreakerState
    reason: str = ""
    ts_ns: int = 0


class StrategyStateValue(msgspec.Struct, frozen=True, kw_only=True):
    """KV `strategy.<name>` (the strategy instance): its state machine's current state."""

    state: StrategyState
    reason: str = ""
    symbol: str | None = None
    ts_ns: int = 0
    kind: str = ""


class StrategyModeValue(msgspec.Struct, frozen=True, kw_only=True):
    """KV `strategy_mode.<name>` (the gateway, at an operator's enable): where the strategy's orders go.

    Never set means `live`. Risk routes a `paper` strategy's orders to the paper order link.

    Attributes:
        mode: `live` or `paper`.
        operator: who enabled it so.
        reason: the operator's reason (required for an override).
        override: a live enable forced past CB-3 or FAILED without paper first.
        restricted_by: why live was restricted at that enable (CB-3 or FAILED), empty when it was not.
        ts_ns: when.
    """

    mode: StrategyMode = StrategyMode.LIVE
    operator: str = ""
    reason: str = ""
    override: bool = False
    restricted_by: str = ""
    ts_ns: int = 0


class StrategyCrashesValue(msgspec.Struct, frozen=True, kw_only=True):
    """KV `strategy.<name>.crashes` (FM-C2: survives the instance's restarts).

    Attributes:
        crashes: times (ns) of the crashes still inside the 10-minute window.
        running: token (pid-start time) of the process running the instance; set at start,
            cleared at a clean stop, so a start that finds it set knows the previous process
            died (kill -9, OOM).
        surrendered: symbol -> crash time: positions (or entries in flight) left to the position
            service, which the strategy may not re-enter.
    """

    crashes: list[int] = []
    running: str | None = None
    surrendered: dict[str, int] = {}


class ProtectionValue(msgspec.Struct, frozen=True, kw_only=True):
    """KV `protection.<venue>.<symbol>` (position): the levels protecting a position (FM-C2 takeover)."""

    entry: str
    """Client order id of the entry these levels belong to."""
    stop_loss: Decimal | None = None
    take_profit: Decimal | None = None


class RateLimitBanValue(msgspec.Struct, frozen=True, kw_only=True):
    """KV `ratelimit.<venue>.ban` (FM-N2): a venue's latest ban, whoever received it."""

    venue: str
    status: int
    """418 (IP ban: send nothing) or 429 (Retry-After: hold back)."""
    until_ns: int
    """Wall clock (ns) until which nothing (418) or no request (429) may go to the venue."""
    origin: str = ""
    """The process that received it, e.g. `market-data:1234`."""
    reason: str = ""
    ts_ns: int = 0


class SymbolRulesValue(msgspec.Struct, frozen=True, kw_only=True):
    """KV `rules.<venue>.<symbol>` (position, from the venue's `exchangeInfo`): one symbol's trading
    rules, which risk checks every order against and strategies size with (`libs.instruments`).

    A filter the venue does not publish for the symbol is None: that rule is not checked.
    """

    symbol: str
    status: str = "TRADING"
    """The venue's symbol status; only `TRADING` takes orders."""
    price_precision: int | None = None
    quantity_precision: int | None = None
    tick_size: Decimal | None = None
    """PRICE_FILTER `tickSize` (0: no tick rule)."""
    min_price: Decimal | None = None
    max_price: Decimal | None = None
    step_size: Decimal | None = None
    """LOT_SIZE (LIMIT orders)."""
    min_qty: Decimal | None = None
    max_qty: Decimal | None = None
    market_step_size: Decimal | None = None
    """MARKET_LOT_SIZE (MARKET and triggered orders)."""
    market_min_qty: Decimal | None = None
    market_max_qty: Decimal | None = None
    min_notional: Decimal | None = None
    """MIN_NOTIONAL `notional` (USD-M) or `minNotional` (spot); reduce-only orders are exempt."""
    multiplier_up: Decimal | None = None
    """PERCENT_PRICE: a LIMIT price must lie within [mark x multiplier_down, mark x multiplier_up]."""
    multiplier_down: Decimal | None = None
    max_num_orders: int | None = None
    """MAX_NUM_ORDERS: open orders per symbol."""
    order_types: list[str] = []
    """Order types the symbol takes (empty: not published, not checked)."""
    venue: str = ""
    fetched_ns: int = 0
    """Wall clock (ns) of the `exchangeInfo` answer these rules come from."""


class PreflightCheckValue(msgspec.Struct, frozen=True, kw_only=True):
    """One check of a venue preflight (inside `PreflightValue.checks`)."""

    name: str
    """Stable check name, e.g. `position_mode`, `symbol.BTCUSDT`, `leverage.ETHUSDT`."""
    ok: bool
    message: str
    """What was found and, when not ok, how to fix it."""
    warning: bool = False
    """Passed, but with something an operator should look at (e.g. the key may withdraw)."""


class PreflightValue(msgspec.Struct, frozen=True, kw_only=True):
    """KV `preflight.<venue>` (position): the latest preflight of a venue account, run at every start
    and every reconnect of the order link; a failed check halts trading (through risk)."""

    venue: str
    ok: bool
    """Every check passed."""
    checks: list[PreflightCheckValue] = []
    profile: str = ""
    """The venue profile the system runs (`sim`, `binance-testnet`, `binance`, `custom`)."""
    trigger: str = ""
    """Why it ran: `start` or `reconnect` (position), `direct` (`bulwark preflight --direct`)."""
    ts_ns: int = 0


KV_VALUE_TYPES: tuple[type[msgspec.Struct], ...] = (
    TradingStateValue,
    DegradationLevelValue,
    HealthValue,
    BackgroundWorkValue,
    LinkValue,
    BreakerValue,
    DependencyBreakerValue,
    StrategyStateValue,
    StrategyModeValue,
    StrategyCrashesValue,
    ProtectionValue,
    RateLimitBanValue,
    SymbolRulesValue,
    PreflightValue,
)
"""Every KV value shape (their JSON Schemas are checked in with the messages')."""

_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {kind: msgspec.json.Decoder(kind) for kind in KV_VALUE_TYPES}


def encode_value(value: msgspec.Struct) -> bytes:
    """The JSON bytes stored under the value's key."""
    return msgspec.json.encode(value)


def decode_value(kind: type[V], raw: bytes | None) -> V | None:
    """The value stored as `raw`, or None when nothing is stored or it does not decode as `kind`."""
    if raw is None:
        return None
    decoder = _decoders.get(kind) or msgspec.json.Decoder(kind)
    try:
        value: V = decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return value


def decode_breaker(raw: bytes | None) -> BreakerValue | DependencyBreakerValue | None:
    """The value under a `breaker.<id>` key: one of risk's breakers when it carries `breaker` and
    `title` (only risk writes them), else a dependency or venue breaker (`state`, `reason`, `ts_ns`);
    None when nothing is stored or it is neither."""
    return decode_value(BreakerValue, raw) or decode_value(DependencyBreakerValue, raw)

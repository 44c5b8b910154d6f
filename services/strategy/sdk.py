"""The strategy SDK: the public, versioned API a strategy is written against (docs/strategies.md).

A strategy — built in (`services.strategy.strategies`) or a trader's own file outside the tree —
imports only this module. It subclasses `Strategy`, declares its parameters as a `StrategyConfig`
subclass (`@parameters`) named in `config_class`, and implements the hooks it needs:

- what it observes: `observe_trade`, `observe_liquidation`, `observe_open_interest`;
- how time ages its memory: `advance`; what a data reset forgets: `clear_events`;
- its intents: `find_entry` returns an `Entry` (side, size, stop, take-profit, confidence);
  `exit_reason` returns why to leave the position early (the exit intent: the SDK sends the
  reduce-only order for the whole position);
- optionally its market memory for snapshots: `market_state` / `load_market_state`.

It reads the market through the `MarketView` of each tick (book top and depth, mark price,
funding, open interest) and through `Strategy.recent_trades`, `recent_liquidations`, `position`,
`state`, `symbol`, `entry` and `entry_order` (its own engagement and order). Time is always passed
in as integer nanoseconds (`now_ns`, `ts_ns`); a strategy never reads a clock, so the same inputs
give the same decisions live, on paper and in a backtest.

Everything else (state machine, cooldowns, stops and take-profits, the lease, crash containment,
risk, audit) is the runner's. `SDK_VERSION` changes its major number only when a strategy written
for the previous one could break; new names and new optional fields raise the minor number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar, cast, dataclass_transform

from libs.clock import Clock, ManualClock
from proto.enums import Side, StrategyState

from .domain import (
    NS,
    Entry,
    LiquidationTick,
    MarketView,
    Strategy,
    StrategyConfig,
    TradeTick,
    entry_confidence,
)
from .liquidations import (
    CascadeDetection,
    EventPhase,
    LiquidationEvent,
    LiquidationTracker,
    TapeState,
    TrackerState,
)

SDK_VERSION = "1.0"
"""Version of this API (major.minor)."""

__all__ = [
    "NS",
    "SDK_VERSION",
    "CascadeDetection",
    "Clock",
    "Entry",
    "EventPhase",
    "LiquidationEvent",
    "LiquidationTick",
    "LiquidationTracker",
    "ManualClock",
    "MarketView",
    "Side",
    "Strategy",
    "StrategyConfig",
    "StrategyState",
    "TapeState",
    "TrackerState",
    "TradeTick",
    "entry_confidence",
    "parameters",
]

C = TypeVar("C", bound=type)


@dataclass_transform(frozen_default=True, kw_only_default=True, field_specifiers=(field,))
def parameters(cls: C) -> C:
    """Declare a strategy's parameters: a frozen, keyword-only dataclass (subclass `StrategyConfig`).

    A field's type says how its TOML value is read: `Decimal`, `float`, `int`, `bool`, `str`,
    `tuple[str, ...]` (a list of symbols) or `Mapping[str, Decimal]` (a table per symbol). A field
    without a default is required in the TOML table.
    """
    return cast(C, dataclass(frozen=True, kw_only=True)(cls))

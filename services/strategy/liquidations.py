"""Liquidation events: cascades detected from forced orders, open interest and price, with a lifecycle.

A *cascade* is a burst of forced orders (`forceOrder`) on one side — longs liquidated (SELL
orders) push the price down, shorts liquidated (BUY orders) push it up — confirmed by the price
displacement it caused or by open interest dropping. Its lifecycle is an explicit table:

    ACTIVE ──no liquidation for quiet_s──► DECAYING ──decay_s──► EXPIRED
       ▲                                       │
       └──────── a new liquidation ────────────┘       (any) ──data reset──► EXPIRED

DECAYING is the *exhausted* cascade a fade strategy trades. Everything is pure: time is passed in.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

import msgspec

from libs.fsm import IllegalTransition, next_state
from proto.enums import Side

NS = 1_000_000_000
HUNDRED = Decimal(100)


class EventPhase(StrEnum):
    ACTIVE = "ACTIVE"
    DECAYING = "DECAYING"
    EXPIRED = "EXPIRED"


class EventTrigger(StrEnum):
    LIQUIDATION = "LIQUIDATION"
    QUIET = "QUIET"
    TIMEOUT = "TIMEOUT"
    CLEARED = "CLEARED"


EVENT_TRANSITIONS: dict[tuple[EventPhase, EventTrigger], EventPhase] = {
    (EventPhase.ACTIVE, EventTrigger.LIQUIDATION): EventPhase.ACTIVE,
    (EventPhase.ACTIVE, EventTrigger.QUIET): EventPhase.DECAYING,
    (EventPhase.ACTIVE, EventTrigger.CLEARED): EventPhase.EXPIRED,
    (EventPhase.DECAYING, EventTrigger.LIQUIDATION): EventPhase.ACTIVE,  # the cascade re-ignites
    (EventPhase.DECAYING, EventTrigger.TIMEOUT): EventPhase.EXPIRED,
    (EventPhase.DECAYING, EventTrigger.CLEARED): EventPhase.EXPIRED,
}


class IllegalEventTransition(IllegalTransition):
    """The trigger is not allowed in the event's phase."""


@dataclass(frozen=True, kw_only=True)
class CascadeDetection:
    """When a burst of liquidations is a cascade, and how long it lives.

    Attributes:
        window_s: liquidations of one side within this window form a burst.
        min_liquidations: forced orders needed in the window.
        min_notional: quote volume (price * quantity) needed in the window.
        min_displacement_pct: price move since before the burst (%) that confirms it ...
        min_oi_drop_pct: ... or an open-interest drop (%) that confirms it (0: not used).
        lookback_s: how far back the pre-burst price and open interest are taken from.
        quiet_s: no liquidation for this long: the cascade is exhausted (DECAYING).
        decay_s: DECAYING for this long: EXPIRED.
    """

    window_s: float = 5.0
    min_liquidations: int = 3
    min_notional: Decimal = Decimal(0)
    min_displacement_pct: Decimal = Decimal("0.3")
    min_oi_drop_pct: Decimal = Decimal(0)
    lookback_s: float = 30.0
    quiet_s: float = 2.0
    decay_s: float = 30.0


@dataclass
class LiquidationEvent:
    """One cascade on one symbol. `direction` is the forced orders' side (SELL: longs liquidated)."""

    event_id: str
    symbol: str
    direction: Side
    started_ns: int
    phase_since_ns: int
    last_liquidation_ns: int
    start_price: Decimal
    extreme_price: Decimal
    liquidations: int = 0
    quantity: Decimal = Decimal(0)
    notional: Decimal = Decimal(0)
    start_open_interest: Decimal | None = None
    low_open_interest: Decimal | None = None
    phase: EventPhase = EventPhase.ACTIVE

    def displacement_pct(self) -> Decimal:
        """How far the cascade moved the price from before the burst, in % (always >= 0)."""
        if self.start_price <= 0:
            return Decimal(0)
        return abs(self.extreme_price - self.start_price) / self.start_price * HUNDRED

    def oi_drop_pct(self) -> Decimal:
        """Open interest lost since before the burst, in % (0 when unknown)."""
        start, low = self.start_open_interest, self.low_open_interest
        if start is None or low is None or start <= 0:
            return Decimal(0)
        return max(Decimal(0), (start - low) / start * HUNDRED)

    def note_price(self, price: Decimal) -> None:
        """Extend the extreme in the cascade's direction."""
        if self.direction == Side.SELL:
            self.extreme_price = min(self.extreme_price, price)
        else:
            self.extreme_price = max(self.extreme_price, price)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view (crash records, logs)."""
        return {
            "event_id": self.event_id,
            "symbol": self.symbol,
            "direction": self.direction.value,
            "phase": self.phase.value,
            "started_ns": self.started_ns,
            "phase_since_ns": self.phase_since_ns,
            "liquidations": self.liquidations,
            "quantity": str(self.quantity),
            "notional": str(self.notional),
            "start_price": str(self.start_price),
            "extreme_price": str(self.extreme_price),
            "displacement_pct": str(round(self.displacement_pct(), 4)),
            "oi_drop_pct": str(round(self.oi_drop_pct(), 4)),
        }


@dataclass(frozen=True)
class PhaseChange:
    """A lifecycle step of an event (for logs)."""

    event_id: str
    symbol: str
    previous: EventPhase | None
    current: EventPhase
    reason: str


@dataclass
class _SymbolTape:
    liquidations: deque[tuple[int, Side, Decimal, Decimal]] = field(default_factory=deque)
    prices: deque[tuple[int, Decimal]] = field(default_factory=deque)
    open_interest: deque[tuple[int, Decimal]] = field(default_factory=deque)


class TapeState(msgspec.Struct, frozen=True, kw_only=True):
    """One symbol's recent liquidations, prices and open interest, as a snapshot holds them."""

    liquidations: list[tuple[int, Side, Decimal, Decimal]] = []
    prices: list[tuple[int, Decimal]] = []
    open_interest: list[tuple[int, Decimal]] = []


class TrackerState(msgspec.Struct, frozen=True, kw_only=True):
    """`LiquidationTracker.to_state`: the live events and the tapes they are detected from."""

    events: dict[str, LiquidationEvent] = {}
    tapes: dict[str, TapeState] = {}


class LiquidationTracker:
    """Detects cascades per symbol and ages them through their lifecycle."""

    def __init__(self, detection: CascadeDetection) -> None:
        self.detection = detection
        self.events: dict[str, LiquidationEvent] = {}
        self.changes: list[PhaseChange] = []
        self._tapes: dict[str, _SymbolTape] = {}

    def _tape(self, symbol: str) -> _SymbolTape:
        tape = self._tapes.get(symbol)
        if tape is None:
            tape = self._tapes[symbol] = _SymbolTape()
        return tape

    def _step(self, event: LiquidationEvent, trigger: EventTrigger, now_ns: int, reason: str) -> None:
        previous = event.phase
        event.phase = next_state(EVENT_TRANSITIONS, previous, trigger, IllegalEventTransition)
        if event.phase != previous:
            event.phase_since_ns = now_ns
            self.changes.append(PhaseChange(event.event_id, event.symbol, previous, event.phase, reason))
        if event.phase == EventPhase.EXPIRED:
            self.events.pop(event.symbol, None)

    def _prune(self, tape: _SymbolTape, now_ns: int) -> None:
        window = now_ns - int(self.detection.window_s * NS)
        lookback = now_ns - int(max(self.detection.lookback_s, self.detection.window_s) * NS)
        while tape.liquidations and tape.liquidations[0][0] < window:
            tape.liquidations.popleft()
        # Keep one price/OI reading older than the lookback: it is the "before" of a burst.
        while len(tape.prices) > 1 and tape.prices[1][0] < lookback:
            tape.prices.popleft()
        while len(tape.open_interest) > 1 and tape.open_interest[1][0] < lookback:
            tape.open_interest.popleft()

    # ------------------------------------------------------------------ inputs

    def on_trade(self, symbol: str, ts_ns: int, price: Decimal) -> None:
        """A traded price: extends a live cascade, or confirms a burst by its displacement."""
        tape = self._tape(symbol)
        tape.prices.append((ts_ns, price))
        self._prune(tape, ts_ns)
        event = self.events.get(symbol)
        if event is not None:
            event.note_price(price)
        elif len(tape.liquidations) >= self.detection.min_liquidations:
            self._detect(symbol, ts_ns)

    def on_open_interest(self, symbol: str, ts_ns: int, open_interest: Decimal) -> None:
        """An open-interest reading: tracks a live cascade's drop, or confirms a burst."""
        tape = self._tape(symbol)
        tape.open_interest.append((ts_ns, open_interest))
        self._prune(tape, ts_ns)
        event = self.events.get(symbol)
        if event is not None:
            if event.low_open_interest is None or open_interest < event.low_open_interest:
                event.low_open_interest = open_interest
        elif len(tape.liquidations) >= self.detection.min_liquidations:
            self._detect(symbol, ts_ns)

    def on_liquidation(self, symbol: str, ts_ns: int, side: Side, price: Decimal, quantity: Decimal) -> None:
        """A forced order: feeds the live cascade of its side, or a burst that may become one."""
        tape = self._tape(symbol)
        tape.liquidations.append((ts_ns, side, price, quantity))
        self._prune(tape, ts_ns)
        event = self.events.get(symbol)
        if event is not None and event.direction == side:
            event.liquidations += 1
            event.quantity += quantity
            event.notional += price * quantity
            event.last_liquidation_ns = ts_ns
            event.note_price(price)
            self._step(event, EventTrigger.LIQUIDATION, ts_ns, "liquidation")
            return
        self._detect(symbol, ts_ns)

    def advance(self, now_ns: int) -> None:
        """Age every live event: exhausted after `quiet_s`, expired after `decay_s` more."""
        for event in list(self.events.values()):
            if event.phase == EventPhase.ACTIVE and now_ns - event.last_liquidation_ns >= self.detection.quiet_s * NS:
                self._step(event, EventTrigger.QUIET, now_ns, f"no liquidation for {self.detection.quiet_s:g}s")
            if event.phase == EventPhase.DECAYING and now_ns - event.phase_since_ns >= self.detection.decay_s * NS:
                self._step(event, EventTrigger.TIMEOUT, now_ns, f"decayed for {self.detection.decay_s:g}s")

    def clear(self, symbols: Iterable[str] | None, now_ns: int, reason: str) -> None:
        """FM-N1/FM-D2: forget events and the tape of these symbols (None: all); data had a gap."""
        wanted = None if symbols is None else set(symbols)
        for symbol in list(self.events):
            if wanted is None or symbol in wanted:
                self._step(self.events[symbol], EventTrigger.CLEARED, now_ns, reason)
        for symbol in list(self._tapes):
            if wanted is None or symbol in wanted:
                del self._tapes[symbol]

    def to_state(self) -> TrackerState:
        """Live events and tapes, for a snapshot (SPEC §8); pending phase changes are not included."""
        return TrackerState(
            # Copies: the live events keep changing while the snapshot waits to be written.
            events={symbol: dataclasses.replace(event) for symbol, event in self.events.items()},
            tapes={
                symbol: TapeState(
                    liquidations=list(tape.liquidations),
                    prices=list(tape.prices),
                    open_interest=list(tape.open_interest),
                )
                for symbol, tape in self._tapes.items()
            },
        )

    def load_state(self, state: TrackerState) -> None:
        """Take over a snapshot's events and tapes (`to_state`); the detection settings stay this tracker's."""
        self.events = dict(state.events)
        self._tapes = {
            symbol: _SymbolTape(deque(tape.liquidations), deque(tape.prices), deque(tape.open_interest))
            for symbol, tape in state.tapes.items()
        }

    def active(self) -> list[LiquidationEvent]:
        """Live (ACTIVE or DECAYING) events, by symbol."""
        return [self.events[symbol] for symbol in sorted(self.events)]

    def drain_changes(self) -> list[PhaseChange]:
        """Lifecycle steps since the last call."""
        changes, self.changes = self.changes, []
        return changes

    # ------------------------------------------------------------------ detection

    def _detect(self, symbol: str, now_ns: int) -> None:
        tape = self._tape(symbol)
        d = self.detection
        live = self.events.get(symbol)
        for side in (Side.SELL, Side.BUY):
            if live is not None and live.direction == side:
                continue
            burst = [entry for entry in tape.liquidations if entry[1] == side]
            if len(burst) < d.min_liquidations:
                continue
            notional = sum((price * quantity for _, _, price, quantity in burst), Decimal(0))
            if notional < d.min_notional:
                continue
            first_ns = burst[0][0]
            before = [price for ts, price in tape.prices if ts < first_ns]
            start_price = before[-1] if before else burst[0][2]
            moved = [price for ts, price in tape.prices if ts >= first_ns] + [entry[2] for entry in burst]
            extreme = min(moved) if side == Side.SELL else max(moved)
            oi_before = [oi for ts, oi in tape.open_interest if ts < first_ns]
            oi_after = [oi for ts, oi in tape.open_interest if ts >= first_ns]
            event = LiquidationEvent(
                event_id=f"{symbol}-{side.value.lower()}-{first_ns}",
                symbol=symbol,
                direction=side,
                started_ns=first_ns,
                phase_since_ns=now_ns,
                last_liquidation_ns=burst[-1][0],
                start_price=start_price,
                extreme_price=extreme,
                liquidations=len(burst),
                quantity=sum((entry[3] for entry in burst), Decimal(0)),
                notional=notional,
                start_open_interest=oi_before[-1] if oi_before else None,
                low_open_interest=min(oi_after) if oi_after else None,
            )
            displaced = event.displacement_pct() >= d.min_displacement_pct
            oi_dropped = d.min_oi_drop_pct > 0 and event.oi_drop_pct() >= d.min_oi_drop_pct
            if not (displaced or oi_dropped):
                continue
            if live is not None:  # the other side took over: the old cascade is over
                self._step(live, EventTrigger.CLEARED, now_ns, f"opposite cascade {event.event_id}")
            self.events[symbol] = event
            why = f"displacement {event.displacement_pct():.2f}%" if displaced else f"OI -{event.oi_drop_pct():.2f}%"
            self.changes.append(
                PhaseChange(event.event_id, symbol, None, EventPhase.ACTIVE, f"{len(burst)} liquidations, {why}")
            )
            return

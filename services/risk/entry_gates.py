"""Can a new entry go out right now, and every reason it cannot: `svc.risk.entry_gates`, which the
gateway shows in `/v1/status` as `can_enter` and `blocked_by` per symbol and venue.

Nothing here re-states a rule. Each gate's current value (trading state, CB-1/CB-2, a lost
dependency, the market-data stream, the degradation level, the hot state) is put, on its own,
through the very `checks.check_order` that `decisions.decide` runs, with a probe entry (an operator
MARKET BUY of the smallest size, from flat) and every other input at its permissive value: the
reasons are the ones an order refused for them gets, word for word, and an entry is allowed
exactly when no gate refuses it (`tests/unit/test_risk_entry_gates.py` checks both against the
combined check). Per venue: the order link risk routes by (`routing.route_order`; an entry sent
to a venue whose link is down waits there as PENDING_SUBMISSION).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import msgspec

from proto.enums import ConnectionState, DegradationLevel, HotStateStatus, OrderSource, OrderType, Side, TradingState
from proto.messages import SubmitOrder
from proto.replies import EntryBlocker, EntryGatesReply, SymbolEntryGates, VenueEntryGates

from . import decisions, dependencies
from .checks import RiskLimits, check_order
from .core import RiskCore

PROBE_QUANTITY = Decimal("0.00000001")
PROBE_PRICE = Decimal(1)
"""The probe's size and reference price: far inside every size and notional limit, so only the
gates (not the size of one particular order) can refuse it."""


@dataclass(frozen=True)
class GateInputs:
    """The values of the gates for one symbol, as `decisions.decide` would pass them to `check_order`."""

    trading_state: TradingState
    breaker_halt: str | None
    """Why CB-1 halts trading (open), None when it does not."""
    entries_paused: str | None
    """Why CB-2 pauses new entries, None when it does not."""
    entries_halted: str | None
    """A lost dependency (bus, state-builder), None when none."""
    market_link: str | None
    """Why entries wait for the market-data stream (`dependencies.market_link_gate`), None when they do not."""
    degradation: DegradationLevel | None
    hot_state: HotStateStatus | None


def probe_entry(symbol: str, venue: str) -> SubmitOrder:
    """The entry the gates are asked about: nothing about it but the symbol can be refused."""
    return SubmitOrder(
        message_id="entry-probe",
        ts_event_ns=0,
        ts_init_ns=0,
        client_order_id="entry-probe",
        idempotency_key="entry-probe",
        source=OrderSource.OPERATOR,
        symbol=symbol,
        side=Side.BUY,
        order_type=OrderType.MARKET,
        quantity=PROBE_QUANTITY,
        venue=venue,
    )


def _permissive(limits: RiskLimits) -> dict[str, Any]:
    """`check_order` inputs under which the probe passes (none of the gates refuses)."""
    return {
        "trading_state": TradingState.ACTIVE,
        "hot_state": HotStateStatus.VALID,
        "position": Decimal(0),
        "reference_price": PROBE_PRICE,
        "limits": limits,
        "degradation": DegradationLevel.NORMAL,
    }


def gate_checks(inputs: GateInputs) -> list[tuple[str, dict[str, Any]]]:
    """(gate, the `check_order` inputs that are that gate's current value), in `check_order`'s order."""
    checks: list[tuple[str, dict[str, Any]]] = []
    if inputs.breaker_halt is not None:  # CB-1 open: a decision sees HALTED, whatever the state says
        checks.append(("breaker", {"trading_state": TradingState.HALTED}))
    checks += [
        ("trading_state", {"trading_state": inputs.trading_state}),
        ("dependency", {"entries_halted": inputs.entries_halted}),
        ("link", {"entries_halted": inputs.market_link}),
        ("degradation", {"degradation": inputs.degradation}),
        ("breaker", {"entries_paused": inputs.entries_paused}),
        ("hot_state", {"hot_state": inputs.hot_state}),
    ]
    return checks


def blockers(
    order: SubmitOrder, inputs: GateInputs, limits: RiskLimits, since: dict[str, int | None]
) -> list[EntryBlocker]:
    """Every gate that on its own makes `check_order` deny `order` (a probe entry), with its reason.

    `since` gives, by gate name, when the gate took its value (absent or None: not known).
    """
    found: list[EntryBlocker] = []
    for gate, value in gate_checks(inputs):
        decision = check_order(order, **{**_permissive(limits), **value})
        if decision.approved:
            continue
        reason = decision.reason
        if gate == "breaker" and "trading_state" in value:
            reason = f"{reason} (CB-1: {inputs.breaker_halt})"
        found.append(EntryBlocker(gate=gate, reason=reason, since_ns=since.get(gate)))
    return found


def combined(order: SubmitOrder, inputs: GateInputs, limits: RiskLimits) -> bool:
    """Would `check_order` approve the probe with every gate at its current value at once?"""
    trading_state = TradingState.HALTED if inputs.breaker_halt is not None else inputs.trading_state
    return check_order(
        order,
        **{
            **_permissive(limits),
            "trading_state": trading_state,
            "hot_state": inputs.hot_state,
            "degradation": inputs.degradation,
            "entries_paused": inputs.entries_paused,
            "entries_halted": inputs.entries_halted or inputs.market_link,
        },
    ).approved


def order_link_blocker(venue: str, state: ConnectionState | None, since_ns: int | None) -> EntryBlocker | None:
    """Why an entry routed to `venue` would not go out now (None: its order link is CONNECTED)."""
    if state == ConnectionState.CONNECTED:
        return None
    shown = state.value if state is not None else "not reported yet"
    return EntryBlocker(
        gate="order_link",
        reason=f"{venue} order link {shown}: an entry waits at the venue as PENDING_SUBMISSION (FM-N6)",
        since_ns=since_ns,
    )


def inputs_of(risk: RiskCore, symbol: str) -> GateInputs:
    """The gates' values for `symbol` now, read as `decisions.decide` reads them."""
    board = risk.breakers
    rapid_loss = board.rapid_loss if board is not None and board.rapid_loss.is_open else None
    abnormal = board.abnormal_market if board is not None and board.abnormal_market.is_open else None
    return GateInputs(
        trading_state=risk.trading.state,
        breaker_halt=(rapid_loss.record.reason or "open") if rapid_loss is not None else None,
        entries_paused=abnormal.record.reason if abnormal is not None else None,
        entries_halted=dependencies.entries_halted(risk),
        market_link=dependencies.market_link_gate(risk, symbol),
        degradation=risk.degradation,
        hot_state=risk.hot_state.get(symbol),
    )


def since_of(risk: RiskCore, symbol: str) -> dict[str, int | None]:
    """When each gate of `symbol` took its current value, as far as risk knows it."""
    board = risk.breakers
    tripped = [
        breaker.record.tripped_at_ns
        for breaker in ((board.rapid_loss, board.abnormal_market) if board is not None else ())
        if breaker.is_open
    ]
    return {
        "trading_state": risk.trading.ts_ns or None,
        "breaker": min((ns for ns in tripped if ns), default=None),
        "dependency": risk.since.get("bus_lost") if risk.bus_lost is not None else None,
        "link": risk.since.get("market_link"),
        "degradation": risk.since.get("degradation"),
        "hot_state": risk.since.get(f"hot_state.{symbol}"),
    }


async def entry_gates(risk: RiskCore) -> EntryGatesReply:
    """Every symbol's entry gates now.

    Like a decision, an unknown hot state or a state-builder not heard from lately is asked first
    (`dependencies.probe_state_builder`): a decision would ask before denying, so the answer here
    must not deny what a decision would approve.
    """
    symbols = sorted(risk.limits.symbols)
    if any(risk.hot_state.get(symbol) is None for symbol in symbols) or not risk.state_builder.alive(risk.monotonic()):
        await dependencies.probe_state_builder(risk)
    answer: dict[str, SymbolEntryGates] = {}
    for symbol in symbols:
        routed = decisions.route(risk, probe_entry(symbol, risk.venue))
        entry_venue = routed[0].venue if routed is not None else risk.venue
        order = probe_entry(symbol, entry_venue)
        venues = {}
        for venue in risk.venues:
            link = order_link_blocker(venue, risk.order_links.get(venue), risk.since.get(f"order_link.{venue}"))
            venues[venue] = VenueEntryGates(blocked_by=[link] if link is not None else [])
        answer[symbol] = SymbolEntryGates(
            entry_venue=entry_venue,
            blocked_by=blockers(order, inputs_of(risk, symbol), risk.limits, since_of(risk, symbol)),
            venues=venues,
        )
    return EntryGatesReply(symbols=answer, ts_ns=risk.clock())


async def serve_entry_gates(risk: RiskCore, payload: bytes) -> bytes:
    """`svc.risk.entry_gates`: `{}` → `EntryGatesReply` (the request body is ignored)."""
    return msgspec.json.encode(await entry_gates(risk))

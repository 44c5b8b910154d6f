"""`can_enter` of `/v1/status`: risk's entry gates and each venue's position process composed per
symbol and venue, and failing closed when either is silent."""

from __future__ import annotations

from libs.heartbeat import ComponentView
from proto.enums import ComponentState
from proto.kv import PreflightValue
from proto.replies import EntryBlocker, EntryGatesReply, SymbolEntryGates, VenueEntryGates
from services.gateway.entry_gates import can_enter, position_blockers

MAIN, BACKUP = "binance-usdm", "binance-usdm-backup"
LINK = EntryBlocker(gate="link", reason="trading HALTED for new entries: market data stream SUSPECT", since_ns=5)
DOWN = EntryBlocker(gate="order_link", reason=f"{MAIN} order link DISCONNECTED", since_ns=6)


def up(**details: object) -> ComponentView:
    return ComponentView("position", ComponentState.READY, 42, 100, dict(details))


def test_position_blockers_when_held_reconciled_and_preflight_passed_then_none() -> None:
    view = up(lease="held", reconciled=True, preflight_gate="PASSED")
    assert position_blockers(MAIN, "position", view, None) == []


def test_position_blockers_when_standby_unreconciled_preflight_failed_then_each_reason() -> None:
    view = up(lease="standby", reconciled=False, preflight_gate="FAILED", preflight_gate_reason="hedge mode on")
    preflight = PreflightValue(venue=MAIN, ok=False, ts_ns=77)
    found = position_blockers(MAIN, "position", view, preflight)
    assert [(b.gate, b.since_ns) for b in found] == [("lease", None), ("reconciliation", None), ("preflight", 77)]
    assert found[2].reason == "position: hedge mode on"


def test_position_blockers_when_silent_then_blocked_as_down() -> None:
    for view in (None, ComponentView("position", ComponentState.DOWN, 42, 9000, {"lease": "held"})):
        (blocker,) = position_blockers(MAIN, "position", view, None)
        assert blocker.gate == "position" and "DOWN" in blocker.reason


def test_can_enter_when_link_suspect_then_false_with_reason_on_every_venue_then_true_when_clear() -> None:
    reply = EntryGatesReply(
        symbols={
            "BTCUSDT": SymbolEntryGates(
                entry_venue=MAIN, blocked_by=[LINK], venues={MAIN: VenueEntryGates(), BACKUP: VenueEntryGates()}
            )
        }
    )
    view = can_enter(reply, ["BTCUSDT"], {MAIN: [], BACKUP: []}, MAIN)["BTCUSDT"]
    assert view["can_enter"] is False and view["entry_venue"] == MAIN
    assert view["blocked_by"] == [{"gate": "link", "reason": LINK.reason, "since_ns": 5}]
    assert [v["can_enter"] for v in view["venues"].values()] == [False, False]

    clear = EntryGatesReply(symbols={"BTCUSDT": SymbolEntryGates(entry_venue=MAIN, venues={MAIN: VenueEntryGates()})})
    view = can_enter(clear, ["BTCUSDT"], {MAIN: []}, MAIN)["BTCUSDT"]
    assert view["can_enter"] is True and view["blocked_by"] == [] and view["venues"][MAIN]["can_enter"] is True


def test_can_enter_when_main_link_down_and_entries_go_to_backup_then_symbol_follows_the_backup() -> None:
    reply = EntryGatesReply(
        symbols={
            "BTCUSDT": SymbolEntryGates(
                entry_venue=BACKUP,
                venues={MAIN: VenueEntryGates(blocked_by=[DOWN]), BACKUP: VenueEntryGates()},
            )
        }
    )
    view = can_enter(reply, ["BTCUSDT"], {MAIN: [], BACKUP: []}, MAIN)["BTCUSDT"]
    assert view["can_enter"] is True and view["entry_venue"] == BACKUP
    assert view["venues"][MAIN] == {
        "can_enter": False,
        "blocked_by": [{"gate": "order_link", "reason": DOWN.reason, "since_ns": 6}],
    }


def test_can_enter_when_risk_silent_or_position_down_then_false_with_who() -> None:
    position = position_blockers(MAIN, "position", None, None)
    view = can_enter(None, ["BTCUSDT"], {MAIN: position}, MAIN)["BTCUSDT"]
    assert view["can_enter"] is False
    assert [b["gate"] for b in view["blocked_by"]] == ["risk", "position"]

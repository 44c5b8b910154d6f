"""The fields the operator API adds from other services' data: a position's mark and unrealized PnL,
component restarts from the heartbeats, a strategy's crashes in the FM-C2 window, and the subject
on every live event frame."""

from __future__ import annotations

from decimal import Decimal

import pytest

from libs.heartbeat import ComponentView
from proto.enums import ComponentState, HotStateStatus
from proto.kv import StrategyCrashesValue
from proto.messages import Heartbeat, SymbolHotState, SymbolsReply
from services.gateway import marks, strategy_health
from services.gateway.restarts import RestartCounter
from services.gateway.routes.events import sse_frame

S = 1_000_000_000


def hot(mark: str | None = None, bid: str | None = None, ask: str | None = None) -> SymbolsReply:
    view = SymbolHotState(
        symbol="BTCUSDT",
        hot_state=HotStateStatus.VALID,
        age_ms=5,
        last_update_id=1,
        mark_price=Decimal(mark) if mark else None,
        best_bid=Decimal(bid) if bid else None,
        best_ask=Decimal(ask) if ask else None,
    )
    return SymbolsReply(symbols={"BTCUSDT": view})


def position(quantity: str, entry: str = "65000") -> dict[str, object]:
    return {
        "venue": "binance-usdm",
        "symbol": "BTCUSDT",
        "quantity": Decimal(quantity),
        "average_entry_price": Decimal(entry),
    }


# --------------------------------------------------------------------------- marks


@pytest.mark.parametrize(
    ("quantity", "reply", "expected"),
    [
        # long 0.5 from 65000, venue mark 65100: +50
        (
            "0.5",
            hot(mark="65100", bid="65090", ask="65110"),
            {"mark_price": "65100", "mark_source": "mark_price", "unrealized_pnl": "50"},
        ),
        # short 0.5 from 65000 at the same mark: -50 (a short loses when the mark rises)
        ("-0.5", hot(mark="65100"), {"mark_price": "65100", "mark_source": "mark_price", "unrealized_pnl": "-50"}),
        # no venue mark: the mid of 64990/65000 = 64995; short 2 gains 10
        (
            "-2",
            hot(bid="64990", ask="65000"),
            {"mark_price": "64995", "mark_source": "book_mid", "unrealized_pnl": "10"},
        ),
        # flat: nothing open, nothing unrealized, whatever the mark
        ("0", hot(), {"mark_price": None, "mark_source": None, "unrealized_pnl": "0"}),
        # open but nothing prices it (one-sided book): null, never a made-up 0
        ("1", hot(bid="64990"), {"mark_price": None, "mark_source": None, "unrealized_pnl": None}),
        # the state-builder did not answer
        ("1", None, {"mark_price": None, "mark_source": None, "unrealized_pnl": None}),
    ],
    ids=["long-venue-mark", "short-venue-mark", "short-book-mid", "flat", "one-sided-book", "no-state-builder"],
)
def test_position_marks_when_priced_then_mark_and_signed_unrealized_pnl(
    quantity: str, reply: SymbolsReply | None, expected: dict[str, object]
) -> None:
    assert marks.position_marks(position(quantity), reply) == expected


def test_position_marks_when_symbol_not_in_reply_then_null() -> None:
    row = {**position("1"), "symbol": "ETHUSDT"}

    assert marks.position_marks(row, hot(mark="1"))["unrealized_pnl"] is None


# --------------------------------------------------------------------------- restarts


def beat(pid: int, started_ns: int, component: str = "risk") -> Heartbeat:
    return Heartbeat(component=component, pid=pid, state=ComponentState.READY, started_ns=started_ns)


def test_restarts_when_process_replaced_then_counted_once_after_the_old_one_is_silent() -> None:
    counter = RestartCounter(counting_since_ns=0, timeout_ns=3 * S)
    for second in range(3):
        counter.record(beat(7, 1), 10 * S + second * S)
    counter.record(beat(8, 13 * S), 13 * S)  # restarted: the old process was last heard at 12 s
    not_yet = counter.restarts("risk")
    counter.record(beat(8, 13 * S), 16 * S)  # the old one is silent for more than the timeout now

    assert not_yet == 0
    assert counter.view("risk") == {
        "restarts": 1,
        "last_restart_ns": 13 * S,
        "started_ns": 13 * S,
        "restarts_since_ns": 0,
    }
    counter.record(beat(8, 13 * S), 20 * S)
    assert counter.restarts("risk") == 1, "the same process again is no restart"


def test_restarts_when_standby_beats_beside_the_holder_then_none() -> None:
    counter = RestartCounter(counting_since_ns=0, timeout_ns=3 * S)
    for second in range(20):
        counter.record(beat(7, 1, "position"), second * S)
        counter.record(beat(9, 2, "position"), second * S + S // 2)

    assert counter.restarts("position") == 0


def test_restarts_when_pid_reused_by_a_new_process_then_counted() -> None:
    counter = RestartCounter(counting_since_ns=0, timeout_ns=3 * S)
    counter.record(beat(7, 1), 1 * S)
    counter.record(beat(7, 9 * S), 9 * S)

    assert counter.restarts("risk") == 1


def test_restarts_when_component_forgotten_then_dropped() -> None:
    counter = RestartCounter(counting_since_ns=5)
    counter.record(beat(7, 1, "stray"), 1)
    counter.keep_only({"risk"})

    assert counter.view("stray") == {"restarts": 0, "last_restart_ns": None, "started_ns": None, "restarts_since_ns": 5}


# --------------------------------------------------------------------------- strategy crashes


def view(state: ComponentState, crashes: object) -> ComponentView:
    return ComponentView("strategy-x", state, 42, 100, {"crashes_in_window": crashes})


NOW = 10_000 * S
HISTORY = StrategyCrashesValue(crashes=[NOW - 700 * S, NOW - 300 * S, NOW - 20 * S])


def test_crash_fields_when_process_heartbeats_then_its_own_count() -> None:
    assert strategy_health.crash_fields(view(ComponentState.READY, 3), HISTORY, NOW) == {
        "crashes_in_window": 3,
        "crash_window_s": 600,
        "last_crash_ns": NOW - 20 * S,
    }


def test_crash_fields_when_process_silent_then_persisted_history_inside_the_window() -> None:
    fields = strategy_health.crash_fields(view(ComponentState.DOWN, 9), HISTORY, NOW)

    assert fields["crashes_in_window"] == 2 and fields["last_crash_ns"] == NOW - 20 * S


def test_crash_fields_when_nothing_known_then_null_not_zero() -> None:
    assert strategy_health.crash_fields(None, None, NOW)["crashes_in_window"] is None
    assert strategy_health.crash_fields(view(ComponentState.READY, "x"), None, NOW)["crashes_in_window"] is None


# --------------------------------------------------------------------------- event stream frames


def test_sse_frame_when_event_then_subject_field_before_data() -> None:
    frame = sse_frame("OrderFilled", "m1", "evt.order.filled", b'{"a": 1}')

    assert frame == 'event: OrderFilled\nid: m1\nsubject: evt.order.filled\ndata: {"a": 1}\n\n'


def test_sse_frame_when_line_breaks_inside_then_still_one_event() -> None:
    frame = sse_frame("X\nevent: Y", "i", "evt.a\r\nb", b'{"a":\n1}')

    assert frame.count("\n\n") == 1 and frame.endswith("\n\n")
    assert "\nevent: Y" not in frame and 'data: {"a":\ndata: 1}' in frame

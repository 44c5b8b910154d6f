"""Since when a conditional order has been triggered at the venue without its MARKET order (pure):
the clock starts at the first sight, keeps running on repeats, stops when the MARKET order exists or
the order is open or finished, and only orders past the bound are overdue."""

from __future__ import annotations

from services.position.trigger_watch import MAX_WATCHED, TriggerWatch

S = 1_000_000_000


def _update(coid: str, status: str, actual: str = "") -> dict:
    return {"e": "ALGO_UPDATE", "o": {"caid": coid, "X": status, "ai": actual}}


def test_watch_when_triggering_without_market_order_then_overdue_after_the_bound_from_the_first_sight() -> None:
    watch = TriggerWatch()
    watch.observe_update(_update("bw-stop", "TRIGGERING"), 10 * S)
    watch.observe_answer("bw-stop", {"status": "NEW", "algoStatus": "TRIGGERING"}, 13 * S)  # the poll: same
    assert watch.overdue(14 * S, 5 * S) == []
    assert watch.overdue(15 * S, 5 * S) == [("bw-stop", 5 * S)]


def test_watch_when_triggered_without_actual_order_then_stuck_and_with_it_then_not() -> None:
    watch = TriggerWatch()
    watch.observe_update(_update("bw-a", "TRIGGERED"), 0)
    watch.observe_update(_update("bw-b", "TRIGGERING"), 0)
    watch.observe_update(_update("bw-b", "TRIGGERED", actual="4000000001"), 1 * S)
    assert [coid for coid, _ in watch.overdue(9 * S, 5 * S)] == ["bw-a"]


def test_watch_when_market_order_answers_or_order_open_or_finished_then_clock_stops() -> None:
    watch = TriggerWatch()
    for coid in ("bw-1", "bw-2", "bw-3"):
        watch.observe_update(_update(coid, "TRIGGERING"), 0)
    watch.observe_answer("bw-1", {"status": "FILLED", "executedQty": "0.01"}, 1 * S)  # the MARKET order's answer
    watch.observe_update(_update("bw-2", "FINISHED", actual="7"), 1 * S)
    watch.observe_update(_update("bw-3", "CANCELED"), 1 * S)
    assert watch.overdue(60 * S, 5 * S) == []


def test_watch_when_malformed_event_then_ignored_and_when_many_then_bounded() -> None:
    watch = TriggerWatch()
    watch.observe_update({"e": "ALGO_UPDATE", "o": "garbage"}, 0)
    watch.observe_update({"e": "ALGO_UPDATE"}, 0)
    assert watch.since_ns == {}
    for n in range(MAX_WATCHED + 5):
        watch.observe_update(_update(f"bw-{n}", "TRIGGERING"), n)
    assert len(watch.since_ns) == MAX_WATCHED and "bw-0" not in watch.since_ns

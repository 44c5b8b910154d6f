"""Risk remembers decided orders for a day after the newest decision, the same set live and on replay."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from services.risk import snapshot as snap
from services.risk.state import DECIDED_KEEP_NS, DecidedOrders, RiskState

H = 3600 * 1_000_000_000


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(0, 60 * H)), max_size=12))
def test_add_when_same_decisions_in_any_order_then_same_ids_kept(decisions: list[tuple[str, int]]) -> None:
    kept = set()
    for order in itertools.islice(itertools.permutations(decisions), 6):
        decided = DecidedOrders()
        for coid, ts in order:
            decided.add(coid, ts)
        kept.add(tuple(decided.to_state()))
    assert len(kept) <= 1


def test_add_when_a_day_passed_since_a_decision_then_forgotten_and_newest_kept_whatever_its_name() -> None:
    decided = DecidedOrders()
    decided.add("zzz-old", 0)
    decided.add("aaa-new", DECIDED_KEEP_NS + 1)
    assert "zzz-old" not in decided and "aaa-new" in decided
    decided.add("late", 0)  # a decision older than the window is not remembered
    assert "late" not in decided and len(decided) == 1


def test_restore_when_snapshot_written_before_decision_times_then_ids_still_decided() -> None:
    old = snap.RiskSnapshot(orders_seq=3, taken_ns=5 * H, decided=["bw-a", "bw-b"])
    state = RiskState(venue="binance-usdm")
    snap.restore(state, snap.decode_snapshot(snap.encode_snapshot(old)))
    assert "bw-a" in state.decided and "bw-b" in state.decided
    assert state.decided.to_state() == [("bw-a", 5 * H), ("bw-b", 5 * H)]

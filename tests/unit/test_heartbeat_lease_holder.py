"""A position process and its standby heartbeat under the same component name: the gateway's view of
the component (and so `can_enter`'s lease gate) follows the process holding the lease, whichever
was heard last, and falls to the standby only when the holder has gone silent."""

from __future__ import annotations

from libs.heartbeat import HeartbeatTracker
from proto.enums import ComponentState
from proto.messages import Heartbeat
from services.gateway.entry_gates import position_blockers

S = 1_000_000_000
VENUE = "binance-usdm"


def beat(pid: int, lease: str, state: ComponentState = ComponentState.READY) -> Heartbeat:
    details = {"lease": lease, "holder": f"host-{pid}", "reconciled": True}
    return Heartbeat(component="position", pid=pid, state=state, started_ns=pid * S, details=details)


def lease_gates(tracker: HeartbeatTracker, now_ns: int) -> list[str]:
    view = tracker.view(now_ns).get("position")
    return [blocker.reason for blocker in position_blockers(VENUE, "position", view, None) if blocker.gate == "lease"]


def test_lease_gate_when_standby_heard_after_the_holder_then_it_follows_the_holder_until_it_is_silent() -> None:
    tracker = HeartbeatTracker(timeout_ns=3 * S, expected=("position",))
    active, standby = beat(100, "held"), beat(200, "standby", ComponentState.STARTING)

    for second in range(5):  # both every second, the standby always heard last
        tracker.record(active, second * S)
        tracker.record(standby, second * S + S // 2)
        view = tracker.view(second * S + S // 2)["position"]
        assert (view.pid, view.state) == (100, ComponentState.READY)
        assert lease_gates(tracker, second * S + S // 2) == []

    # The holder dies: once it is silent past the timeout, the standby speaks and nothing may enter.
    for second in range(5, 10):
        tracker.record(standby, second * S + S // 2)
    assert tracker.view(9 * S + S // 2)["position"].pid == 200
    assert lease_gates(tracker, 9 * S + S // 2) == ["position lease standby: it sends nothing to the venue (SPEC §8)"]

    # It takes the lease over: entries go again.
    tracker.record(beat(200, "held"), 10 * S)
    assert lease_gates(tracker, 10 * S) == []
    assert tracker.down(10 * S) == []


def test_tracker_when_a_process_is_replaced_then_only_the_live_one_is_kept() -> None:
    tracker = HeartbeatTracker(timeout_ns=3 * S, expected=("position",))
    tracker.record(beat(100, "held"), 0)
    tracker.record(beat(300, "held"), 5 * S)  # a restart: the old process silent for 5 s

    assert list(tracker._processes["position"]) == [(300, 300 * S)]
    assert tracker.view(5 * S)["position"].pid == 300

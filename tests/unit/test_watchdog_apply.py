"""The watchdog's one fold of `evt.alert.>` (`alerts.apply`), property-based: for random histories
the alerts open at the sinks after live handling equal those after the recovery of `WatchdogMemory`,
from scratch (the whole CONTROL log) and from a snapshot (through its codec) plus the tail.

Histories are sensible by construction and run through the real pieces with an in-memory bus:
components heartbeat or fall silent and the hot state changes, the evaluator runs and
`handlers.apply_evaluation` publishes its decisions (component status, alerts, health, level) onto the
CONTROL log; other services raise and resolve their own alerts, with severities going up and down,
duplicates and resolutions of alerts that are not open. The live alerts consumer sees the
`evt.alert.>` messages of that log as the service's consumer would, snapshots are taken by the
service's own policy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.bus import Delivery
from libs.clock import ManualClock
from libs.heartbeat import HeartbeatTracker
from libs.logging import get_logger
from libs.runtime.service import ServiceContext
from libs.service_snapshots import Loaded
from libs.settings import Settings
from proto import subjects
from proto.enums import AlertSeverity, ComponentState, HotStateStatus
from proto.envelope import Message
from proto.messages import AlertRaised, AlertResolved, Heartbeat
from services.watchdog import handlers, snapshot
from services.watchdog.alerts import AlertNotice
from services.watchdog.evaluator import WatchdogEvaluator
from services.watchdog.observations import SymbolObservation
from services.watchdog.observer import Observer
from services.watchdog.recovery import WatchdogMemory
from services.watchdog.verification import ProjectionsVerifier

S = 1_000_000_000
COMPONENTS = ("market-data", "state-builder", "risk", "position", "gateway", "strategy-imbalance")
ALERT_KEYS = ("venue-ban", "dlq-growth", "snapshot-corrupt.risk", "projections-diverged")

steps = st.one_of(
    st.tuples(st.just("heartbeats"), st.frozensets(st.sampled_from(COMPONENTS)), st.integers(1, 12)),
    st.tuples(st.just("hot_state"), st.sampled_from(list(HotStateStatus))),
    st.tuples(
        st.just("raise"),
        st.sampled_from(ALERT_KEYS),
        st.sampled_from(list(AlertSeverity)),
        st.sampled_from(("risk", "market-data")),
    ),
    st.tuples(st.just("resolve"), st.sampled_from(ALERT_KEYS), st.sampled_from(("", "cleared"))),
)


class Kv:
    async def create(self, key: str, value: bytes) -> int:
        return 1

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        return 1


class ControlBus:
    """What the watchdog publishes, appended to one CONTROL log (sequence n is `log[n - 1]`)."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Message]] = []

    async def publish(self, subject: str, message: Message) -> int:
        self.log.append((subject, message))
        return len(self.log)

    async def kv_put(self, key: str, value: bytes) -> int:
        return 1

    async def kv_get(self, key: str) -> None:
        return None

    async def kv(self) -> Kv:
        return Kv()


class ControlLog:
    """CONTROL as recovery reads it: `evt.alert.>` only, up to what the alerts consumer processed."""

    def __init__(self, log: list[tuple[str, Message]], state: snapshot.WatchdogSnapshot | None) -> None:
        self.log = log
        self.state = state

    async def load_snapshot(self) -> Loaded[snapshot.WatchdogSnapshot]:
        return Loaded(state=self.state, stream_seq=None if self.state is None else self.state.control_seq)

    async def bounds(self) -> tuple[int, int]:
        return (1, len(self.log))

    async def processed_through(self) -> int | None:
        return len(self.log)

    async def replay(self, start_seq: int, end_seq: int, apply: Callable[[Message, int], None]) -> int:
        applied = 0
        for seq in range(start_seq, end_seq + 1):
            subject, message = self.log[seq - 1]
            if subject.startswith("evt.alert."):
                apply(message, seq)
                applied += 1
        return applied


class Keeper:
    """Collects the snapshots the watchdog's policy takes."""

    def __init__(self) -> None:
        self.saved: list[snapshot.WatchdogSnapshot] = []

    def submit(self, stream_seq: int, state: snapshot.WatchdogSnapshot) -> None:
        self.saved.append(state)


class Watchdog:
    """The watchdog's stateful pieces on an in-memory bus, wired as `main.setup` wires them."""

    def __init__(self, clock: ManualClock, bus: ControlBus, every_events: int) -> None:
        self.ctx = ServiceContext(
            component=subjects.WATCHDOG,
            settings=Settings(snapshot_interval_s=3600.0, snapshot_every_events=every_events),
            log=get_logger("test"),
            bus=bus,  # type: ignore[arg-type]
        )
        self.tracker = HeartbeatTracker(timeout_ns=3 * S, expected=COMPONENTS)
        self.evaluator = WatchdogEvaluator(clock, grace_ns=3 * S)
        self.dispatcher = handlers.AlertDispatcher(self.ctx, [])
        observer = Observer(self.ctx, clock)
        verifier = ProjectionsVerifier(self.ctx, self.dispatcher.router)
        self.keeper = Keeper()
        self.memory = WatchdogMemory(
            self.ctx,
            self.evaluator,
            self.dispatcher,
            observer,
            verifier,
            self.keeper,  # type: ignore[arg-type]
            clock,
        )
        self.dispatcher.on_applied = self.memory.alert_applied

    def open_alerts(self) -> dict[str, AlertNotice]:
        return dict(self.dispatcher.router.open)


async def run_live(history: list[tuple[Any, ...]], every_events: int, cut: int) -> tuple[Any, ...]:
    clock = ManualClock(1_700_000_000 * S)
    bus = ControlBus()
    live = Watchdog(clock, bus, every_events)
    consumed = 0
    hot_state = HotStateStatus.VALID
    cut_snapshot = live.memory.capture()

    async def consume() -> None:
        nonlocal consumed
        while consumed < len(bus.log):
            subject, message = bus.log[consumed]
            consumed += 1
            if subject.startswith("evt.alert."):
                await live.dispatcher.handle(message, Delivery(subject, consumed, 1, {}))

    for index, step in enumerate(history):
        match step:
            case ("heartbeats", beating, seconds):
                for component in sorted(beating):
                    beat = Heartbeat(component=component, pid=1, state=ComponentState.READY, started_ns=0)
                    live.tracker.record(beat, clock.now)
                clock.advance(seconds)
                evaluation = live.evaluator.evaluate(
                    live.tracker.view(clock.now), symbols=[SymbolObservation("BTCUSDT", hot_state, 0)]
                )
                await handlers.apply_evaluation(live.ctx, evaluation)
                live.memory.evaluated()
            case ("hot_state", status):
                hot_state = status
            case ("raise", key, severity, component):
                alert = AlertRaised(key=key, severity=severity, component=component, title=f"{key} {severity}")
                await bus.publish(subjects.EVT_ALERT_RAISED, alert)
            case ("resolve", key, reason):
                await bus.publish(subjects.EVT_ALERT_RESOLVED, AlertResolved(key=key, component="risk", reason=reason))
        await consume()
        if index + 1 == cut:
            cut_snapshot = live.memory.capture()
    return clock, bus, live, [cut_snapshot, *live.keeper.saved]


async def recovered(
    clock: ManualClock, bus: ControlBus, state: snapshot.WatchdogSnapshot | None
) -> dict[str, AlertNotice]:
    restarted = Watchdog(clock, bus, every_events=2000)
    if state is not None:
        state = snapshot.decode_snapshot(snapshot.encode_snapshot(state))
    report = await restarted.memory.recover(ControlLog(bus.log, state))  # type: ignore[arg-type]
    assert report.mode == ("full-replay" if state is None else "snapshot")
    assert report.live_from == len(bus.log) + 1
    return restarted.open_alerts()


async def live_then_recovered(
    history: list[tuple[Any, ...]], every_events: int, cut: int, pick: int
) -> tuple[dict[str, AlertNotice], ...]:
    clock, bus, live, snapshots = await run_live(history, every_events, cut)
    from_scratch = await recovered(clock, bus, None)
    from_snapshot = await recovered(clock, bus, snapshots[pick % len(snapshots)])
    return live.open_alerts(), from_scratch, from_snapshot


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=st.lists(steps, min_size=1, max_size=50),
    every_events=st.integers(1, 8),
    cut_at=st.floats(0, 1),
    pick=st.integers(0, 100),
)
def test_apply_when_random_history_then_open_alerts_live_equal_recovered_from_scratch_and_from_snapshot(
    history: list[tuple[Any, ...]], every_events: int, cut_at: float, pick: int
) -> None:
    cut = int(cut_at * len(history))
    live, from_scratch, from_snapshot = asyncio.run(live_then_recovered(history, every_events, cut, pick))
    assert from_scratch == live
    assert from_snapshot == live


def test_apply_when_component_silent_then_alert_open_after_recovery_and_closed_after_it_returns() -> None:
    """A plain case the random histories cover only by chance: the evaluator's own alerts survive."""
    everyone = frozenset(COMPONENTS)
    silent_risk = everyone - {"risk"}
    history: list[tuple[Any, ...]] = [("heartbeats", everyone, 1), ("heartbeats", silent_risk, 4)]
    live, from_scratch, from_snapshot = asyncio.run(live_then_recovered(history, 1, 1, 1))
    assert "component_down:risk" in live
    assert from_scratch == live == from_snapshot
    history.append(("heartbeats", everyone, 1))
    live, from_scratch, from_snapshot = asyncio.run(live_then_recovered(history, 1, 2, 1))
    assert "component_down:risk" not in live
    assert from_scratch == live == from_snapshot

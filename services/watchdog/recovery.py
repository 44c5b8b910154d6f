"""The watchdog's memory across restarts (SPEC §8, FM-C1): recovery at start from the latest valid
snapshot plus the alerts on CONTROL after it, and the snapshots taken while running (on the
`SnapshotPolicy`, counting handled alerts and evaluations).
"""

from __future__ import annotations

from typing import Any

from libs.clock import Clock
from libs.runtime.service import ServiceContext
from libs.service_snapshots import RecoveryReport, SnapshotKeeper, StreamLog
from libs.snapshot import SnapshotPolicy
from proto import subjects
from proto.enums import AlertSeverity
from proto.envelope import Message
from proto.messages import AlertRaised
from services.watchdog import alerts, handlers, snapshot
from services.watchdog.evaluator import WatchdogEvaluator
from services.watchdog.observer import Observer
from services.watchdog.verification import ProjectionsVerifier


class WatchdogMemory:
    """The watchdog's snapshot (SPEC §8): recovery at start and captures while running.

    Args:
        ctx: the service context.
        evaluator: rule timers and open alerts to restore and capture.
        dispatcher: its router holds the sinks' open alerts (rebuilt from CONTROL `evt.alert.>`).
        observer: its latency baseline survives a restart.
        verifier: its last projections verification survives a restart.
        keeper: the snapshot store.
        clock: wall clock (ns): the snapshot policy's interval and each snapshot's time.
    """

    def __init__(
        self,
        ctx: ServiceContext,
        evaluator: WatchdogEvaluator,
        dispatcher: handlers.AlertDispatcher,
        observer: Observer,
        verifier: ProjectionsVerifier,
        keeper: SnapshotKeeper[snapshot.WatchdogSnapshot],
        clock: Clock,
    ) -> None:
        self._ctx = ctx
        self._evaluator = evaluator
        self._dispatcher = dispatcher
        self._observer = observer
        self._verifier = verifier
        self._keeper = keeper
        self._clock = clock
        self._policy = SnapshotPolicy(
            clock=clock,
            interval_ns=int(ctx.settings.snapshot_interval_s * 1e9),
            every_events=ctx.settings.snapshot_every_events,
        )
        self.control_seq = 0
        """CONTROL sequence the open alerts reflect (replay, then the live alerts consumer)."""
        self.consumer_created = False

    def details(self) -> dict[str, Any]:
        return {
            "control_seq": self.control_seq,
            "open_alerts": len(self._dispatcher.router.open),
            "open_keys": sorted(self._dispatcher.router.open)[:50],
            "delivered": [notice.key for notice in self._dispatcher.delivered[-20:]],
            "last_verification": self._verifier.last_verification,
        }

    async def recover(self, control: StreamLog[snapshot.WatchdogSnapshot]) -> RecoveryReport:
        """Latest valid snapshot, then the alerts after it up to what the alerts consumer acknowledged.

        Without a snapshot (none, corrupt, Postgres down) every alert on the CONTROL stream is
        replayed: the log is the source of truth; rule timers then start over.
        """
        log = self._ctx.log
        loaded = await control.load_snapshot()
        if loaded.corrupt:
            await handlers.publish_alert(
                self._ctx,
                AlertRaised(
                    key=f"snapshot-corrupt.{subjects.WATCHDOG}",
                    severity=AlertSeverity.P1,
                    component=subjects.WATCHDOG,
                    title="corrupt watchdog snapshot skipped (FM-C3); recovered from an older one or a full replay",
                    details={"snapshots": list(loaded.corrupt[:10])},
                ),
            )
        if not loaded.available:
            log.warning("snapshot_store_unavailable_at_start", action_taken="full replay of the alerts on CONTROL")
        first, last = await control.bounds()
        processed = await control.processed_through()
        self.consumer_created = processed is None
        end = last if processed is None else min(processed, last)
        state = loaded.state
        mode, start = "full-replay", max(first, 1)
        if state is not None and first - 1 <= state.control_seq <= last:
            self._evaluator.restore_state(state.evaluator)
            self._dispatcher.router.open = {notice.key: notice for notice in state.open_alerts}
            if state.latency_baseline_ms is not None:
                self._observer.latency.baseline_ms = state.latency_baseline_ms
            self._verifier.last_verification = state.last_verification
            mode, start = "snapshot", state.control_seq + 1
        elif state is not None:
            log.warning(
                "recovery_snapshot_outside_stream",
                snapshot_seq=state.control_seq,
                stream_first_seq=first,
                stream_last_seq=last,
                action_taken="full replay",
            )

        def apply(message: Message, stream_seq: int) -> None:
            alerts.apply(self._dispatcher.router, message)  # rebuild only: these were delivered before

        replayed = await control.replay(start, end, apply) if last and end >= start else 0
        self.control_seq = end
        report = RecoveryReport(
            mode=mode,
            snapshot_seq=state.control_seq if mode == "snapshot" and state is not None else None,
            replayed=replayed,
            live_from=end + 1,
            corrupt_snapshots=len(loaded.corrupt),
            snapshot_store="available" if loaded.available else "unavailable",
        )
        log.info(
            "recovery_replayed",
            **report.as_dict(),
            open_alerts=sorted(self._dispatcher.router.open),
            consumer_processed_through=processed,
        )
        return report

    def capture(self) -> snapshot.WatchdogSnapshot:
        return snapshot.WatchdogSnapshot(
            control_seq=self.control_seq,
            taken_ns=self._clock(),
            evaluator=self._evaluator.export_state(),
            open_alerts=list(self._dispatcher.router.open.values()),
            latency_baseline_ms=self._observer.latency.baseline_ms,
            last_verification=self._verifier.last_verification,
        )

    def _record(self) -> None:
        if self._policy.record():
            self._policy.taken()
            self._keeper.submit(self.control_seq, self.capture())

    def alert_applied(self, stream_seq: int) -> None:
        """The alerts consumer handled CONTROL message `stream_seq`."""
        self.control_seq = max(self.control_seq, stream_seq)
        self._record()

    def evaluated(self) -> None:
        """One evaluation ran (rule timers moved): counts towards the next snapshot."""
        self._record()

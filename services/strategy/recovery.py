"""Recovery of a strategy instance at start (SPEC §8): its latest valid snapshot, then the
MARKET_DATA tail after it, applied through the same `state.apply` as live inputs.

The state machine part of the snapshot is used by `StrategyRunner.start` only where KV agrees (KV
is the authority). Without a snapshot (none, corrupt, Postgres down) the market memory starts
empty, as after a data gap (FM-N1): 6 h of market data are not worth replaying.
"""

from __future__ import annotations

from typing import Any, Protocol

from libs.clock import Clock
from libs.logging import Logger
from libs.service_snapshots import RecoveryReport, StreamLog
from proto import subjects
from proto.enums import AlertSeverity
from proto.envelope import Message

from . import snapshot as snap
from .config import InstanceConfig
from .signals import IntentPublisher
from .state import Fact, Replayed, RunnerState, Sequenced, SnapshotLoaded, is_market_input


class Recovering(Protocol):
    """What recovery needs of the runner (`runner.StrategyRunner`): its state, `apply`, where to report."""

    instance: InstanceConfig
    state: RunnerState
    publisher: IntentPublisher
    snapshots: Any
    log: Logger
    clock: Clock
    max_replay: int

    @property
    def name(self) -> str: ...

    def apply(self, fact: Fact) -> None: ...


async def recover(
    runner: Recovering, log: StreamLog[snap.StrategySnapshot]
) -> tuple[RecoveryReport, snap.StrategySnapshot | None]:
    """Latest valid snapshot of the instance, then the MARKET_DATA tail after it.

    Returns:
        How the state was rebuilt, and the snapshot used (None: none of this instance).
    """
    name = runner.name
    loaded = await log.load_snapshot()
    if loaded.corrupt:
        await runner.publisher.alert(
            f"snapshot-corrupt.{subjects.strategy_component(name)}",
            AlertSeverity.P1,
            f"corrupt snapshot of strategy {name} skipped (FM-C3); an older one or empty market memory used",
            snapshots=list(loaded.corrupt[:10]),
        )
    if runner.snapshots is not None and not loaded.available:
        runner.log.warning("snapshot_store_unavailable_at_start", strategy=name, action_taken="no replay")
    first, last = await log.bounds()
    state = loaded.state
    if state is not None and (state.name != name or state.kind != runner.instance.kind):
        runner.log.warning(
            "snapshot_of_other_kind", strategy=name, kind=state.kind, action_taken="ignored: fresh start"
        )
        state = None
    inputs = 0
    mode = "fresh"
    if state is not None:
        mode = "snapshot"
        tail = last - state.md_seq
        if state.md_seq > last or state.md_seq + 1 < first or tail > runner.max_replay:
            runner.apply(SnapshotLoaded(state, market_cleared_ns=runner.clock()))
            runner.log.warning(
                "recovery_market_tail_unusable",
                strategy=name,
                snapshot_seq=state.md_seq,
                stream_first_seq=first,
                stream_last_seq=last,
                max_replay=runner.max_replay,
                action_taken="market memory cleared (data gap, FM-N1); live data from now on",
            )
        else:
            runner.apply(SnapshotLoaded(state))

            def replay(message: Message, stream_seq: int) -> None:
                nonlocal inputs
                inputs += is_market_input(runner.state, message)
                try:
                    runner.apply(Replayed(message, stream_seq))
                except Exception as exc:  # noqa: BLE001 - strategy code failing on old data is not a crash of this start
                    runner.log.warning(
                        "replay_input_failed",
                        strategy=name,
                        stream_seq=stream_seq,
                        error=f"{type(exc).__name__}: {exc}"[:300],
                        action_taken="skipped",
                    )

            await log.replay(state.md_seq + 1, last, replay)
    runner.apply(Sequenced(last))  # live data from after the stream's end
    report = RecoveryReport(
        mode=mode,
        snapshot_seq=state.md_seq if state is not None else None,
        replayed=inputs,
        live_from=runner.state.md_seq + 1,
        corrupt_snapshots=len(loaded.corrupt),
        snapshot_store="available" if loaded.available else "unavailable",
    )
    runner.log.info("recovery_replayed", strategy=name, **report.as_dict())
    return report, state

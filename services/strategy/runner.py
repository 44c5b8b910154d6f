"""A strategy instance's runner: its life cycle (start, clean stop), its lease (SPEC §8) and the
isolation of its crashes (FM-C2). It owns the instance's `RunnerState` and changes it only through
`state.apply`.

Every fact goes through `commit`/`guarded`: apply it, publish the intents it left (transitions,
signals), then apply what was published. The strategy's code runs inside one guard: an exception
is a *crash*. A crash is recorded (stack trace, the input, state, positions and active events →
`StrategyCrashed` and an alert), counted in the persisted crash history, and the strategy is
rebuilt from its config (setups cleared) through DISABLED back to SCANNING — or to FAILED after
more than 3 crashes in 10 minutes. A process that died without a clean stop (kill -9) is counted
the same way when it starts again. One strategy instance runs per process, so nothing here can
affect another one.

Single writer (SPEC §8): with a lease, the runner is *active* only while it holds lease
`strategy.<name>`. A standby instance (same name, lease held elsewhere) runs no strategy code and
writes nothing: no state, no crash history, no signals. It restores the instance from KV when it
takes the lease over. Every publication re-checks the lease against the KV first
(`Lease.ensure_held`), so an instance that lost it (paused, partitioned) stops at once.
"""

from __future__ import annotations

import asyncio
import os
import traceback
from collections.abc import Callable

from libs.bus import Bus
from libs.clock import Clock
from libs.lease import Lease, LeaseLost
from libs.logging import Logger
from libs.service_snapshots import RecoveryReport, SnapshotKeeper
from libs.snapshot import SnapshotPolicy
from proto.enums import AlertSeverity
from proto.kv import StrategyCrashesValue
from proto.messages import StrategyCrashed

from . import adapters, recovery
from . import snapshot as snap
from .config import InstanceConfig
from .domain import Action, Signal, St, Strategy, Transition, crash_fails, crashes_in_window
from .signals import IntentPublisher
from .state import (
    Crashed,
    CrashHistoryLoaded,
    Disabled,
    Enabled,
    Fact,
    Failed,
    PositionLoaded,
    PositionRechecked,
    Reset,
    Resumed,
    RunnerState,
    SignalPublished,
    Stopped,
    apply,
    crash_window,
)

STACK_LIMIT = 8000
INPUT_LIMIT = 1000


class StrategyRunner:
    """Runs one strategy instance: facts in, transitions and signals out, crashes contained.

    Args:
        bus: the connected bus.
        log: the service's logger.
        instance: the instance's configuration.
        venue: the venue whose market data it follows.
        clock: wall clock (ns).
        symbols: symbols whose positions are loaded at start (with the instance's own).
        lease: the single-writer lease (None: always active, for tests and tools).
        snapshots: the instance's snapshots (None: no snapshots).
        policy: when to take a snapshot.
        max_replay: longest MARKET_DATA tail replayed after a snapshot.
        order_venues: venues the desk's positions can be on (default: `venue`).
        journal: keep every applied fact in `facts` (replay checks).
    """

    def __init__(
        self,
        bus: Bus,
        log: Logger,
        instance: InstanceConfig,
        venue: str,
        clock: Clock,
        *,
        symbols: tuple[str, ...] = (),
        lease: Lease | None = None,
        snapshots: SnapshotKeeper[snap.StrategySnapshot] | None = None,
        policy: SnapshotPolicy | None = None,
        max_replay: int = 20_000,
        order_venues: tuple[str, ...] = (),
        journal: bool = False,
    ) -> None:
        self.bus = bus
        self.log = log
        self.instance = instance
        self.state = RunnerState.fresh(instance, venue, order_venues)
        self.venue = venue
        self.clock = clock
        self.symbols = symbols
        # Unique per process (a pid alone repeats: pid 1 in every container).
        self.process_token = f"{os.getpid()}-{clock()}"
        self.publisher = IntentPublisher(bus, log, instance.name, instance.kind, venue)
        self.lock = asyncio.Lock()
        self.lease = lease
        # Without a lease (tests, tools) the runner is always active; with one, only while it holds it.
        self.active = lease is None
        self.keep_task: asyncio.Task[None] | None = None
        self.snapshots = snapshots
        self.policy = policy
        self.max_replay = max_replay
        self.recovery: RecoveryReport | None = None
        self.facts: list[Fact] | None = [] if journal else None

    @property
    def name(self) -> str:
        return self.instance.name

    @property
    def strategy(self) -> Strategy:
        """The strategy object (read it; change it only through facts)."""
        return self.state.strategy

    def apply(self, fact: Fact) -> None:
        """Apply one fact to the state (and keep it in the journal when there is one)."""
        if self.facts is not None:
            self.facts.append(fact)
        apply(self.state, fact)

    # ------------------------------------------------------------------ lease (SPEC §8)

    async def on_lease_acquired(self, token: int) -> None:
        """We hold `strategy.<name>`: restore the instance from KV and start running it."""
        async with self.lock:
            self.apply(Reset())  # whatever we had is stale: KV is the truth
        self.log.info("strategy_lease_acquired", strategy=self.name, token=token, action_taken="active")
        self.active = True  # before start(): its restore writes go through the holder check
        try:
            await self.start()
        except BaseException:
            self.active = False
            raise

    def on_lease_lost(self) -> None:
        """Another instance holds the lease now (or we could not renew it): stop writing at once."""
        if self.active:
            self.log.warning("strategy_lease_lost", strategy=self.name, action_taken="standby: no signals")
        self.active = False

    async def still_holder(self) -> bool:
        """Check the lease against the KV right before a write; False (and standby) when lost."""
        if self.lease is None:
            return True
        if not self.active:
            return False
        try:
            await self.lease.ensure_held()
        except LeaseLost as exc:
            self.on_lease_lost()
            self.log.warning("strategy_write_suppressed", strategy=self.name, reason=str(exc))
            return False
        return True

    def details(self) -> dict[str, object]:
        """Heartbeat details."""
        return {
            "state": self.strategy.state.value,
            "kind": self.instance.kind,
            "symbol": self.strategy.symbol,
            "crashes_in_window": len(crashes_in_window(self.state.crash_record.crashes, self.clock())),
            "active_events": len(self.strategy.active_events()),
            "lease": "none" if self.lease is None else ("held" if self.active else "standby"),
            "md_seq": self.state.md_seq,
            "recovery": self.recovery.as_dict() if self.recovery else None,
            "snapshots": self.snapshots.stats() if self.snapshots else None,
        }

    # ------------------------------------------------------------------ effects

    async def commit(self, fact: Fact) -> None:
        """Apply `fact`, persist the crash history if it changed (an operator's enable of a FAILED
        strategy clears it), then publish what it decided. The caller holds `lock`."""
        crash_record = self.state.crash_record
        self.apply(fact)
        if self.state.crash_record != crash_record:
            await adapters.write_crash_record(self.bus, self.name, self.state.crash_record)
        await self.execute(self.state.intents)

    async def execute(self, actions: list[Action]) -> None:
        """Publish transitions (persisted first) and signals, in order; apply each published signal."""
        for change in self.strategy.event_changes():  # they happened before the actions they led to
            self.log.info("liquidation_event_changed", strategy=self.name, **change)
        for action in actions:
            if not await self.still_holder():
                return  # a standby must not write; the holder's own run produces these actions
            match action:
                case Transition():
                    await self.publisher.transition(action, self.strategy.symbol, self.clock())
                    self.checkpoint()  # the snapshot's state machine follows KV's
                case Signal():
                    # Under the lock: the fill's position change waits until the entry's id is applied.
                    self.apply(SignalPublished(await self.publisher.signal(action)))

    def checkpoint(self) -> None:
        """Capture the instance now (covering `md_seq`) and save it in the background."""
        if self.snapshots is None or not self.active:
            return
        if self.policy is not None:
            self.policy.taken()
        md_seq = self.state.md_seq
        self.snapshots.submit(md_seq, snap.capture(self.strategy, self.instance.kind, md_seq, self.clock()))

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Restore state and crash history; count a previous process that died as a crash.

        DISABLED and FAILED persist across restarts; any other state restarts through DISABLED
        (setups cleared) into SCANNING.
        """
        now = self.clock()
        record = await adapters.read_strategy_state(self.bus, self.name)
        try:
            self.apply(CrashHistoryLoaded(await adapters.read_crash_record(self.bus, self.name)))
        except adapters.UnreadableValue as exc:
            # Fail closed: an unreadable history must not un-FAIL a strategy.
            self.log.error("crash_history_unreadable", strategy=self.name, error=str(exc)[:200])
            self.apply(CrashHistoryLoaded(StrategyCrashesValue(crashes=[now] * 4)))
        self.recovery, restored = await recovery.recover(self, snap.market_log(self.bus, self.snapshots))
        await self._load_positions()
        previous_process = self.state.crash_record.running
        if previous_process == self.process_token:
            previous_process = None  # our own marker: we lost the lease and re-took it, no process died
        persisted = record.state if record is not None else None  # None: the very first start
        symbol = record.symbol if record is not None else None
        stays_off = persisted in (St.DISABLED, St.FAILED)
        over_limit = crash_fails(len(crashes_in_window(self.state.crash_record.crashes, now)))
        carries_on = (
            previous_process is None
            and not (over_limit and persisted != St.FAILED)
            and not (persisted is not None and stays_off)
            and restored is not None
            and restored.state == persisted
            and restored.symbol == symbol
        )
        self.apply(Resumed(persisted, symbol, self.process_token, restored if carries_on else None))
        await adapters.write_crash_record(self.bus, self.name, self.state.crash_record)
        async with self.lock:
            if previous_process is not None:
                await self.crashed(
                    now,
                    error_type="ProcessDied",
                    error=f"process {previous_process} (pid-start) ended without a clean stop",
                    stack_trace="",
                    input_description="process-restart",
                    resume=not stays_off,
                    keep_market=True,  # restored from the snapshot and the log, not from the dead process
                )
                return
            if over_limit and persisted != St.FAILED:
                await self.commit(Failed(now, "crash history over the limit"))
                return
            if persisted is not None and stays_off:
                self.log.info("strategy_restored", strategy=self.name, state=persisted.value)
                return
            if carries_on and persisted is not None:
                # A clean restart whose snapshot agrees with KV: carry on where it stopped (SPEC §8).
                self.log.info(
                    "strategy_restored",
                    strategy=self.name,
                    state=persisted.value,
                    symbol=self.strategy.symbol,
                    active_events=len(self.strategy.active_events()),
                    source="snapshot",
                )
                await self.commit(PositionRechecked(now))
                return
            await self.commit(Disabled(now, "restart: setups cleared"))
            await self.commit(Enabled(now, "started"))

    async def stop(self) -> None:
        """Clean stop: clear the running marker (so the next start is not counted as a crash) and
        release the lease (so a standby takes over at once). A standby touches neither."""
        if self.keep_task is not None:
            self.keep_task.cancel()
            await asyncio.gather(self.keep_task, return_exceptions=True)
        if not self.active:
            self.log.info("strategy_stopped_cleanly", strategy=self.name, role="standby")
            return
        self.active = False
        self.apply(Stopped())
        await adapters.write_crash_record(self.bus, self.name, self.state.crash_record)
        if self.lease is not None:
            await self.lease.release()
        self.log.info("strategy_stopped_cleanly", strategy=self.name)

    async def _load_positions(self) -> None:
        for symbol in sorted({*self.symbols, *self.instance.config.symbols}):
            for venue in self.state.order_venues:
                try:
                    last = await adapters.read_last_position(self.bus, venue, symbol)
                except Exception as exc:  # noqa: BLE001 - unknown stays unknown; new position events fill it in
                    self.log.warning(
                        "position_load_failed", venue=venue, symbol=symbol, error=f"{type(exc).__name__}: {exc}"
                    )
                    continue
                if last is not None:
                    self.apply(PositionLoaded(last))

    # ------------------------------------------------------------------ crashes (FM-C2)

    async def crashed(
        self,
        now: int,
        *,
        error_type: str,
        error: str,
        stack_trace: str,
        input_description: str,
        resume: bool | None = None,
        keep_market: bool = False,
    ) -> None:
        """Record a crash and restart the strategy through DISABLED (into SCANNING, or FAILED).

        `resume` says whether to go back to SCANNING (default: unless it was DISABLED or FAILED).
        `keep_market` keeps the kind's market memory (live liquidation events, averages): for a
        process that died, whose successor rebuilt it from the snapshot and the log; setups are
        cleared either way (FM-C2).
        """
        old = self.strategy
        try:
            active_events = old.active_events()
        except Exception as exc:  # noqa: BLE001 - the crashed object may be inconsistent; record what we can
            active_events = [{"error": f"{type(exc).__name__}: {exc}"}]
        window = crash_window(self.state, now)
        reason = f"crash: {error_type}: {error}"[:300]
        self.apply(Crashed(now, reason, self.process_token, resume=resume, keep_market=keep_market))
        fresh = self.strategy
        failed = crash_fails(len(window))
        event = StrategyCrashed(
            strategy=self.name,
            error_type=error_type,
            error=error[:INPUT_LIMIT],
            stack_trace=stack_trace[-STACK_LIMIT:],
            input=input_description[:INPUT_LIMIT],
            state=old.state,
            symbol=old.symbol,
            positions={symbol: quantity for symbol, quantity in old.positions.items() if quantity != 0},
            active_events=active_events,
            crashes_in_window=len(window),
            restarted_into=fresh.state,
            surrendered_symbols=sorted(fresh.surrendered),
        )
        self.log.error(
            "strategy_crashed",
            strategy=self.name,
            error_type=error_type,
            error=error[:300],
            stack_trace=stack_trace[-STACK_LIMIT:],
            input=input_description[:INPUT_LIMIT],
            state=old.state.value,
            symbol=old.symbol,
            active_events=active_events,
            crashes_in_window=len(window),
            action_taken=f"restarted into {fresh.state.value}",
        )
        await self.publisher.crash(event, self.state.crash_record)
        await self.execute(self.state.intents)
        if failed:
            await self.publisher.alert(
                f"strategy-failed:{self.name}",
                AlertSeverity.P1,
                f"strategy {self.name} FAILED after {len(window)} crashes in 10 min; an operator must re-enable it",
                error=f"{error_type}: {error}"[:300],
            )
        else:
            await self.publisher.alert(
                f"strategy-crashed:{self.name}",
                AlertSeverity.P2,
                f"strategy {self.name} crashed ({error_type}) and restarted into {fresh.state.value}",
                error=error[:300],
                crashes_in_window=len(window),
            )

    async def guarded(self, input_description: Callable[[], str], fact: Fact) -> None:
        """Commit an input of the strategy's code; an exception there is a crash of this strategy,
        never of the process."""
        async with self.lock:
            now = self.clock()
            try:
                self.apply(fact)
            except Exception as exc:  # noqa: BLE001 - FM-C2: any bug in strategy code is a crash, handled
                await self.crashed(
                    now,
                    error_type=type(exc).__name__,
                    error=str(exc),
                    stack_trace="".join(traceback.format_exception(exc)),
                    input_description=input_description(),
                )
                return
            await self.execute(self.state.intents)

    async def locked(self, fact: Fact) -> None:
        """Commit a fact under the lock."""
        async with self.lock:
            await self.commit(fact)

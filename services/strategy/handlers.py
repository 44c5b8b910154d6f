"""strategy's handlers: feed market data and positions to the pure strategy, publish its actions,
and isolate its crashes (FM-C2).

Every input handler runs the strategy's code inside one guard: an exception is a *crash*. A crash
is recorded (stack trace, the input, state, positions and active events → `StrategyCrashed` and an
alert), counted in the persisted crash history, and the strategy is rebuilt from its config
(setups cleared) through DISABLED back to SCANNING — or to FAILED after more than 3 crashes in 10
minutes. A process that died without a clean stop (kill -9) is counted the same way when it
starts again. One strategy instance runs per process, so nothing here can affect another one.

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
from decimal import Decimal
from typing import Any

import msgspec
from nats.aio.msg import Msg

from libs.bus import Bus, Delivery
from libs.ids import client_order_id_for
from libs.lease import Lease, LeaseLost
from libs.logging import Logger
from libs.service_snapshots import RecoveryReport, SnapshotKeeper, StreamLog
from libs.snapshot import SnapshotPolicy
from proto import subjects
from proto.codec import decode
from proto.enums import AlertSeverity, DegradationLevel, OrderType, StrategyState
from proto.envelope import Message
from proto.messages import (
    AlertRaised,
    BookResyncStarted,
    DisableStrategy,
    EnableStrategy,
    LinkStateChanged,
    Liquidation,
    OpenInterest,
    PositionChanged,
    SignalGenerated,
    StrategyCrashed,
    StrategyStateChanged,
    Trade,
)

from . import adapters
from . import snapshot as snap
from .config import InstanceConfig
from .domain import (
    ENGAGED_STATES,
    Action,
    MarketView,
    Signal,
    St,
    Strategy,
    Transition,
    crash_fails,
    crashes_in_window,
)

Clock = Callable[[], int]
INPUT_SUBJECTS = ("evt.link.>", "evt.position.>")
"""Core-NATS subjects every strategy follows (link events, positions). Market data comes through the
durable `strategy-<name>-md` (`snapshot.MARKET_SUBJECTS`), whose sequences the snapshots cover."""
MARKET_TYPES = (Trade, Liquidation, OpenInterest, BookResyncStarted)
STACK_LIMIT = 8000
INPUT_LIMIT = 1000


class StandbyError(RuntimeError):
    """A command reached a standby instance: it is nak'ed so the lease holder gets it."""


class StrategyRunner:
    """Runs one strategy instance: inputs in, signals and state transitions out, crashes contained."""

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
    ) -> None:
        self.bus = bus
        self.log = log
        self.instance = instance
        self.strategy: Strategy = instance.build()
        self.venue = venue
        self.order_venues = order_venues or (venue,)
        """Venues the desk's positions can be on (main, and a backup risk may route entries to, FM-N6)."""
        self._venue_positions: dict[tuple[str, str], Decimal] = {}
        self.clock = clock
        self.symbols = symbols
        # Unique per process (a pid alone repeats: pid 1 in every container).
        self.process_token = f"{os.getpid()}-{clock()}"
        self.crash_record = adapters.CrashRecord()
        self._lock = asyncio.Lock()
        self.lease = lease
        # Without a lease (tests, tools) the runner is always active; with one, only while it holds it.
        self.active = lease is None
        self.keep_task: asyncio.Task[None] | None = None
        self.snapshots = snapshots
        self.policy = policy
        self.max_replay = max_replay
        self.md_seq = 0
        """Highest MARKET_DATA sequence reflected in memory (replay or the live consumer)."""
        self.recovery: RecoveryReport | None = None
        self.restored: snap.StrategySnapshot | None = None

    @property
    def name(self) -> str:
        return self.instance.name

    # ------------------------------------------------------------------ lease (SPEC §8)

    async def on_lease_acquired(self, token: int) -> None:
        """We hold `strategy.<name>`: restore the instance from KV and start running it."""
        async with self._lock:
            self.strategy = self.instance.build()  # whatever we had is stale: KV is the truth
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

    async def _still_holder(self) -> bool:
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
            "crashes_in_window": len(crashes_in_window(self.crash_record.crashes, self.clock())),
            "active_events": len(self.strategy.active_events()),
            "lease": "none" if self.lease is None else ("held" if self.active else "standby"),
            "md_seq": self.md_seq,
            "recovery": self.recovery.as_dict() if self.recovery else None,
            "snapshots": self.snapshots.stats() if self.snapshots else None,
        }

    # ------------------------------------------------------------------ effects

    async def execute(self, actions: list[Action]) -> None:
        """Publish transitions (persisted first) and signals, in order."""
        for change in self.strategy.event_changes():  # they happened before the actions they led to
            self.log.info("liquidation_event_changed", strategy=self.name, **change)
        for action in actions:
            if not await self._still_holder():
                return  # a standby must not write; the holder's own run produces these actions
            match action:
                case Transition():
                    record = adapters.StrategyStateRecord(
                        state=action.current,
                        reason=action.reason,
                        symbol=self.strategy.symbol,
                        ts_ns=self.clock(),
                        kind=self.instance.kind,
                    )
                    await adapters.write_strategy_state(self.bus, self.name, record)
                    self.checkpoint()  # the snapshot's state machine follows KV's
                    event = StrategyStateChanged(
                        strategy=self.name, previous=action.previous, current=action.current, reason=action.reason
                    )
                    await self.bus.publish(subjects.evt_strategy_state(self.name), event)
                    self.log.info(
                        "strategy_state_changed",
                        strategy=self.name,
                        previous=action.previous.value,
                        current=action.current.value,
                        reason=action.reason,
                    )
                case Signal():
                    signal = SignalGenerated(
                        strategy=self.name,
                        symbol=action.symbol,
                        side=action.side,
                        order_type=OrderType.MARKET,
                        quantity=action.quantity,
                        reduce_only=action.reduce_only,
                        reason=action.reason,
                        stop_loss=action.stop_loss,
                        take_profit=action.take_profit,
                        confidence=action.confidence,
                    )
                    if not action.reduce_only:
                        # Known before it is out: the fill's position change may come back quickly.
                        self.strategy.entry_order = client_order_id_for(signal.message_id)
                    await self.bus.publish(
                        subjects.evt_signal(self.name, action.symbol), signal, msg_id=signal.message_id
                    )
                    self.log.info(
                        "signal_generated",
                        strategy=self.name,
                        signal_id=signal.message_id,
                        symbol=action.symbol,
                        side=action.side.value,
                        quantity=str(action.quantity),
                        reduce_only=action.reduce_only,
                        stop_loss=str(action.stop_loss) if action.stop_loss is not None else None,
                        take_profit=str(action.take_profit) if action.take_profit is not None else None,
                        reason=action.reason,
                    )

    async def _alert(self, key: str, severity: AlertSeverity, title: str, **details: Any) -> None:
        self.log.warning("alert_raised", key=key, title=title, **details)
        component = subjects.strategy_component(self.name)
        alert = AlertRaised(key=key, severity=severity, component=component, title=title, details=details)
        try:
            await self.bus.publish(subjects.EVT_ALERT_RAISED, alert)
        except Exception as exc:  # noqa: BLE001 - the crash is still recorded and logged; the alert is best effort
            self.log.warning("alert_publish_failed", key=key, error=f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Restore state and crash history; count a previous process that died as a crash.

        DISABLED and FAILED persist across restarts; any other state restarts through DISABLED
        (setups cleared) into SCANNING.
        """
        now = self.clock()
        record = await adapters.read_strategy_state(self.bus, self.name)
        try:
            self.crash_record = await adapters.read_crash_record(self.bus, self.name)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            # Fail closed: an unreadable history must not un-FAIL a strategy.
            self.log.error("crash_history_unreadable", strategy=self.name, error=str(exc)[:200])
            self.crash_record = adapters.CrashRecord(crashes=[now] * 4)
        await self.recover(snap.market_log(self.bus, self.snapshots))
        await self._load_positions()
        previous_process = self.crash_record.running
        if previous_process == self.process_token:
            previous_process = None  # our own marker: we lost the lease and re-took it, no process died
        self.crash_record = msgspec.structs.replace(self.crash_record, running=self.process_token)
        await adapters.write_crash_record(self.bus, self.name, self.crash_record)
        persisted = record.state if record is not None else None  # None: the very first start
        restored = self.restored
        self.strategy.state = persisted or St.DISABLED
        self.strategy.symbol = record.symbol if record is not None else None
        self.strategy.surrendered = dict(self.crash_record.surrendered)
        stays_off = persisted in (St.DISABLED, St.FAILED)
        async with self._lock:
            if previous_process is not None:
                await self._crashed(
                    now,
                    error_type="ProcessDied",
                    error=f"process {previous_process} (pid-start) ended without a clean stop",
                    stack_trace="",
                    input_description="process-restart",
                    resume=not stays_off,
                    keep_market=True,  # restored from the snapshot and the log, not from the dead process
                )
                return
            if crash_fails(len(crashes_in_window(self.crash_record.crashes, now))) and persisted != St.FAILED:
                await self.execute(self.strategy.fail(now, "crash history over the limit"))
                return
            if persisted is not None and stays_off:
                self.log.info("strategy_restored", strategy=self.name, state=persisted.value)
                return
            if restored is not None and restored.state == persisted and restored.symbol == self.strategy.symbol:
                # A clean restart whose snapshot agrees with KV: carry on where it stopped (SPEC §8).
                self.strategy.entry = restored.entry if persisted in ENGAGED_STATES else None
                self.strategy.entry_order = restored.entry_order if persisted in ENGAGED_STATES else None
                self.strategy.state_since_ns = restored.state_since_ns
                self.log.info(
                    "strategy_restored",
                    strategy=self.name,
                    state=persisted.value,
                    symbol=self.strategy.symbol,
                    active_events=len(self.strategy.active_events()),
                    source="snapshot",
                )
                symbol = self.strategy.symbol
                if symbol is not None:  # the position may have moved while the process was down
                    await self.execute(
                        self.strategy.on_position(symbol, self.strategy.positions.get(symbol, Decimal(0)), now)
                    )
                return
            await self.execute(self.strategy.disable(now, "restart: setups cleared"))
            await self.execute(self.strategy.enable(now, "started"))

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
        self.crash_record = msgspec.structs.replace(self.crash_record, running=None)
        await adapters.write_crash_record(self.bus, self.name, self.crash_record)
        if self.lease is not None:
            await self.lease.release()
        self.log.info("strategy_stopped_cleanly", strategy=self.name)

    async def _load_positions(self) -> None:
        for symbol in sorted({*self.symbols, *self.instance.config.symbols}):
            for venue in self.order_venues:
                try:
                    last = await adapters.read_last_position(self.bus, venue, symbol)
                except Exception as exc:  # noqa: BLE001 - unknown stays unknown; new position events fill it in
                    self.log.warning(
                        "position_load_failed", venue=venue, symbol=symbol, error=f"{type(exc).__name__}: {exc}"
                    )
                    continue
                if last is not None:
                    self.strategy.positions[symbol] = self.net_position(last)

    def net_position(self, event: PositionChanged) -> Decimal:
        """The symbol's position over every venue, with this venue's changed (a symbol's position is
        on one venue at a time, risk's routing sees to that; the sum is right either way)."""
        self._venue_positions[(event.venue, event.symbol)] = event.quantity
        return sum((qty for (_, symbol), qty in self._venue_positions.items() if symbol == event.symbol), Decimal(0))

    # ------------------------------------------------------------------ snapshots and recovery (SPEC §8)

    def checkpoint(self) -> None:
        """Capture the instance now (covering `md_seq`) and save it in the background."""
        if self.snapshots is None or not self.active:
            return
        if self.policy is not None:
            self.policy.taken()
        self.snapshots.submit(self.md_seq, snap.capture(self.strategy, self.instance.kind, self.md_seq, self.clock()))

    async def on_market_data(self, message: Message, delivery: Delivery) -> None:
        """Durable `strategy-<name>-md` handler (trades, liquidations, open interest, resyncs)."""
        if delivery.stream_sequence <= self.md_seq:
            return  # already in memory: restored from a snapshot or replayed at start
        await self.handle(message)
        self.md_seq = delivery.stream_sequence
        if self.policy is not None and self.policy.record():
            self.checkpoint()

    def replay_message(self, message: Message, stream_seq: int) -> bool:
        """Apply one replayed MARKET_DATA message to the market memory only; True when it was an input.

        No state transitions and no signals: what the strategy decided about that data was decided
        (and persisted) before; it decides on fresh data from now on.
        """
        self.md_seq = max(self.md_seq, stream_seq)
        if not isinstance(message, MARKET_TYPES) or getattr(message, "venue", self.venue) != self.venue:
            return False
        strategy = self.strategy
        try:
            match message:
                case Trade():
                    strategy.on_trade(
                        message.symbol, message.ts_init_ns, message.price, message.quantity, message.buyer_is_maker
                    )
                case Liquidation():
                    strategy.on_liquidation(
                        message.symbol, message.ts_init_ns, message.side, message.price, message.quantity
                    )
                case OpenInterest():
                    strategy.on_open_interest(message.symbol, message.ts_init_ns, message.open_interest)
                case BookResyncStarted():
                    strategy.clear_events({message.symbol}, message.ts_init_ns)
        except Exception as exc:  # noqa: BLE001 - strategy code failing on old data is not a crash of this start
            self.log.warning(
                "replay_input_failed",
                strategy=self.name,
                stream_seq=stream_seq,
                error=f"{type(exc).__name__}: {exc}"[:300],
                action_taken="skipped",
            )
        return True

    async def recover(self, log: StreamLog[snap.StrategySnapshot]) -> RecoveryReport:
        """Latest valid snapshot of the instance, then the MARKET_DATA tail after it.

        The state machine part of the snapshot is used by `start` only where KV agrees (KV is the
        authority). Without a snapshot (none, corrupt, Postgres down) the market memory starts
        empty, as after a data gap (FM-N1): 6 h of market data are not worth replaying.
        """
        loaded = await log.load_snapshot()
        if loaded.corrupt:
            await self._alert(
                f"snapshot-corrupt.{subjects.strategy_component(self.name)}",
                AlertSeverity.P1,
                f"corrupt snapshot of strategy {self.name} skipped (FM-C3); an older one or empty market memory used",
                snapshots=list(loaded.corrupt[:10]),
            )
        if self.snapshots is not None and not loaded.available:
            self.log.warning("snapshot_store_unavailable_at_start", strategy=self.name, action_taken="no replay")
        first, last = await log.bounds()
        state = loaded.state
        if state is not None and (state.name != self.name or state.kind != self.instance.kind):
            self.log.warning(
                "snapshot_of_other_kind", strategy=self.name, kind=state.kind, action_taken="ignored: fresh start"
            )
            state = None
        self.restored = state
        inputs = 0
        mode = "fresh"
        self.md_seq = last
        if state is not None:
            snap.restore(self.strategy, state)
            mode = "snapshot"
            tail = last - state.md_seq
            if state.md_seq > last or state.md_seq + 1 < first or tail > self.max_replay:
                self.strategy.clear_events(None, self.clock())
                self.log.warning(
                    "recovery_market_tail_unusable",
                    strategy=self.name,
                    snapshot_seq=state.md_seq,
                    stream_first_seq=first,
                    stream_last_seq=last,
                    max_replay=self.max_replay,
                    action_taken="market memory cleared (data gap, FM-N1); live data from now on",
                )
            else:
                self.md_seq = state.md_seq

                def apply(message: Message, stream_seq: int) -> None:
                    nonlocal inputs
                    inputs += self.replay_message(message, stream_seq)

                await log.replay(state.md_seq + 1, last, apply)
                self.md_seq = max(self.md_seq, last)
        self.recovery = RecoveryReport(
            mode=mode,
            snapshot_seq=state.md_seq if state is not None else None,
            replayed=inputs,
            live_from=self.md_seq + 1,
            corrupt_snapshots=len(loaded.corrupt),
            snapshot_store="available" if loaded.available else "unavailable",
        )
        self.log.info("recovery_replayed", strategy=self.name, **self.recovery.as_dict())
        return self.recovery

    # ------------------------------------------------------------------ crashes (FM-C2)

    async def _crashed(
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
        window = crashes_in_window([*self.crash_record.crashes, now], now)
        failed = crash_fails(len(window))
        surrendered = dict(old.surrendered)
        if old.symbol is not None and old.state in ENGAGED_STATES:
            surrendered[old.symbol] = now
        self.crash_record = adapters.CrashRecord(crashes=window, running=self.process_token, surrendered=surrendered)
        fresh = self.instance.build(state=old.state)
        fresh.symbol = old.symbol
        fresh.positions = dict(old.positions)
        fresh.last_price = dict(old.last_price)
        fresh.surrendered = surrendered
        fresh.state_since_ns = old.state_since_ns
        if keep_market:
            snap.restore_market(fresh, snap.market_state(old))
        actions = fresh.disable(now, f"crash: {error_type}: {error}"[:300])
        if failed:
            actions += fresh.fail(now, f"{len(window)} crashes in 10 min")
        elif resume if resume is not None else old.state not in (St.DISABLED, St.FAILED):
            actions += fresh.enable(now, "restarted after a crash")
        self.strategy = fresh
        try:
            active_events = old.active_events()
        except Exception as exc:  # noqa: BLE001 - the crashed object may be inconsistent; record what we can
            active_events = [{"error": f"{type(exc).__name__}: {exc}"}]
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
            surrendered_symbols=sorted(surrendered),
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
        await adapters.write_crash_record(self.bus, self.name, self.crash_record)
        await self.bus.publish(subjects.evt_strategy_crashed(self.name), event)
        await self.execute(actions)
        if failed:
            await self._alert(
                f"strategy-failed:{self.name}",
                AlertSeverity.P1,
                f"strategy {self.name} FAILED after {len(window)} crashes in 10 min; an operator must re-enable it",
                error=f"{error_type}: {error}"[:300],
            )
        else:
            await self._alert(
                f"strategy-crashed:{self.name}",
                AlertSeverity.P2,
                f"strategy {self.name} crashed ({error_type}) and restarted into {fresh.state.value}",
                error=error[:300],
                crashes_in_window=len(window),
            )

    async def _guarded(self, input_description: Callable[[], str], step: Callable[[], list[Action]]) -> None:
        """Run strategy code; an exception is a crash of this strategy, never of the process."""
        async with self._lock:
            now = self.clock()
            try:
                actions = step()
            except Exception as exc:  # noqa: BLE001 - FM-C2: any bug in strategy code is a crash, handled
                await self._crashed(
                    now,
                    error_type=type(exc).__name__,
                    error=str(exc),
                    stack_trace="".join(traceback.format_exception(exc)),
                    input_description=input_description(),
                )
                return
            await self.execute(actions)

    # ------------------------------------------------------------------ inputs

    async def on_market_event(self, msg: Msg) -> None:
        """Core-NATS follower of market data, link/resync events and positions."""
        try:
            message = decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.log.warning("event_rejected", subject=msg.subject, error=str(exc)[:200])
            return
        await self.handle(message)

    async def handle(self, message: Message) -> None:
        """Dispatch one decoded input to the strategy (times are local receive times)."""
        if not self.active:
            return  # standby: the holder runs the strategy
        strategy = self.strategy
        if strategy.state == StrategyState.FAILED:
            # A FAILED strategy runs none of its code; it only keeps the positions it will need when re-enabled.
            if isinstance(message, PositionChanged) and message.venue in self.order_venues:
                strategy.positions[message.symbol] = self.net_position(message)
            return
        now = self.clock()
        if isinstance(message, Trade | Liquidation | OpenInterest):
            # The time market-data stamped it: the same whether handled live or replayed after a
            # restart (snapshot + tail rebuild exactly what a run without restart had).
            now = min(message.ts_init_ns, now)

        def described() -> str:
            return f"{type(message).__name__} {msgspec.json.encode(message)[:INPUT_LIMIT].decode(errors='replace')}"

        match message:
            case Trade():
                await self._guarded(
                    described,
                    lambda: self.strategy.on_trade(
                        message.symbol, now, message.price, message.quantity, message.buyer_is_maker
                    ),
                )
            case Liquidation():
                await self._guarded(
                    described,
                    lambda: self.strategy.on_liquidation(
                        message.symbol, now, message.side, message.price, message.quantity
                    ),
                )
            case OpenInterest():
                await self._guarded(
                    described, lambda: self.strategy.on_open_interest(message.symbol, now, message.open_interest)
                )
            case PositionChanged() if message.venue in self.order_venues:
                net = self.net_position(message)
                await self._guarded(
                    described,
                    lambda: self.strategy.on_position(message.symbol, net, now, message.caused_by_client_order_id),
                )
            case LinkStateChanged() if message.venue == self.venue and message.previous != message.current:
                # Every change, a (re)connection of a restarted market-data included: data had a gap.
                affected = list(message.symbols) or None
                reason = f"link {message.link} {message.current.value}: {message.reason}"[:300]
                await self._guarded(described, lambda: self.strategy.data_reset(affected, now, reason))
            case BookResyncStarted() if message.venue == self.venue:
                reason = f"book resync {message.symbol}: {message.reason}"[:300]
                await self._guarded(described, lambda: self.strategy.data_reset([message.symbol], now, reason))
            case _:
                pass

    async def on_command(self, message: Message, delivery: Delivery) -> None:
        """Durable consumer of `cmd.strategy.<name>.enable|disable`.

        Raises:
            StandbyError: this instance does not hold the lease (the command is redelivered).
        """
        if not self.active:
            raise StandbyError(f"strategy {self.name} is on standby")
        now = self.clock()
        async with self._lock:
            match message:
                case EnableStrategy() if message.strategy == self.name and await self._hard_shutdown():
                    # SPEC §5: the trading services stay stopped until a manual restart (the
                    # gateway refuses such an enable; this holds for one sent on the bus too).
                    self.log.warning(
                        "enable_refused",
                        operator=message.operator,
                        reason="HARD_SHUTDOWN",
                        action_taken=f"stays {self.strategy.state.value}",
                    )
                case EnableStrategy() if message.strategy == self.name:
                    if self.strategy.state == StrategyState.FAILED:
                        # The operator takes responsibility: the crash count starts over.
                        self.crash_record = msgspec.structs.replace(self.crash_record, crashes=[])
                        await adapters.write_crash_record(self.bus, self.name, self.crash_record)
                    await self.execute(self.strategy.enable(now, f"enabled by {message.operator}: {message.reason}"))
                case DisableStrategy() if message.strategy == self.name:
                    await self.execute(self.strategy.disable(now, f"disabled by {message.operator}: {message.reason}"))
                case _:
                    self.log.debug("command_ignored", subject=delivery.subject)

    async def market(self) -> dict[str, MarketView]:
        """The state-builder's view; empty (nothing VALID, so no entries) when it does not answer."""
        try:
            raw = await self.bus.request(subjects.service_query(subjects.STATE_BUILDER, "symbols"), timeout_s=0.4)
            return adapters.market_views(raw)
        except Exception as exc:  # noqa: BLE001 - timeouts, no responders, bad replies: fail closed
            self.log.debug("state_builder_unavailable", error=f"{type(exc).__name__}: {exc}")
            return {}

    async def _hard_shutdown(self) -> bool:
        """Is the system in HARD_SHUTDOWN (KV `degradation_level`)? False when it cannot be read."""
        try:
            entry = await self.bus.kv_get(subjects.KEY_DEGRADATION_LEVEL)
            level = msgspec.json.decode(entry[0]).get("level") if entry is not None else None
        except Exception as exc:  # noqa: BLE001 - bus trouble or a garbled value: risk still denies
            self.log.debug("degradation_level_unreadable", error=f"{type(exc).__name__}: {exc}")
            return False
        return bool(level == DegradationLevel.HARD_SHUTDOWN.value)

    async def tick(self) -> None:
        """One evaluation of the strategy (crashes contained like every other input).

        In HARD_SHUTDOWN the strategy stops (SPEC §5 "stop trading services"): DISABLED, which
        persists across restarts and is left only by an operator's enable.
        """
        if not self.active or self.strategy.state in (StrategyState.DISABLED, StrategyState.FAILED):
            return
        if await self._hard_shutdown():
            async with self._lock:
                await self.execute(
                    self.strategy.disable(self.clock(), "HARD_SHUTDOWN: trading services stop (SPEC §5)")
                )
            self.log.error(
                "strategy_stopped", reason="HARD_SHUTDOWN", action_taken="DISABLED until an operator enables it"
            )
            return
        market = await self.market()
        summary = {
            symbol: (view.hot_state_valid, str(view.best_bid), str(view.best_ask)) for symbol, view in market.items()
        }
        await self._guarded(lambda: f"tick market={summary}", lambda: self.strategy.on_tick(self.clock(), market))

    async def run(self, interval_s: float = 0.5) -> None:
        """Tick forever."""
        while True:
            await asyncio.sleep(interval_s)
            await self.tick()

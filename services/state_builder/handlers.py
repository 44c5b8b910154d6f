"""state-builder effects: market-data messages → `market.apply` → hot state (SPEC FM-D1, §7
validation); hot-state transitions → bus event + KV; resync requests to market-data; checkpoints
and the crash recovery of SPEC FM-C1 (latest valid snapshot + bounded replay of the tail through
the same `market.apply`, then §7 validation before any symbol turns VALID).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from libs.bus import Delivery
from libs.clock import Clock
from libs.logging import Logger
from libs.metrics import ServiceMetrics
from libs.service_snapshots import Loaded, RecoveryReport, snapshot_fits_stream
from libs.snapshot import SnapshotPolicy
from proto import subjects
from proto.codec import encode
from proto.enums import AlertSeverity, ConnectionState, HotStateStatus
from proto.envelope import Message
from proto.kv import encode_value
from proto.messages import (
    AlertRaised,
    BookResyncStarted,
    BookSnapshot,
    DepthDiff,
    HotStateRecord,
    HotStateStatusChanged,
    LinkStateChanged,
)
from proto.replies import ErrorReply, ReplyDecodeError, ResyncReply, ResyncRequest, decode_reply
from services.state_builder import market, queries
from services.state_builder.domain import (
    HotState,
    HotStateTransition,
    OrderBook,
    StateBuilderCheckpoint,
    update_data_ns,
    validate_book,
)
from services.state_builder.market import Change, SymbolState

Publish = Callable[[str, Message], Awaitable[int]]
KvPut = Callable[[str, bytes], Awaitable[int]]
Request = Callable[[str, bytes], Awaitable[bytes]]

MIN_TICK_S = 0.001
"""Shortest wait between two hot-state ticks (a due time already passed is checked at once)."""
RESYNC_REQUEST_INTERVAL_NS = 2_000_000_000
"""At most one self-healing resync request per symbol per 2 s."""


CATCH_UP_SLACK = 200
"""A replayed tail left this short is handed to the live consumer."""


class RecoveryPort(Protocol):
    """What `StateBuilder.recover` needs from the outside world (`libs.service_snapshots.StreamLog`)."""

    async def load_snapshot(self) -> Loaded[StateBuilderCheckpoint]:
        """The newest valid checkpoint (state None: none, or Postgres down) and each corrupt one skipped."""
        ...

    async def bounds(self) -> tuple[int, int]:
        """(first, last) sequence of the MARKET_DATA stream (last 0 when empty)."""
        ...

    async def replay(self, start_seq: int, end_seq: int, apply: Callable[[Message, int], None]) -> int:
        """Feed every message with sequence in [start_seq, end_seq] to `apply`; returns how many."""
        ...


class StateBuilder:
    """Books and hot state of every symbol, with I/O injected.

    Args:
        symbols: upper-case symbols.
        publish: `publish(subject, message)` onto JetStream.
        kv_put: `kv_put(key, value)` into the state bucket.
        request: `request(subject, payload) -> reply` (core NATS request/reply).
        clock: integer ns wall clock.
        log: component logger.
        policy: when to checkpoint (None: never).
        on_checkpoint: receives every checkpoint the policy asks for (saved in the background).
    """

    def __init__(
        self,
        *,
        symbols: tuple[str, ...],
        publish: Publish,
        kv_put: KvPut,
        request: Request,
        clock: Clock,
        log: Logger,
        policy: SnapshotPolicy | None = None,
        on_checkpoint: Callable[[StateBuilderCheckpoint], None] | None = None,
    ) -> None:
        self._publish = publish
        self._policy = policy
        self._on_checkpoint = on_checkpoint
        self._kv_put = kv_put
        self._request = request
        self._clock = clock
        self.log = log
        self.symbols = {
            name: SymbolState(OrderBook(name), HotState(name, clock)) for name in (s.upper() for s in symbols)
        }
        self._flush_lock = asyncio.Lock()
        self._background: set[asyncio.Task[bool]] = set()
        self._background_any: set[asyncio.Task[bool]] = set()
        self._checkpoint_soon = False
        self.metrics: ServiceMetrics | None = None
        """Where tick-to-hot-state latency and resyncs are observed (set by `main`; None in unit tests)."""
        """A book was rebuilt from a fresh snapshot: checkpoint after the next applied message."""
        self.recovery: RecoveryReport | None = None
        """How the last `recover` went (None before it ran)."""
        self.resync_requested: tuple[str, ...] = ()
        """The symbols the last `recover` asked market-data to resync."""

    # ------------------------------------------------------------------ transitions

    async def _record(self, state: SymbolState, transition: HotStateTransition | None) -> None:
        if transition is None:
            return
        self.log.info(
            "hot_state_changed",
            symbol=transition.symbol,
            previous=transition.previous,
            current=transition.current,
            reason=transition.reason,
            last_update_id=transition.last_update_id,
        )
        state.unpublished.append(transition)
        await self._flush(state)

    async def _flush(self, state: SymbolState) -> None:
        """Publish pending transitions in order; what fails stays pending for the next tick."""
        # The consumer and the timer both flush: one at a time, or a transition goes out twice.
        async with self._flush_lock:
            await self._flush_locked(state)

    async def _flush_locked(self, state: SymbolState) -> None:
        while state.unpublished:
            transition = state.unpublished[0]
            event = HotStateStatusChanged(
                symbol=transition.symbol,
                previous=transition.previous,
                current=transition.current,
                reason=transition.reason,
                last_update_id=transition.last_update_id,
                stale_since_ns=transition.stale_since_ns,
                ts_event_ns=transition.ts_ns,
            )
            value = encode_value(
                HotStateRecord(
                    status=transition.current,
                    reason=transition.reason,
                    last_update_id=transition.last_update_id,
                    ts_ns=transition.ts_ns,
                    stale_since_ns=transition.stale_since_ns,
                )
            )
            try:
                await self._publish(subjects.evt_hot_state(transition.symbol), event)
                await self._kv_put(subjects.key_hot_state(transition.symbol), value)
            except Exception as exc:  # noqa: BLE001 - retried on the next tick; state in memory is right
                self.log.warning("hot_state_publish_failed", symbol=transition.symbol, error=str(exc)[:300])
                return
            state.unpublished.pop(0)

    async def publish_initial(self) -> None:
        """Announce every symbol INVALID at start (fail closed until rebuilt)."""
        for state in self.symbols.values():
            hot = state.hot
            state.unpublished.append(HotStateTransition(hot.symbol, None, hot.status, hot.reason, None, self._clock()))
            await self._flush(state)

    # ------------------------------------------------------------------ market data

    async def handle_message(self, message: Message, delivery: Delivery | None = None) -> None:
        """Consumer handler for `md.>`; never raises for data problems (they are state, not errors).

        A diff's age is counted from when its data was current (`domain.update_data_ns`): the older
        of when market-data put it on the stream (`stored_ns`) and the venue's event time, not from
        when it is handled here: old data, however late it is handled, is not fresh.
        """
        await self._handle(message, delivery.stored_ns if delivery is not None else None)
        if delivery is not None:
            self.after_applied(delivery.stream_sequence)

    def after_applied(self, stream_seq: int) -> None:
        """Message `stream_seq` is reflected in memory: checkpoint when the policy says so, or at
        once after a book was rebuilt from a fresh snapshot.

        A rebuild follows a resync, which is also how a recovery whose snapshot was too far behind
        ends: without a checkpoint then, the next restart would find the same old snapshot and
        resync again instead of replaying a short tail.
        """
        if self._policy is None or self._on_checkpoint is None:
            return
        if not self._policy.record() and not self._checkpoint_soon:
            return
        self._checkpoint_soon = False
        self._policy.taken()
        self._on_checkpoint(self.checkpoint(stream_seq))

    async def _handle(self, message: Message, stored_ns: int | None = None) -> None:
        applied = market.apply(self.symbols, message)
        if applied is None:
            return  # trades, liquidations, other symbols: not part of the state
        state = applied.state
        match applied.change, message:
            case Change.DIFF_APPLIED, DepthDiff() as diff:
                await self._on_diff_applied(state, diff, stored_ns)
            case Change.GAP, DepthDiff() as diff:
                self.log.warning(
                    "book_gap",
                    symbol=state.book.symbol,
                    prev_final_update_id=diff.prev_final_update_id,
                    final_update_id=diff.final_update_id,
                    action_taken="INVALID until the next snapshot; resync requested",
                )
                await self._record(state, state.hot.on_invalid("sequence gap in depth diffs"))
                self._request_resync_soon(state)
            case Change.REBUILT, BookSnapshot() as snapshot:
                self._checkpoint_soon = True
                self.log.info("book_rebuilt", symbol=state.book.symbol, last_update_id=snapshot.last_update_id)
                await self._record(state, state.hot.on_rebuilt(snapshot.last_update_id))
            case Change.RESYNC, BookResyncStarted() as resync:
                if self.metrics is not None:
                    self.metrics.book_resynced(state.book.symbol)
                await self._record(state, state.hot.on_invalid(f"resync: {resync.reason}"))
            case _:
                pass  # an ignored diff, mark price, funding, open interest: nothing the hot state depends on

    async def _on_diff_applied(self, state: SymbolState, diff: DepthDiff, stored_ns: int | None) -> None:
        problems: list[str] = []
        if state.hot.status != HotStateStatus.VALID:
            # SPEC §7: a symbol is only (re)declared VALID once its book passes validation.
            problems = validate_book(state.book, now_ns=self._clock(), last_event_ns=diff.ts_event_ns)
            if problems and problems != list(state.hot.blocked_by):
                self.log.warning("hot_state_validation_failed", symbol=state.book.symbol, problems=problems)
        data_ns = update_data_ns(stored_ns, diff.ts_event_ns)
        await self._record(state, state.hot.on_update(diff.final_update_id, problems, data_ns=data_ns))
        if self.metrics is not None:
            # From market-data receiving the diff (its ts_init_ns) to the hot state reflecting it.
            self.metrics.tick_applied((self._clock() - diff.ts_init_ns) / 1e9)

    def _request_resync_soon(self, state: SymbolState) -> None:
        now = self._clock()
        if now - state.last_resync_request_ns < RESYNC_REQUEST_INTERVAL_NS:
            return
        state.last_resync_request_ns = now
        task = asyncio.create_task(self.request_resync(state.book.symbol, attempts=3))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def on_link_event(self, event: LinkStateChanged) -> None:
        """A market link went down: its symbols are STALE now, not a second later (FM-N1)."""
        if event.current in (ConnectionState.CONNECTED, ConnectionState.SUSPECT):
            return
        for symbol in event.symbols or list(self.symbols):
            state = self.symbols.get(symbol)
            if state is not None:
                await self._record(state, state.hot.on_link_down(f"link {event.link} {event.current.value}"))

    async def tick(self) -> None:
        """100 ms timer: staleness, and retry of unpublished transitions."""
        for state in self.symbols.values():
            await self._record(state, state.hot.check())
            if state.unpublished:
                await self._flush(state)

    async def run_ticks(self, interval_s: float) -> None:
        """Run `tick` forever: every `interval_s`, and when a VALID symbol's data turns stale."""
        while True:
            await asyncio.sleep(self.next_tick_s(interval_s))
            await self.tick()

    def next_tick_s(self, interval_s: float) -> float:
        """Seconds to the next tick: `interval_s`, or less when a VALID symbol's last update turns
        1000 ms old before that, so STALE (and the halt) comes at 1000 ms, not up to a tick later."""
        due = [when for state in self.symbols.values() if (when := state.hot.stale_due_ns()) is not None]
        if not due:
            return interval_s
        return min(interval_s, max(MIN_TICK_S, (min(due) - self._clock()) / 1e9))

    # ------------------------------------------------------------------ resync requests

    async def request_resync(self, symbol: str, *, attempts: int | None = None, retry_s: float = 0.5) -> bool:
        """Ask market-data for a fresh snapshot of `symbol`, retrying until answered.

        Returns:
            True when market-data answered, False after `attempts` failures (None: forever).
        """
        subject = subjects.SVC_MARKET_DATA_RESYNC
        payload = encode(ResyncRequest(symbol=symbol))
        tried = 0
        while attempts is None or tried < attempts:
            tried += 1
            try:
                raw = await self._request(subject, payload)
            except Exception as exc:  # noqa: BLE001 - no responder / timeout / bus down: try again
                self.log.info("resync_request_unanswered", symbol=symbol, error=type(exc).__name__, attempt=tried)
                await asyncio.sleep(retry_s)
                continue
            self._log_resync_reply(symbol, raw)
            return True
        return False

    def _log_resync_reply(self, symbol: str, raw: bytes) -> None:
        """market-data answered: say what (asking again would not change an error or an unreadable reply)."""
        try:
            reply = decode_reply(ResyncReply, raw)
        except ReplyDecodeError as exc:
            self.log.warning("resync_reply_unreadable", symbol=symbol, error=str(exc)[:300])
            return
        if isinstance(reply, ErrorReply):
            self.log.warning("resync_refused", symbol=symbol, code=reply.error.code, message=reply.error.message)
        else:
            self.log.info("resync_requested", symbol=symbol, status=reply.status)

    # ------------------------------------------------------------------ checkpoints and recovery

    def checkpoint(self, stream_seq: int) -> StateBuilderCheckpoint:
        """Every symbol's book and market state as of MARKET_DATA sequence `stream_seq`."""
        return market.capture(self.symbols, stream_seq, self._clock())

    def replay_message(self, message: Message, stream_seq: int) -> None:
        """Apply one message of the replayed tail: `market.apply` and nothing else.

        No hot-state changes and no publishes: replayed data is history, and nothing turns VALID
        before recovery has finished and live updates have passed validation. `stream_seq` is not
        needed: the books order the diffs by their own update ids.
        """
        market.apply(self.symbols, message)

    async def finish_recovery(self, *, resync_unusable: bool = True) -> list[str]:
        """After the replay: arm every chained book for VALID (fresh live updates + validation);
        ask market-data for a new snapshot of every other one.

        Returns:
            The symbols a resync was requested for.
        """
        resync: list[str] = []
        for symbol, state in self.symbols.items():
            book = state.book
            if book.usable and book.last_update_id is not None:
                state.hot.on_rebuilt(book.last_update_id)
                self.log.info(
                    "book_recovered", symbol=symbol, last_update_id=book.last_update_id, book_state=book.state.value
                )
            else:
                resync.append(symbol)
        if resync_unusable:
            for symbol in resync:
                task = asyncio.create_task(self.request_resync(symbol), name=f"recovery-resync-{symbol}")
                self._background_any.add(task)
                task.add_done_callback(self._background_any.discard)
        return resync

    async def recover(self, port: RecoveryPort, *, max_replay: int) -> RecoveryReport:
        """SPEC FM-C1: latest valid snapshot, bounded replay of the tail, then arm validation.

        Args:
            port: snapshot and stream access.
            max_replay: the longest tail (in stream messages) worth replaying; beyond it a fresh
                snapshot from market-data is faster, so the snapshot is dropped and books resync.

        Returns:
            What happened (mode `snapshot`, or `resync`: books rebuilt from fresh snapshots);
            `live_from` is the stream sequence the live consumer must start at. The symbols a
            resync was requested for are in `resync_requested`.
        """
        started = time.perf_counter()
        timings: dict[str, float] = {}
        loaded = await port.load_snapshot()
        timings["snapshot_load_ms"] = (time.perf_counter() - started) * 1000
        checkpoint = loaded.state
        if loaded.corrupt:
            await self._alert_corrupt(list(loaded.corrupt))
        mark = time.perf_counter()
        first_seq, last_seq = await port.bounds()
        timings["bounds_ms"] = (time.perf_counter() - mark) * 1000
        replayed = 0
        mode = "resync"
        covered = last_seq
        fallback = "fresh resync from market-data"
        if checkpoint is not None and snapshot_fits_stream(
            self.log, checkpoint.stream_seq, first_seq, last_seq, fallback
        ):
            tail = last_seq - checkpoint.stream_seq
            if tail > max_replay:
                self.log.warning("recovery_tail_too_long", tail=tail, max_replay=max_replay, action_taken=fallback)
            else:
                market.restore(self.symbols, checkpoint)
                covered = checkpoint.stream_seq
                mode = "snapshot"
                # Messages keep arriving while we replay: catch up in passes until the rest is
                # small enough for the live consumer.
                mark = time.perf_counter()
                for _ in range(5):
                    if covered >= last_seq:
                        break
                    replayed += await port.replay(covered + 1, last_seq, self.replay_message)
                    covered = last_seq
                    _, last_seq = await port.bounds()
                    if last_seq - covered <= CATCH_UP_SLACK:
                        break
                timings["replay_ms"] = (time.perf_counter() - mark) * 1000
                # Checkpoint with the first live message: a process that dies again soon (a crash
                # loop) then replays what came since, not this tail plus that.
                self._checkpoint_soon = replayed > 0
        self.resync_requested = tuple(await self.finish_recovery())
        report = RecoveryReport(
            mode=mode,
            snapshot_seq=checkpoint.stream_seq if checkpoint is not None and mode == "snapshot" else None,
            replayed=replayed,
            live_from=covered + 1,
            corrupt_snapshots=len(loaded.corrupt),
            snapshot_store="available" if loaded.available else "unavailable",
        )
        self.recovery = report
        self.log.info(
            "recovery_replayed",
            **report.as_dict(),
            resync_requested=list(self.resync_requested),
            timings={name: round(ms, 1) for name, ms in timings.items()},
            total_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return report

    async def _alert_corrupt(self, corrupt: list[str]) -> None:
        alert = AlertRaised(
            key=f"snapshot-corrupt.{subjects.STATE_BUILDER}",
            severity=AlertSeverity.P1,
            component=subjects.STATE_BUILDER,
            title="corrupt state-builder snapshot skipped (FM-C3); recovered from an older one or a resync",
            details={"snapshots": corrupt[:10]},
        )
        try:
            await self._publish(subjects.EVT_ALERT_RAISED, alert)
        except Exception as exc:  # noqa: BLE001 - the log line below still records it
            self.log.warning("alert_publish_failed", key=alert.key, error=str(exc)[:300])

    # ------------------------------------------------------------------ queries

    async def handle_book_request(self, payload: bytes) -> bytes:
        """`svc.state-builder.book`: `BookRequest` → `BookReply` (or an `ErrorReply`)."""
        return queries.book_reply(self.symbols, payload)

    async def handle_symbols_request(self, payload: bytes) -> bytes:
        """`svc.state-builder.symbols` (any request) → `SymbolsReply`."""
        return queries.symbols_reply(self.symbols)

    def details(self) -> dict[str, Any]:
        """Heartbeat details: per symbol status and last update id, and how recovery went."""
        found = queries.details(self.symbols)
        if self.recovery is not None:
            found["recovery"] = {**self.recovery.as_dict(), "resync_requested": list(self.resync_requested)}
        return found

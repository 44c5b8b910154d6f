"""Recovery at start (SPEC §8, FM-C9): the latest valid snapshot plus the ORDERS tail after it (or
the whole stream, or the Postgres projections when the stream no longer starts at 1), folded into
the ledger; the tail's effects are written to the projections. Reconciliation with the venue follows.
The recovery is reported with the `RecoveryReport` every service uses (`libs.service_snapshots`).
"""

from __future__ import annotations

import dataclasses

import asyncpg
from nats.js.errors import NotFoundError

from libs.orders_model import is_terminal
from libs.projections import read_orders_stream, write
from libs.service_snapshots import RecoveryReport
from proto import subjects
from proto.enums import AlertSeverity, OrderStatus

from .core import Core
from .domain import PositionCheckpoint, checkpoint_problem, decode_checkpoint
from .integrity import Integrity
from .ledger import Ledger
from .protection_levels import ProtectionLevels
from .snapshots import Snapshots


class Recovery:
    """Rebuilds the ledger at start."""

    def __init__(self, core: Core, snapshots: Snapshots, levels: ProtectionLevels, integrity: Integrity) -> None:
        self.core = core
        self.snapshots = snapshots
        self.levels = levels
        self.integrity = integrity
        self.report: RecoveryReport | None = None

    async def load(self) -> None:
        """Rebuild in-memory orders and positions from the Postgres projections (no snapshot, and the
        ORDERS stream no longer starts at 1, so a full replay would miss orders).

        Only what memory keeps is read: live orders and the finished ones within the retention
        (indexed queries). Anything older may exist without being in memory, so from now on an
        approval not in memory is always checked against the projection (`evicted_until_ns`).
        """
        core = self.core
        ledger = core.ledger
        now = core.clock()
        live = [status.value for status in OrderStatus if not is_terminal(status)]
        loaded = await core.projections.load_recent_orders(
            live, now - core.retention.keep_ns, core.retention.max_terminal
        )
        ledger.orders = {coid: order for coid, order in loaded.items() if order.venue == core.venue}
        ledger.evicted_until_ns = now
        ledger.positions, _ = await core.projections.load_positions(core.venue)
        ledger.rebase()
        await self.levels.load()
        core.log.info(
            "position_state_loaded",
            orders=len(ledger.orders),
            positions=len(ledger.positions),
            protections=len(ledger.protections),
        )

    async def recover(self) -> RecoveryReport:
        """Load the latest valid snapshot and fold only the ORDERS messages after it (bounded replay).

        Without a valid snapshot the whole ORDERS stream is folded (it starts at 1: nothing was
        removed), else the Postgres projections are loaded as before snapshots existed. A corrupt
        snapshot is skipped for an older one (P1 alert). The tail's effects are upserted into the
        projections (idempotent), which repairs rows a crash left behind. Reconciliation with the
        venue follows (`Reconciliation.reconcile`), before any order is accepted.
        """
        core = self.core
        ledger = core.ledger
        checkpoint: PositionCheckpoint | None = None
        corrupt: list[str] = []
        store_state = "available"
        started_ns = core.clock()
        phases: dict[str, float] = {}
        if self.snapshots.store is not None:
            try:
                found = await self.snapshots.store.load_latest_valid(core.component, accept=checkpoint_problem)
            except (asyncpg.PostgresError, OSError) as exc:
                store_state = "unavailable"
                core.log.warning("snapshot_load_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            else:
                corrupt = [f"id {c.id} seq {c.stream_seq}: {c.reason}" for c in found.corrupt]
                if found.snapshot is not None:
                    checkpoint = decode_checkpoint(found.snapshot.state)
        phases["snapshot_load_ms"] = (core.clock() - started_ns) / 1e6
        try:
            first, last = await core.bus.stream_bounds(subjects.STREAM_ORDERS.name)
        except NotFoundError:
            first, last = 0, 0
        if checkpoint is None and first > 1:
            await self.load()
            report = RecoveryReport(
                "projections",
                None,
                0,
                live_from=last + 1,
                corrupt_snapshots=len(corrupt),
                snapshot_store=store_state,
                covered_seq=last,
                orders_evicted=0,
            )
        else:
            # A fresh ledger: the snapshot's state, then the tail folded in by `Ledger.fold`, the
            # same fold the live handlers apply their events with.
            ledger = core.ledger = Ledger(core.venue)
            from_seq = 1
            mode = "full-replay"
            if checkpoint is not None:
                mode = "snapshot"
                from_seq = checkpoint.stream_seq + 1
                ledger.restore(checkpoint)
                if checkpoint.stream_seq > last:
                    core.log.warning(
                        "snapshot_ahead_of_stream",
                        snapshot_seq=checkpoint.stream_seq,
                        stream_last=last,
                        action_taken="snapshot kept; reconciliation with the venue corrects it",
                    )
            mark_ns = core.clock()
            # The stream holds every venue's orders: this process keeps, and writes, its own only.
            events = await read_orders_stream(core.bus, from_seq)
            folded = ledger.fold(events)
            phases["tail_fold_ms"] = (core.clock() - mark_ns) / 1e6
            await self.levels.load(checkpoint.protections if checkpoint is not None else ())
            mark_ns = core.clock()
            try:
                await write(folded, core.projections, touched_only=True)
            except (asyncpg.PostgresError, OSError) as exc:
                # FM-C3: the log is the truth; the projections catch up with the next writes or a rebuild.
                core.log.warning("projection_catch_up_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            phases["projection_write_ms"] = (core.clock() - mark_ns) / 1e6
            evicted = self.integrity.trim()  # a whole-log replay, or a long downtime, leaves old finished orders
            ledger.rebase()
            covered = max(last, checkpoint.stream_seq if checkpoint is not None else 0)
            snapshot_seq = checkpoint.stream_seq if checkpoint is not None else None
            report = RecoveryReport(
                mode,
                snapshot_seq,
                len(events),
                live_from=covered + 1,
                corrupt_snapshots=len(corrupt),
                snapshot_store=store_state,
                covered_seq=covered,
                orders_evicted=evicted,
            )
            # The next snapshot is due once the stream grew past the policy's budget since this one.
            self.snapshots.stream_mark = snapshot_seq or 0
        recovered = {symbol: str(p.quantity) for symbol, p in sorted(ledger.positions.items()) if p.quantity}
        report = dataclasses.replace(report, positions=recovered, orders_loaded=len(ledger.orders))
        self.report = report
        core.log.info(
            "position_recovered",
            mode=report.mode,
            snapshot_seq=report.snapshot_seq,
            replayed=report.replayed,
            corrupt_snapshots=report.corrupt_snapshots,
            orders=len(ledger.orders),
            orders_evicted=report.orders_evicted,
            timings={name: round(ms, 1) for name, ms in phases.items()},
            total_ms=round((core.clock() - started_ns) / 1e6, 1),
            positions=recovered,
            protections=len(ledger.protections),
        )
        if corrupt:
            await core.alert(
                f"snapshot-corrupt.{core.component}",
                AlertSeverity.P1,
                "corrupt position snapshot skipped (FM-C3); recovered from an older one or the log",
                snapshots=corrupt[:10],
            )
        return report

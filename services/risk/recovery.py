"""Recovery and checkpoints (SPEC §8, FM-C1, FM-C3): rebuild `RiskState` from the latest valid
snapshot and the ORDERS tail through `state.apply`, validate it, and take a snapshot when the
policy says so as the live consumer moves on.
"""

from __future__ import annotations

from libs.service_snapshots import Loaded, RecoveryReport, StreamLog, snapshot_fits_stream
from proto import subjects
from proto.enums import AlertSeverity
from proto.messages import AlertRaised

from . import snapshot as snap
from .core import RiskCore
from .routing import split_book


def after_applied(risk: RiskCore, stream_seq: int) -> None:
    """ORDERS message `stream_seq` is reflected in memory: checkpoint when the policy says so."""
    risk.state.orders_seq = max(risk.state.orders_seq, stream_seq)
    if risk.snapshots is None or risk.policy is None or not risk.policy.record():
        return
    risk.policy.taken()
    risk.snapshots.submit(risk.orders_seq, risk.capture(risk.orders_seq))


async def recover(risk: RiskCore, log: StreamLog[snap.RiskSnapshot]) -> RecoveryReport:
    """Rebuild memory from the latest valid snapshot and the ORDERS tail, then validate (SPEC §8).

    The replayed range ends where the durable `risk-events` consumer's acknowledgements end:
    the consumer then delivers the rest with effects. Without a snapshot (none, all corrupt,
    Postgres down) the whole stream is replayed: the log is the source of truth (FM-C3).
    """
    loaded: Loaded[snap.RiskSnapshot] = await log.load_snapshot()
    if loaded.corrupt:
        await _alert_corrupt(risk, list(loaded.corrupt))
    if not loaded.available:
        risk.log.warning("snapshot_store_unavailable_at_start", action_taken="full replay of the ORDERS stream")
    first, last = await log.bounds()
    processed = await log.processed_through()
    end = last if processed is None else min(processed, last)
    snapshot = loaded.state
    mode = "full-replay"
    start = max(first, 1)
    if snapshot is not None and snapshot_fits_stream(risk.log, snapshot.orders_seq, first, last, "full replay"):
        risk.restore(snapshot)
        mode = "snapshot"
        start = snapshot.orders_seq + 1
    replayed = await log.replay(start, end, risk.replay_message) if last else 0
    validate_recovered(risk)
    report = RecoveryReport(
        mode=mode,
        snapshot_seq=snapshot.orders_seq if mode == "snapshot" and snapshot is not None else None,
        replayed=replayed,
        live_from=end + 1,
        corrupt_snapshots=len(loaded.corrupt),
        snapshot_store="available" if loaded.available else "unavailable",
    )
    risk.recovery = report
    risk.log.info("recovery_replayed", **report.as_dict(), consumer_processed_through=processed)
    return report


def validate_recovered(risk: RiskCore) -> None:
    """§7-style checks of the rebuilt state; a violation is logged and made safe, never trusted."""
    for item in risk.state.pending.to_state():
        if item.quantity <= 0 or item.filled < 0 or item.filled >= item.quantity:
            risk.log.error("recovery_pending_invalid", client_order_id=item.client_order_id, action_taken="dropped")
            risk.pending.release(item.client_order_id)
    for book, quantity in risk.state.positions.items():
        venue, symbol = split_book(book, risk.venue)
        if symbol not in risk.limits.symbols or venue not in (*risk.venues, risk.paper.venue):
            risk.log.warning("recovery_position_unknown_symbol", venue=venue, symbol=symbol, quantity=str(quantity))


async def _alert_corrupt(risk: RiskCore, corrupt: list[str]) -> None:
    alert = AlertRaised(
        key=f"snapshot-corrupt.{subjects.RISK}",
        severity=AlertSeverity.P1,
        component=subjects.RISK,
        title="corrupt risk snapshot skipped (FM-C3); recovered from an older one or a full replay",
        details={"snapshots": corrupt[:10]},
    )
    try:
        await risk.bus.publish(subjects.EVT_ALERT_RAISED, alert)
    except Exception as exc:  # noqa: BLE001 - the snapshot_corrupt log lines still record it
        risk.log.warning("alert_publish_failed", key=alert.key, error=str(exc)[:300])

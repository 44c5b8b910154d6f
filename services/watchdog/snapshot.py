"""watchdog's snapshot (SPEC §8): its format, its store in Postgres and the CONTROL log recovery reads.

The snapshot holds what the watchdog cannot re-read from KV at start:
- the evaluator's memory: component states, rule timers (when each condition was first seen, so a
  "held for 10 s" rule does not restart its clock), the alerts it has open (so a restart neither
  pages again for a condition that still holds nor forgets to resolve one that cleared), and the
  recovery-hold timer of the degradation level;
- the alert router's open alerts (de-duplication of the sinks), derived from `evt.alert.>` on the
  CONTROL stream up to `control_seq`: a restart replays only the alerts after it;
- the latency baseline of the state-builder query.
Level and health stay in KV (`degradation_level`, `health`): the fail-closed authority, written by
compare-and-set, which an operator's emergency stop also writes.
"""

from __future__ import annotations

from typing import Any

import msgspec

from libs.bus import Bus
from libs.logging import Logger
from libs.service_snapshots import SnapshotKeeper, StreamLog, StructCodec
from proto import subjects
from services.watchdog.alerts import AlertNotice
from services.watchdog.evaluator import EvaluatorState

SNAPSHOT_COMPONENT = subjects.WATCHDOG


class WatchdogSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """watchdog's memory; the alert router covers CONTROL `evt.alert.>` up to `control_seq`."""

    control_seq: int
    taken_ns: int
    evaluator: EvaluatorState
    open_alerts: list[AlertNotice] = []
    latency_baseline_ms: float | None = None
    last_verification: dict[str, Any] | None = None


CODEC = StructCodec(WatchdogSnapshot)
encode_snapshot = CODEC.encode
decode_snapshot = CODEC.decode


def snapshot_keeper(dsn: str, log: Logger) -> SnapshotKeeper[WatchdogSnapshot]:
    """watchdog's snapshots in Postgres, component `watchdog`."""
    return CODEC.keeper(dsn, SNAPSHOT_COMPONENT, log)


def control_log(
    bus: Bus, snapshots: SnapshotKeeper[WatchdogSnapshot] | None, durable: str
) -> StreamLog[WatchdogSnapshot]:
    """What `recover` reads: snapshots, the CONTROL stream's alerts and the alerts consumer's progress."""
    return StreamLog(
        bus,
        snapshots,
        subjects.STREAM_CONTROL.name,
        durable=durable,
        filter_subject=subjects.EVT_ALERT_ALL,
        fetch_timeout_s=0.5,  # a range without alerts ends on the first empty fetch: keep it short
    )

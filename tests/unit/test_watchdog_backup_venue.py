"""The backup venue (FM-N6) is only the failover: its position process is not critical and its links
never raise the level past REDUCED_FUNCTIONALITY (EMERGENCY_MODE would flatten every position on the
main venue for an outage of the backup), while the same link of the main venue still does."""

from __future__ import annotations

from libs.clock import ManualClock
from libs.settings import Settings
from proto.enums import DegradationLevel, Health
from services.watchdog.evaluation import thresholds_from
from services.watchdog.evaluator import WatchdogEvaluator
from services.watchdog.observations import LinkObservation
from services.watchdog.rules import is_critical
from tests.unit.test_watchdog_domain import T0, views

BACKUP = "binance-usdm-backup"


def test_links_when_backup_venue_order_link_degraded_then_reduced_yellow_and_the_main_one_still_emergency() -> None:
    thresholds = thresholds_from(Settings(backup_venue=BACKUP))
    backup = WatchdogEvaluator(ManualClock(T0), thresholds=thresholds).evaluate(
        views(), links=[LinkObservation(f"{BACKUP}.orders", "DEGRADED")]
    )
    assert (backup.level, backup.health) == (DegradationLevel.REDUCED_FUNCTIONALITY, Health.YELLOW)
    assert any("backup venue" in reason for reason in backup.reasons)
    main = WatchdogEvaluator(ManualClock(T0), thresholds=thresholds).evaluate(
        views(), links=[LinkObservation("binance-usdm.orders", "DEGRADED")]
    )
    assert main.level == DegradationLevel.EMERGENCY_MODE
    assert not is_critical(f"position-{BACKUP}")

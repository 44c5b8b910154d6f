"""The paper venue beside live (`bulwark up --paper-link`) trades no money: its position process is
not critical and its links never raise the level past REDUCED_FUNCTIONALITY (EMERGENCY_MODE would
close every live position for a paper outage), while the same link of a live venue still does. The
backup venue (FM-N6) is only the failover: the same cap, so its outage never flattens the main venue."""

from __future__ import annotations

import pytest

from libs.clock import ManualClock
from libs.heartbeat import expected_components
from libs.settings import Settings
from proto.enums import DegradationLevel, Health
from services.watchdog.evaluation import thresholds_from
from services.watchdog.evaluator import WatchdogEvaluator
from services.watchdog.observations import LinkObservation
from services.watchdog.rules import is_critical
from tests.unit.test_watchdog_domain import T0, views

PAPER = "binance-usdm-paper"
BACKUP = "binance-usdm-backup"


@pytest.mark.parametrize(
    ("settings", "venue", "said"),
    [(Settings(paper_venue=PAPER), PAPER, "paper venue"), (Settings(backup_venue=BACKUP), BACKUP, "backup venue")],
    ids=["paper", "backup"],
)
def test_links_when_paper_or_backup_venue_link_degraded_then_reduced_yellow_and_a_live_one_still_emergency(
    settings: Settings, venue: str, said: str
) -> None:
    thresholds = thresholds_from(settings)
    capped = WatchdogEvaluator(ManualClock(T0), thresholds=thresholds).evaluate(
        views(), links=[LinkObservation(f"{venue}.orders", "DEGRADED")]
    )
    assert (capped.level, capped.health) == (DegradationLevel.REDUCED_FUNCTIONALITY, Health.YELLOW)
    assert any(said in reason for reason in capped.reasons)
    live = WatchdogEvaluator(ManualClock(T0), thresholds=thresholds).evaluate(
        views(), links=[LinkObservation("binance-usdm.orders", "DEGRADED")]
    )
    assert live.level == DegradationLevel.EMERGENCY_MODE
    assert not is_critical(f"position-{venue}")


def test_components_when_paper_venue_then_its_position_process_expected_and_not_critical() -> None:
    component = f"position-{PAPER}"
    assert component in expected_components(Settings(paper_venue=PAPER))
    assert component not in expected_components(Settings())
    assert not is_critical(component) and is_critical("position")

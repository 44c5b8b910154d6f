"""The paper venue beside live (`bulwark up --paper-link`) trades no money: its position process is
not critical and its links never raise the level past REDUCED_FUNCTIONALITY (EMERGENCY_MODE would
close every live position for a paper outage), while the same link of a live venue still does."""

from __future__ import annotations

from libs.clock import ManualClock
from libs.heartbeat import expected_components
from libs.settings import Settings
from proto.enums import DegradationLevel, Health
from services.watchdog.evaluator import WatchdogEvaluator
from services.watchdog.observations import LinkObservation
from services.watchdog.rules import Thresholds, is_critical
from tests.unit.test_watchdog_domain import T0, views

PAPER = "binance-usdm-paper"


def test_links_when_paper_venue_link_degraded_then_reduced_yellow_and_a_live_one_still_emergency() -> None:
    thresholds = Thresholds(paper_venue=PAPER)
    paper = WatchdogEvaluator(ManualClock(T0), thresholds=thresholds).evaluate(
        views(), links=[LinkObservation(f"{PAPER}.orders", "DEGRADED")]
    )
    assert (paper.level, paper.health) == (DegradationLevel.REDUCED_FUNCTIONALITY, Health.YELLOW)
    assert any("paper venue" in reason for reason in paper.reasons)
    live = WatchdogEvaluator(ManualClock(T0), thresholds=thresholds).evaluate(
        views(), links=[LinkObservation("binance-usdm.orders", "DEGRADED")]
    )
    assert live.level == DegradationLevel.EMERGENCY_MODE


def test_components_when_paper_venue_then_its_position_process_expected_and_not_critical() -> None:
    component = f"position-{PAPER}"
    assert component in expected_components(Settings(paper_venue=PAPER))
    assert component not in expected_components(Settings())
    assert not is_critical(component) and is_critical("position")

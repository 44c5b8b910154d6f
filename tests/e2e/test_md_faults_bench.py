"""`bulwark bench md-faults` measures each transition through the running system (one round here;
the targets themselves are judged by the benchmark, not by a timed test)."""

from __future__ import annotations

import pytest

from entrypoints.bench.md_faults import TARGETS_MS, format_md_faults, measure_md_faults
from entrypoints.harness.system import RunningSystem

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # long chaos/bench runs: `pytest -m slow` before a release


def test_md_faults_when_one_round_then_every_transition_is_observed_and_recovered(system: RunningSystem) -> None:
    result = measure_md_faults(system, repeats=1)
    for name in TARGETS_MS:
        measured = result[name]
        assert measured["samples"] == 1, (name, result)
        # A transition cannot precede its cause, and the stale threshold bounds (a) from below.
        assert measured["median_ms"] > 0, (name, result)
    assert result["stall_to_halted"]["median_ms"] >= 900, result
    assert result["symbol"] in system.status()["symbols"]
    assert "stall_to_halted" in format_md_faults(result)

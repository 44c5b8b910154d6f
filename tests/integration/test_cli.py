"""The `bulwark` verbs that run without a system: chaos list, bench list and a real benchmark."""

from __future__ import annotations

import json
import subprocess
import sys


def _bulwark(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_chaos_list_when_called_then_names_the_kill_experiment() -> None:
    result = _bulwark("chaos", "list")
    assert result.returncode == 0, result.stderr
    assert "kill-each-service" in result.stdout


def test_chaos_run_when_unknown_experiment_then_exit_2_with_hint() -> None:
    result = _bulwark("chaos", "run", "no-such-thing")
    assert result.returncode == 2 and "bulwark chaos list" in result.stderr


def test_bench_when_bus_publish_then_json_with_baseline_ratio() -> None:
    result = _bulwark("bench", "bus-publish", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["messages"] == 2000
    assert report["core_publish_per_s"] > 0 and report["jetstream_publish_per_s"] > 0
    expected = report["jetstream_publish_per_s"] / report["core_publish_per_s"]
    assert abs(report["jetstream_vs_core_ratio"] - expected) <= 0.05 * expected


def test_bench_when_unknown_then_exit_2() -> None:
    result = _bulwark("bench", "nope")
    assert result.returncode == 2 and "bulwark bench list" in result.stderr

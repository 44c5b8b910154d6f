"""Backtest speed: market events replayed per second through a strategy (the simulator's book and
matching engine, the strategy's own code, on a simulated clock) against the raw read rate of the
same recordings, in the same run; and how much faster than real time that is.

    .venv/bin/python -m entrypoints.bench.backtest [--strategy trend] [--repeats 5]
"""

from __future__ import annotations

import argparse
import functools
import gzip
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from entrypoints.backtest.driver import strategy_from_spec
from entrypoints.backtest.engine import run_backtest
from entrypoints.backtest.replay import REPLAY_KINDS, load_replay
from libs import recordings

DEFAULT_STRATEGY = "trend"
DEFAULT_FILES = recordings.DEFAULT_RECORDINGS


def _timed(measure: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = measure()
    return time.perf_counter() - start, value


def _lines(paths: Sequence[Path]) -> int:
    count = 0
    for path in paths:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            count += sum(1 for _ in handle)
    return count


def backtest_speed(
    repeats: int = 5, strategy: str = DEFAULT_STRATEGY, files: Sequence[str] = DEFAULT_FILES
) -> dict[str, Any]:
    """Time reading, loading and backtesting the recordings; the best of `repeats` of each."""
    paths = [recordings.RECORDINGS_DIR / name for name in files]
    instance = strategy_from_spec(strategy)
    best = {"lines": float("inf"), "read": float("inf"), "load": float("inf"), "run": float("inf")}
    # Each repeat measures every stage back to back (so a busy moment of the machine weighs on
    # all of them alike); each stage keeps its fastest time, the least disturbed one.
    for _ in range(repeats):
        elapsed, lines = _timed(lambda: _lines(paths))
        best["lines"] = min(best["lines"], elapsed)
        elapsed, records = _timed(lambda: len(recordings.read_recordings(paths, kinds=REPLAY_KINDS)))
        best["read"] = min(best["read"], elapsed)
        elapsed, replay = _timed(lambda: load_replay(paths))
        best["load"] = min(best["load"], elapsed)
        elapsed, run = _timed(functools.partial(run_backtest, instance, replay))
        best["run"] = min(best["run"], elapsed)
    lines_s, read_s, load_s, run_s = best["lines"], best["read"], best["load"], best["run"]
    duration_s = (replay.end_ns - replay.start_ns) / 1e9
    events = run.events
    return {
        "strategy": instance.name,
        "recordings": list(files),
        "repeats": repeats,
        "recorded_seconds": round(duration_s, 1),
        "events": events,
        "trades": len(run.trades),
        "raw_lines_per_s": round(lines / lines_s),
        "raw_records_per_s": round(records / read_s),
        "replay_events_per_s": round(events / run_s),
        "backtest_events_per_s": round(events / (load_s + run_s)),
        "replay_vs_raw_read_ratio": round(read_s / run_s * events / records, 4),
        "backtest_vs_raw_read_ratio": round(read_s / (load_s + run_s) * events / records, 4),
        "times_real_time": round(duration_s / (load_s + run_s), 1),
    }


def format_backtest(result: dict[str, Any]) -> str:
    """One line for the bench report."""
    return (
        f"backtest {result['strategy']} on {', '.join(result['recordings'])} ({result['recorded_seconds']} s, "
        f"{result['events']} events): {result['replay_events_per_s']} events/s replayed, "
        f"{result['backtest_events_per_s']}/s with loading, against {result['raw_records_per_s']} records/s "
        f"read raw (ratio {result['backtest_vs_raw_read_ratio']}); {result['times_real_time']}x real time"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", default=DEFAULT_STRATEGY)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    print(format_backtest(backtest_speed(options.repeats, options.strategy)))  # noqa: T201 - CLI output

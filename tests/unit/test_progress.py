"""Progress of long commands: drawn on a terminal, silent for `--json` and pipes, and never part of
what the command computes or prints on stdout."""

from __future__ import annotations

import io
import sys

import pytest

from entrypoints import cli
from entrypoints.backtest.driver import strategy_from_spec
from entrypoints.backtest.engine import PROGRESS_EVERY, run_backtest
from entrypoints.backtest.replay import load_replay
from entrypoints.progress import progress
from tests.support.repository import ROOT


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_when_stderr_is_a_terminal_then_drawn_unless_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress("replaying 3000 events", 3000) as advance:
        advance(3000)
    assert "replaying 3000 events" in terminal.getvalue()

    quiet = Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    with progress("replaying", 10, quiet=True) as advance:
        advance(10)
    assert quiet.getvalue() == ""

    piped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", piped)
    with progress("replaying", 10) as advance:
        advance(10)
    assert piped.getvalue() == ""


def test_backtest_when_progress_reported_then_every_thousand_events_and_the_run_unchanged() -> None:
    replay = load_replay([ROOT / "data" / "binance" / "usdm_btcusdt_20240808.gz"])
    instance = strategy_from_spec("trend")
    told: list[int] = []
    with_progress = run_backtest(instance, replay, progress=told.append)
    without = run_backtest(instance, replay)
    assert sum(told) == with_progress.events - with_progress.events % PROGRESS_EVERY
    assert set(told) == {PROGRESS_EVERY}
    assert [t.net_pnl for t in with_progress.trades] == [t.net_pnl for t in without.trades]


def test_chaos_run_when_neither_or_both_name_and_all_then_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["chaos", "run"]) == 2
    assert "name one experiment, or give --all" in capsys.readouterr().err
    assert cli.main(["chaos", "run", "kill", "--all"]) == 2
    assert cli.main(["chaos", "run", "no-such-experiment"]) == 2
    assert "unknown experiment 'no-such-experiment'" in capsys.readouterr().err

"""`bulwark backtest` on the shipped Binance recordings: the built-in strategies trade through the
simulator's matching engine and fees, stops and take-profits included, the same input gives the
same bytes, crashes are contained, the report holds the trades, and bad input gets a clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from entrypoints import cli
from entrypoints.backtest import report
from entrypoints.backtest.driver import StrategyConfigError, strategy_from_spec
from entrypoints.backtest.engine import BacktestRun, run_backtest
from entrypoints.backtest.replay import Replay, ReplayError, load_replay
from services.venue_sim.domain import Exchange

ROOT = Path(__file__).resolve().parents[2]
RECORDINGS = ROOT / "data" / "binance"
BTC_2024 = RECORDINGS / "usdm_btcusdt_20240808.gz"
BTC_2023_FIRST = RECORDINGS / "usdm_btcusdt_20230404.gz"

# Tight levels so that the protective orders (stop-loss, take-profit) fire within the recording.
TIGHT_TREND = """
[trend-tight]
kind = "trend"
stop_loss_pct = "0.03"
take_profit_pct = "0.03"
warmup_s = 30
cooldown_s = 5
"""


@pytest.fixture(scope="module")
def btc_2024() -> Replay:
    return load_replay([BTC_2024])


@pytest.fixture(scope="module")
def tight_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("strategies") / "tight.toml"
    path.write_text(TIGHT_TREND)
    return path


@pytest.fixture(scope="module")
def tight_run(btc_2024: Replay, tight_file: Path) -> BacktestRun:
    return run_backtest(strategy_from_spec(str(tight_file)), btc_2024)


def test_trend_when_defaults_on_btc_recording_then_trades_through_its_state_machine(btc_2024: Replay) -> None:
    run = run_backtest(strategy_from_spec("trend"), btc_2024)
    assert len(run.trades) == 1
    (trade,) = run.trades
    assert (trade.symbol, trade.side, trade.quantity) == ("BTCUSDT", "SHORT", Decimal("0.002"))
    assert trade.entry_reason.startswith("trend: fast/slow gap")
    assert (trade.exit_role, trade.exit_reason.startswith("trend reversed")) == ("exit", True)
    # The simulator's taker fee on both fills; the venue's realized PnL of the short.
    assert trade.fees == ((trade.entry_price + trade.exit_price) * trade.quantity * Exchange.TAKER_FEE).quantize(
        Decimal("0.00000001")
    )
    assert trade.pnl == (trade.entry_price - trade.exit_price) * trade.quantity
    # SCANNING -> SETUP -> IN_POSITION -> EXITING -> SCANNING after the enable.
    assert run.transitions == 5 and run.final_state == "SCANNING"
    assert run.equity[-1][1] == trade.net_pnl
    figures = report.document(run, [str(BTC_2024)])["metrics"]
    assert figures["trades"] == 1 and figures["win_rate"] == (1.0 if trade.net_pnl > 0 else 0.0)
    held = (trade.exit_ns - trade.entry_ns) / (btc_2024.end_ns - btc_2024.start_ns)
    assert figures["exposure"] == round(held, 6)


def test_protective_orders_when_levels_tight_then_venue_stops_and_targets_close_trades(tight_run: BacktestRun) -> None:
    roles = {trade.exit_role for trade in tight_run.trades}
    assert {"stop-loss", "take-profit"} <= roles, roles  # the position service's orders, at the venue
    assert "exit" in roles  # and the strategy's own exits (its stop and target seen on a tick)
    for trade in tight_run.trades:
        if trade.exit_role == "stop-loss":
            assert trade.net_pnl < 0
        if trade.exit_role in ("stop-loss", "take-profit"):
            assert "triggered at mark" in trade.exit_reason
    entries = [fill for fill in tight_run.fills if fill.role == "entry"]
    assert (
        len(entries)
        == len(tight_run.trades)
        == tight_run.signals - sum(1 for t in tight_run.trades if t.exit_role == "exit")
    )
    total = sum((fill.realized_pnl - fill.fee for fill in tight_run.fills), Decimal(0))
    assert tight_run.equity[-1][1] == total  # flat at the end: equity is the net realized PnL


def test_backtest_when_run_twice_then_identical_document(
    btc_2024: Replay, tight_file: Path, tight_run: BacktestRun
) -> None:
    again = run_backtest(strategy_from_spec(str(tight_file)), btc_2024)
    first = report.to_json(report.document(tight_run, [str(BTC_2024)]))
    assert report.to_json(report.document(again, [str(BTC_2024)])) == first
    assert len(json.loads(first)["trades"]) >= 5


def test_report_when_written_then_self_contained_page_lists_every_trade(tight_run: BacktestRun, tmp_path: Path) -> None:
    doc = report.document(tight_run, [str(BTC_2024)])
    page = report.write_report(doc, tmp_path / "out").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "<polyline" in page
    assert "<script" not in page and "src=" not in page and "<link" not in page
    assert page.count('<tr class="win">') + page.count('<tr class="loss">') == len(doc["trades"])
    for trade in doc["trades"]:
        assert trade["entry_price"] in page and trade["net_pnl"] in page
    assert doc["metrics"]["net_pnl"] in page


def test_strategy_when_it_raises_then_crashes_are_contained_and_it_fails(tmp_path: Path) -> None:
    path = tmp_path / "crashing.toml"
    path.write_text('[crashing]\nkind = "trend"\ncrash_on = "tick"\n')
    run = run_backtest(strategy_from_spec(str(path)), load_replay([BTC_2023_FIRST]))
    assert len(run.crashes) == 4 and "InjectedCrash" in run.crashes[0]["error"]  # FM-C2: > 3 in 10 min
    assert run.final_state == "FAILED" and run.events > 6000  # the replay went on to the end


def test_driver_when_spec_is_file_name_or_kind_then_instance_else_clear_error(tmp_path: Path) -> None:
    assert strategy_from_spec("cascade-fade").kind == "cascade_fade"
    two = tmp_path / "two.toml"
    two.write_text('[a]\nkind = "trend"\n[b]\nkind = "imbalance"\nwindow_s = 5\n')
    assert strategy_from_spec("b", two).config.window_s == 5.0  # type: ignore[attr-defined]
    with pytest.raises(StrategyConfigError, match="exactly one"):
        strategy_from_spec(str(two))
    with pytest.raises(StrategyConfigError, match="unknown kind"):
        strategy_from_spec("no-such-kind")
    with pytest.raises(ReplayError, match="does not exist"):
        load_replay([tmp_path / "missing.gz"])


def test_cli_when_input_is_bad_then_exit_2_with_the_reason(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["backtest", "--strategy", "nope", "--recording", str(BTC_2024)]) == 2
    assert "unknown kind 'nope'" in capsys.readouterr().err
    assert cli.main(["backtest", "--strategy", "trend", "--recording", str(tmp_path / "x.gz")]) == 2
    assert "does not exist" in capsys.readouterr().err
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("this is not a recording\n")
    assert cli.main(["backtest", "--strategy", "trend", "--recording", str(garbage)]) == 2
    assert "cannot read the recordings" in capsys.readouterr().err


def test_cli_when_json_run_twice_in_processes_then_same_bytes_and_report(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "entrypoints.cli", "backtest", "--strategy", "trend", "--json"]
    command += ["--recording", "usdm_btcusdt_20240808.gz,usdm_ethusdt_20240808.gz"]
    runs = []
    for seed in ("1", "2"):  # different hash seeds: nothing may depend on set or dict-of-str order
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": seed}
        out = [*command, "--report", str(tmp_path / seed)]
        # Both at once: two processes use two cores.
        runs.append(subprocess.Popen(out, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outputs = []
    try:
        for seed, process in zip(("1", "2"), runs, strict=True):
            stdout, stderr = process.communicate(timeout=300)
            assert process.returncode == 0, stderr
            outputs.append(stdout)
            assert (tmp_path / seed / "backtest.html").is_file()
    finally:
        for process in runs:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert outputs[0] == outputs[1]
    doc = json.loads(outputs[0])
    assert doc["symbols"] == ["BTCUSDT", "ETHUSDT"] and doc["strategy"]["kind"] == "trend"
    assert doc["recordings"] == ["usdm_btcusdt_20240808.gz", "usdm_ethusdt_20240808.gz"]  # as given, no local path
    assert len(doc["trades"]) == 2 and {t["symbol"] for t in doc["trades"]} == {"BTCUSDT", "ETHUSDT"}
    assert doc["trades"][-1]["exit_role"] == "end"  # still open when the recording ended: closed at market
    assert set(doc["metrics"]) >= {"realized_pnl", "fees", "win_rate", "average_win", "average_loss", "sharpe"}
    assert set(doc["metrics"]) >= {"max_drawdown", "exposure", "net_pnl", "trades"}


def test_bench_when_run_then_replay_rate_next_to_raw_read_rate_of_the_same_files() -> None:
    from entrypoints.bench.backtest import backtest_speed, format_backtest
    from entrypoints.bench.registry import BENCHMARKS

    assert BENCHMARKS["backtest"].run is backtest_speed
    result = backtest_speed(repeats=1, files=("usdm_btcusdt_20230404.gz",))
    assert result["events"] > 6000 and result["raw_records_per_s"] > 0 and result["replay_events_per_s"] > 0
    # The ratio is the replay's rate over the raw read rate, measured in the same run.
    expected = result["replay_events_per_s"] / result["raw_records_per_s"]
    assert result["replay_vs_raw_read_ratio"] == pytest.approx(expected, rel=0.01)
    assert result["times_real_time"] > 1  # faster than the market itself, even on a busy machine
    assert "events/s replayed" in format_backtest(result)


def test_cli_when_venue_refuses_entries_then_summary_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    # 0.002 BTC at ~28,000 USDT is under the 100 USDT minimum notional: the venue refuses every entry.
    assert cli.main(["backtest", "--strategy", "imbalance", "--recording", "usdm_btcusdt_20230404.gz"]) == 0
    out = capsys.readouterr().out
    assert "backtest imbalance (imbalance) on usdm_btcusdt_20230404.gz" in out
    assert "rejected entry BTCUSDT: -4164 Order's notional must be no smaller than 100" in out
    assert "trades                      0" in out and "x real time" in out


def test_own_strategy_when_written_from_the_template_outside_the_tree_then_backtested_unchanged(
    btc_2024: Replay, tmp_path: Path
) -> None:
    # `bulwark strategy new` writes a strategy file and its TOML in a folder of the trader's; the
    # backtest takes the TOML (its `kind = "my_mom.py:MyMom"` relative to it) or the class itself.
    assert cli.main(["strategy", "new", "my-mom", "--dir", str(tmp_path)]) == 0
    by_toml = run_backtest(strategy_from_spec(str(tmp_path / "my_mom.toml")), btc_2024)
    assert by_toml.trades, "the template trades on the default recording"
    assert all(trade.entry_reason for trade in by_toml.trades)
    again = run_backtest(strategy_from_spec(str(tmp_path / "my_mom.toml")), btc_2024)
    assert [t.net_pnl for t in again.trades] == [t.net_pnl for t in by_toml.trades]
    broken = tmp_path / "broken.py"
    broken.write_text((tmp_path / "my_mom.py").read_text() + "\nimport no_such_module\n")
    with pytest.raises(StrategyConfigError, match=r"broken\.py"):
        strategy_from_spec(f"{broken}:MyMom")

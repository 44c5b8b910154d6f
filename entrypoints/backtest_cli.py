"""`bulwark backtest --strategy SPEC [--config FILE] --recording FILE[,FILE...] [--json] [--report DIR]`:
replay recordings through a strategy in this process (`entrypoints.backtest`) and print what it did."""

from __future__ import annotations

import argparse
import sys
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path

from libs.recordings import RECORDINGS_DIR

DEFAULT_BALANCE = Decimal(100000)


def _balance(raw: str) -> Decimal:
    try:
        value = Decimal(raw)
    except InvalidOperation as exc:
        raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from exc
    if not value.is_finite() or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {raw!r}")
    return value


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `bulwark backtest`."""
    backtest = commands.add_parser(
        "backtest",
        help="replay recordings through a strategy (simulated clock, the simulator's fills and fees)",
        description="Replay recorded market data through one strategy instance, deterministically, and "
        "report its trades, PnL, fees, win rate, Sharpe, drawdown and exposure (docs/strategies.md, Backtest).",
    )
    backtest.add_argument(
        "--strategy",
        required=True,
        metavar="SPEC",
        help="a strategy TOML file with one table, an instance name of --config, or a kind (trend, cascade-fade, "
        "imbalance) with its defaults",
    )
    backtest.add_argument("--config", default="", metavar="FILE", help="strategy TOML file the SPEC name is read from")
    backtest.add_argument(
        "--recording",
        required=True,
        metavar="FILE[,FILE...]",
        help=f"recordings to replay (a bare name is looked up in {RECORDINGS_DIR})",
    )
    backtest.add_argument("--json", action="store_true", help="print the machine-readable result")
    backtest.add_argument("--report", type=Path, metavar="DIR", help="also write DIR/backtest.html")
    backtest.add_argument("--balance", type=_balance, default=DEFAULT_BALANCE, help="starting balance in USDT")


def _recordings(names: list[str]) -> list[str]:
    # A bare name that is not a file here is one of the shipped recordings.
    return [str(RECORDINGS_DIR / n) if not Path(n).exists() and (RECORDINGS_DIR / n).is_file() else n for n in names]


def run(args: argparse.Namespace) -> int:
    """Run `bulwark backtest`; 0 when it ran, 2 on bad input (the message says what to change)."""
    # Imported here: the strategy and simulator code is not needed by the other commands.
    from entrypoints.backtest import report
    from entrypoints.backtest.driver import StrategyConfigError, strategy_from_spec
    from entrypoints.backtest.engine import BacktestOptions, run_backtest
    from entrypoints.backtest.replay import ReplayError, load_replay
    from entrypoints.progress import progress

    named = [item.strip() for item in args.recording.split(",") if item.strip()]
    try:
        instance = strategy_from_spec(args.strategy, args.config)
        replay = load_replay(_recordings(named))
    except (StrategyConfigError, ReplayError) as exc:
        sys.stderr.write(f"bulwark backtest: {exc}\n")
        return 2
    started = time.perf_counter()
    with progress(f"replaying {len(replay.events)} events", len(replay.events), quiet=args.json) as advance:
        result = run_backtest(instance, replay, BacktestOptions(initial_balance=args.balance), advance)
    elapsed = max(time.perf_counter() - started, 1e-9)
    doc = report.document(result, named)  # as given: the same document in any checkout
    if args.json:
        sys.stdout.write(report.to_json(doc) + "\n")
    else:
        speed = (replay.end_ns - replay.start_ns) / 1e9 / elapsed
        sys.stdout.write(report.to_text(doc) + "\n")
        rate = result.events / elapsed
        sys.stdout.write(f"  replayed in {elapsed:.2f} s ({rate:.0f} events/s, {speed:.0f}x real time)\n")
    if args.report is not None:
        try:
            written = report.write_report(doc, args.report)
        except OSError as exc:
            sys.stderr.write(f"bulwark backtest: cannot write the report into {args.report}: {exc}\n")
            return 2
        sys.stderr.write(f"report: {written}\n")
    return 0

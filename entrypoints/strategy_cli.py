"""`bulwark strategy new NAME [--dir DIR]` and `bulwark strategy check SPEC`: writing a strategy of
one's own on the SDK (`services.strategy.sdk`, docs/strategies.md) and checking it without
running the system.

`new` writes a commented, runnable template (`<name>.py`) and its TOML table (`<name>.toml`).
`check` loads what SPEC names — `FILE.toml` (every instance in it), `FILE.toml:NAME` (one), or a
class `path/to/file.py:Class` / `package.module:Class` with its declared defaults — validates
its parameters exactly as `bulwark up` does, then drives each instance through a short synthetic
market (enable, trades, forced orders, ticks, a data reset) to catch code that raises. It prints
each problem and exits 0 only when there is none.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import traceback
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.strategy.config import InstanceConfig
    from services.strategy.sdk import StrategyConfig

# The service's modules are imported when a command runs: `bulwark --help` and every other command
# stay as fast as before.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
"""As `services.strategy.config.NAME_PATTERN` (a test holds them equal)."""
NS = 1_000_000_000

Write = Callable[[str], None]

TEMPLATE = '''"""{name}: a momentum strategy on the Bulwark strategy SDK (docs/strategies.md).

It enters in the direction of the price move of the last `lookback_s` seconds when that move is
at least `move_bps` basis points, with a stop-loss and a take-profit around the entry price, and
leaves early when the move turns against it. Everything else (the state machine, one position at
a time, cooldown, holding time, stops, retries, the risk checks, crash isolation) is the SDK's.

Check it:        bulwark strategy check {name_file}.toml
Backtest it:     bulwark backtest, on the recordings in data/binance/ (docs/strategies.md)
Run it:          bulwark up --strategies {name} --strategy-config {name_file}.toml
"""

from __future__ import annotations

from decimal import Decimal

from services.strategy import sdk

BPS = Decimal(10_000)


@sdk.parameters
class {cls}Parameters(sdk.StrategyConfig):
    """What the TOML table [{name}] may set (besides the shared ones: symbols, quantities, cooldown_s,
    setup_timeout_s, hold_s, exit_retry_s, tick_sizes). A field without a default is required there."""

    lookback_s: float = 10.0
    move_bps: Decimal = Decimal("3")
    stop_loss_pct: Decimal = Decimal("0.3")
    take_profit_pct: Decimal = Decimal("0.5")
    hold_s: float = 60.0
    cooldown_s: float = 30.0


class {cls}(sdk.Strategy):
    """Follow a short burst of momentum."""

    config_class = {cls}Parameters
    config: {cls}Parameters
    # Keep the last trades of each symbol (Strategy.recent_trades): enough for `lookback_s` of a busy
    # market. They are in the snapshot and emptied by a data reset (a gap in the market data).
    memory_trades = 5000

    def move_bps(self, symbol: str, now_ns: int) -> Decimal | None:
        """Price change over the last `lookback_s` seconds, in basis points (None: not enough history)."""
        trades = self.recent_trades(symbol)
        horizon = now_ns - int(self.config.lookback_s * sdk.NS)
        if not trades or trades[0].ts_ns > horizon:
            return None  # the memory does not reach back `lookback_s` yet (start, or after a data reset)
        start = next((trade for trade in trades if trade.ts_ns >= horizon), None)
        if start is None or start.price <= 0:
            return None  # no trade within the window
        return (trades[-1].price - start.price) / start.price * BPS

    def find_entry(self, symbol: str, now_ns: int, view: sdk.MarketView) -> sdk.Entry | None:
        """Called on every tick while SCANNING, for each symbol whose book is VALID and that this
        instance trades while it is flat there. Return an Entry to open a position, or None."""
        move = self.move_bps(symbol, now_ns)
        if move is None or abs(move) < self.config.move_bps:
            return None
        price = self.reference_price(symbol, view)  # the mid price, else the last trade
        if price is None:
            return None
        side = sdk.Side.BUY if move > 0 else sdk.Side.SELL
        sign = 1 if side == sdk.Side.BUY else -1
        stop = price * (1 - sign * self.config.stop_loss_pct / 100)
        target = price * (1 + sign * self.config.take_profit_pct / 100)
        return sdk.Entry(
            symbol,
            side,
            self.config.quantity_for(symbol),
            f"{name}: {{move:.1f}} bps in {{self.config.lookback_s:g}}s",
            stop_loss=self.config.round_price(symbol, stop, view.best_bid, view.best_ask),
            take_profit=self.config.round_price(symbol, target, view.best_bid, view.best_ask),
            confidence=sdk.entry_confidence(move, self.config.move_bps),
        )

    def exit_reason(self, now_ns: int, view: sdk.MarketView | None) -> str | None:
        """Called on every tick while in a position: a reason to leave now, or None. (Stop-loss,
        take-profit and `hold_s` are checked by the SDK before this.)"""
        if self.symbol is None or self.entry is None:
            return None
        move = self.move_bps(self.symbol, now_ns)
        if move is None:
            return None
        against = move < 0 if self.entry.side == sdk.Side.BUY else move > 0
        return f"momentum turned: {{move:.1f}} bps" if against and abs(move) >= self.config.move_bps else None
'''

TOML_TEMPLATE = """# Strategy instance [{name}] (docs/strategies.md). `kind` names the class: a path relative to
# this file, or absolute, or `package.module:Class` for one on the Python path.
[{name}]
kind = "{name_file}.py:{cls}"
symbols = ["BTCUSDT", "ETHUSDT"]   # the symbols of the default recordings
lookback_s = 10
move_bps = "3"
stop_loss_pct = "0.3"
take_profit_pct = "0.5"
hold_s = 60
cooldown_s = 30

[{name}.quantities]
BTCUSDT = "0.002"
ETHUSDT = "0.01"
"""

SMOKE_START_NS = 1_700_000_000 * NS


def add_parser(commands: Any) -> None:
    """`bulwark strategy new|check`."""
    strategy = commands.add_parser("strategy", help="write and check strategies of your own (docs/strategies.md)")
    verbs = strategy.add_subparsers(dest="strategy_command", required=True)
    new = verbs.add_parser("new", help="write a runnable template strategy and its TOML table")
    new.add_argument("name", help="instance name: lower case letters, digits, '-' or '_'")
    new.add_argument("--dir", type=Path, default=Path("."), help="folder to write into (default: here)")
    check = verbs.add_parser("check", help="load a strategy and its parameters and report every problem")
    check.add_argument("spec", help="FILE.toml, FILE.toml:NAME, path/to/file.py:Class or package.module:Class")


def run(args: argparse.Namespace, out: Write, err: Write) -> int:
    """Run `bulwark strategy ...`; the exit code."""
    match args.strategy_command:
        case "new":
            return cmd_new(args.name, args.dir, out, err)
        case "check":
            return cmd_check(args.spec, out, err)
    return 2


def class_name(name: str) -> str:
    """`my-momentum_2` → `MyMomentum2`."""
    return "".join(part.capitalize() for part in re.split(r"[-_]", name) if part) or "MyStrategy"


def cmd_new(name: str, folder: Path, out: Write, err: Write) -> int:
    """Write `<folder>/<name>.py` and `<folder>/<name>.toml`; never overwrite."""
    if not NAME_PATTERN.match(name):
        err(f"strategy name {name!r} must be lower case letters, digits, '-' or '_' (it is a subject token)")
        return 2
    name_file = name.replace("-", "_")
    cls = class_name(name)
    if cls[0].isdigit():
        cls = f"Strategy{cls}"
    code, table = folder / f"{name_file}.py", folder / f"{name_file}.toml"
    existing = [str(path) for path in (code, table) if path.exists()]
    if existing:
        err(f"not overwriting {', '.join(existing)}; choose another name or --dir")
        return 1
    values = {"name": name, "name_file": name_file, "cls": cls}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        code.write_text(TEMPLATE.format(**values))
        table.write_text(TOML_TEMPLATE.format(**values))
    except OSError as exc:
        err(f"cannot write into {folder}: {exc.strerror or exc}")
        return 1
    out(f"wrote {code} (class {cls}) and {table} (instance [{name}])")
    out(f"next: bulwark strategy check {table}")
    return 0


def cmd_check(spec: str, out: Write, err: Write) -> int:
    """Check SPEC; print what was found and every problem. 0: no problem."""
    from services.strategy import sdk
    from services.strategy.config import StrategyConfigError, instances_from_spec

    try:
        instances = instances_from_spec(spec)
    except StrategyConfigError as exc:
        err(f"problem: {exc}")
        return 1
    problems: list[str] = []
    for name, loaded in instances.items():
        if isinstance(loaded, StrategyConfigError):
            problems.append(str(loaded))
            continue
        found, signals = smoke_run(loaded)
        problems += [f"strategy {name!r} ({loaded.kind}): {problem}" for problem in found]
        if not found:
            out(f"ok: [{name}] kind {loaded.kind} (SDK {sdk.SDK_VERSION})")
            out(f"    parameters: {_parameters(loaded.config)}")
            out(f"    synthetic market: ran without error, {signals} signal(s)")
    for problem in problems:
        err(f"problem: {problem}")
    return 1 if problems else 0


def _parameters(config: StrategyConfig) -> str:
    return ", ".join(f"{f.name}={_plain(getattr(config, f.name))}" for f in dataclasses.fields(config))


def _plain(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {item}" for key, item in value.items()) + "}"
    if isinstance(value, tuple):
        return "[" + ", ".join(str(item) for item in value) + "]"
    return str(value)


def smoke_run(instance: InstanceConfig) -> tuple[list[str], int]:
    """Drive a fresh instance through a short synthetic market: what raised (empty: nothing), and
    how many signals it sent.

    The market: two minutes of trades around 60000 drifting up then down, a burst of forced
    orders, a few open-interest readings, a tick every half second with a VALID book, a fill of
    any entry it signals, and a data reset at the end. It checks that the code runs, not that it
    trades (a backtest on a recording tells that).
    """
    from services.strategy import sdk
    from services.strategy.domain import Signal

    strategy = instance.build()
    symbol = next(iter(instance.config.symbols), "BTCUSDT")
    problems: list[str] = []
    signals = 0

    def attempt(what: str, call: Callable[..., Any], *args: Any) -> Any:
        if problems:
            return None
        try:
            return call(*args)
        except Exception as exc:  # noqa: BLE001 - the strategy's own code: reported, as the runner counts a crash
            frames = traceback.extract_tb(exc.__traceback__)
            where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
            problems.append(f"{what} raised {type(exc).__name__}: {exc}{where}")
            return None

    now = SMOKE_START_NS
    attempt("enable", strategy.enable, now)
    for step in range(240):
        now = SMOKE_START_NS + step * NS // 2
        drift = Decimal(step if step < 120 else 240 - step)
        price = Decimal(60000) + drift * Decimal(5)
        attempt("on_trade", strategy.on_trade, symbol, now, price, Decimal("0.01"), step % 3 == 0)
        if 100 <= step < 104:
            attempt("on_liquidation", strategy.on_liquidation, symbol, now, sdk.Side.SELL, price, Decimal(2))
        if step % 20 == 0:
            attempt("on_open_interest", strategy.on_open_interest, symbol, now, Decimal(10_000) - drift)
        view = sdk.MarketView(
            hot_state_valid=True,
            best_bid=price - 1,
            best_ask=price + 1,
            mark_price=price,
            funding_rate=Decimal("0.0001"),
            open_interest=Decimal(10_000) - drift,
        )
        for action in attempt("on_tick", strategy.on_tick, now, {symbol: view}) or []:
            if isinstance(action, Signal) and action.symbol == symbol:  # filled at once
                signals += 1
                signed = action.quantity if action.side == sdk.Side.BUY else -action.quantity
                attempt("on_position", strategy.on_position, symbol, strategy.position(symbol) + signed, now)
    attempt("data_reset", strategy.data_reset, None, now, "check: data reset")
    attempt("market_state", strategy.market_state)
    return problems, signals

"""The strategy SDK and strategies of one's own: loading `file.py:Class` / `module:Class` kinds,
validating their parameters, the errors a broken file gives, snapshots of their memory, and
`bulwark strategy new|check`."""

from __future__ import annotations

import ast
import sys
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from entrypoints import strategy_cli
from proto.enums import HotStateStatus, Side, StrategyState
from proto.messages import SymbolHotState, SymbolsReply
from services.strategy import config as strategy_config
from services.strategy import sdk
from services.strategy import snapshot as snap
from services.strategy.adapters import market_views
from services.strategy.config import StrategyConfigError, instance_config, load_instances
from services.strategy.domain import Signal
from services.strategy.loader import load_strategy_class
from services.strategy.strategies import KINDS

ROOT = Path(__file__).resolve().parents[2]
S = 1_000_000_000
T0 = 1_700_000_000 * S

USER_STRATEGY = '''
from __future__ import annotations

from decimal import Decimal

import msgspec

from services.strategy import sdk


@sdk.parameters
class BurstParameters(sdk.StrategyConfig):
    min_trades: int
    threshold: Decimal = Decimal("0.5")
    long_only: bool = False


class Memory(msgspec.Struct, frozen=True):
    seen: dict[str, int] = {}


class Burst(sdk.Strategy):
    """Buys after `min_trades` taker buys."""

    config_class = BurstParameters
    config: BurstParameters
    memory_trades = 50
    market_state_type = Memory

    def __init__(self, name, config, **kwargs):
        super().__init__(name, config, **kwargs)
        self.seen: dict[str, int] = {}

    def observe_trade(self, symbol, ts_ns, price, quantity, buyer_is_maker):
        self.seen[symbol] = self.seen.get(symbol, 0) + 1

    def clear_events(self, symbols, now_ns):
        self.seen = {s: n for s, n in self.seen.items() if symbols is not None and s not in symbols}

    def market_state(self):
        return Memory(seen=dict(self.seen))

    def load_market_state(self, state):
        if isinstance(state, Memory):
            self.seen = dict(state.seen)

    def find_entry(self, symbol, now_ns, view):
        buys = [t for t in self.recent_trades(symbol) if t.taker_buy]
        if len(buys) < self.config.min_trades:
            return None
        return sdk.Entry(symbol, sdk.Side.BUY, self.config.quantity_for(symbol), f"{len(buys)} taker buys")
'''


@pytest.fixture(autouse=True)
def _own_modules_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    # A strategy file's folder joins sys.path (for its helper modules): not beyond one test.
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))


def _write(folder: Path, name: str, text: str) -> Path:
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def _toml(folder: Path, body: str) -> Path:
    return _write(folder, "strategies.toml", body)


# --------------------------------------------------------------------------- the SDK is enough


def test_builtin_kinds_when_imports_read_then_only_the_public_sdk_of_the_service() -> None:
    tree = ast.parse((ROOT / "services" / "strategy" / "strategies.py").read_text())
    project = {"services", "libs", "proto", "entrypoints"}
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.add(("." * node.level) + (node.module or ""))
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    own = {name for name in imported if name.startswith(".") or name.split(".")[0] in project}
    assert own == {".sdk"}


def test_sdk_when_imported_then_versioned_and_exports_what_a_strategy_needs() -> None:
    major, minor = sdk.SDK_VERSION.split(".")
    assert major.isdigit() and minor.isdigit()
    for name in ("Strategy", "StrategyConfig", "MarketView", "Entry", "Side", "Clock", "parameters", "NS"):
        assert name in sdk.__all__ and hasattr(sdk, name), name
    view = sdk.MarketView(hot_state_valid=True, best_bid=Decimal(1), best_ask=Decimal(3))
    assert view.mid() == Decimal(2) and view.bids == () and view.mark_price is None


def test_market_views_when_state_builder_has_mark_funding_and_oi_then_the_view_carries_them() -> None:
    reply = SymbolsReply(
        symbols={
            "BTCUSDT": SymbolHotState(
                symbol="BTCUSDT",
                hot_state=HotStateStatus.VALID,
                age_ms=1,
                last_update_id=1,
                mark_price=Decimal("60001.5"),
                funding_rate=Decimal("0.0001"),
                open_interest=Decimal(12345),
            )
        }
    )
    views = market_views(msgspec.json.encode(reply))
    assert not isinstance(views, Exception) and isinstance(views, dict)
    view = views["BTCUSDT"]
    assert (view.mark_price, view.funding_rate, view.open_interest) == (
        Decimal("60001.5"),
        Decimal("0.0001"),
        Decimal(12345),
    )


# --------------------------------------------------------------------------- loading


def test_file_kind_when_relative_to_the_toml_then_loaded_with_its_parameters(tmp_path: Path) -> None:
    _write(tmp_path / "mine", "burst.py", USER_STRATEGY)
    path = _toml(
        tmp_path,
        '[burst]\nkind = "mine/burst.py:Burst"\nmin_trades = 3\nthreshold = "0.7"\nlong_only = true\n'
        'symbols = ["BTCUSDT"]\n',
    )
    instance = load_instances(("burst",), path, environ={})["burst"]
    assert instance.kind == "mine/burst.py:Burst"
    config = instance.config
    assert (config.min_trades, config.threshold, config.long_only, config.symbols) == (  # type: ignore[attr-defined]
        3,
        Decimal("0.7"),
        True,
        ("BTCUSDT",),
    )
    strategy = instance.build(StrategyState.SCANNING)
    assert type(strategy).__name__ == "Burst"
    for i in range(3):
        strategy.on_trade("BTCUSDT", T0 + i, Decimal(100), Decimal(1), False)
    actions = strategy.on_tick(T0 + S, {"BTCUSDT": sdk.MarketView(hot_state_valid=True)})
    assert [a.side for a in actions if isinstance(a, Signal)] == [Side.BUY]


def test_file_kind_when_absolute_then_loaded_from_anywhere(tmp_path: Path) -> None:
    code = _write(tmp_path / "elsewhere", "burst.py", USER_STRATEGY)
    sections = {"burst": {"kind": f"{code}:Burst", "min_trades": 2}}
    assert type(instance_config("burst", sections, environ={}).build()).__name__ == "Burst"


def test_module_kind_when_on_the_python_path_then_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "desk_pkg", "__init__.py", "")
    _write(tmp_path / "desk_pkg", "burst_mod.py", USER_STRATEGY)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert load_strategy_class("desk_pkg.burst_mod:Burst").__name__ == "Burst"
        with pytest.raises(StrategyConfigError, match=r"module 'desk_pkg\.nope' not found"):
            load_strategy_class("desk_pkg.nope:Burst")
    finally:
        for name in [name for name in sys.modules if name.startswith("desk_pkg")]:
            del sys.modules[name]


def test_builtin_kinds_when_loaded_then_the_registered_classes() -> None:
    assert load_strategy_class("cascade-fade") is KINDS["cascade_fade"][0]
    assert load_strategy_class("trend") is KINDS["trend"][0]


@pytest.mark.parametrize(
    ("code", "kind", "expected"),
    [
        (None, "missing.py:Burst", r"missing\.py: no such strategy file"),
        ("def broken(:\n", "bad.py:Burst", r"bad\.py:1: syntax error"),
        ("import not_a_module_anywhere\n", "bad.py:Burst", r"bad\.py: failed to load: line 1: ModuleNotFoundError"),
        ("X = 1 / 0\n", "bad.py:Burst", r"bad\.py: failed to load: line 1: ZeroDivisionError"),
        (USER_STRATEGY, "bad.py:Nope", r"bad\.py: no class 'Nope'; strategy classes there: Burst"),
        ("class Burst:\n    pass\n", "bad.py:Burst", r"bad\.py:Burst is not a strategy"),
        ("from services.strategy.sdk import Strategy as Burst\n", "bad.py:Burst", "base class itself"),
        (
            USER_STRATEGY.replace("long_only: bool = False", "long_only: list[int] = None"),
            "bad.py:Burst",
            r"parameter 'long_only' has type list\[int\]",
        ),
        (USER_STRATEGY, "sub/bad.txt:Burst", r"must be a \.py file"),
        (USER_STRATEGY, "bad.py:not a name", "expected 'path/to/file.py:ClassName'"),
        (None, "no_such_kind", "unknown kind 'no_such_kind'"),
    ],
)
def test_kind_when_the_file_or_class_is_broken_then_a_config_error_naming_it(
    tmp_path: Path, code: str | None, kind: str, expected: str
) -> None:
    if code is not None:
        _write(tmp_path, kind.split(":")[0], code)
    path = _toml(tmp_path, f'[mine]\nkind = "{kind}"\nmin_trades = 1\n')
    with pytest.raises(StrategyConfigError, match=expected) as raised:
        load_instances(("mine",), path, environ={})
    assert str(raised.value).startswith("strategy 'mine':")


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("min_trades = 1\nthreshhold = 2\n", r"unknown parameter\(s\) threshhold; known: .*min_trades"),
        ('min_trades = 1\nthreshold = "a lot"\n', r"\[mine\]\.threshold: not a number"),
        ("min_trades = 1.5\n", r"\[mine\]\.min_trades: expected a whole number"),
        ('min_trades = 1\nlong_only = "yes"\n', r"\[mine\]\.long_only: expected true or false"),
        ("threshold = 1\n", r"missing parameter\(s\) min_trades"),
        ("min_trades = 1\nsymbols = 5\n", r"\[mine\]\.symbols: expected a list of symbols"),
    ],
)
def test_parameters_when_wrong_then_the_same_clear_errors_as_builtins(
    tmp_path: Path, table: str, expected: str
) -> None:
    _write(tmp_path, "burst.py", USER_STRATEGY)
    path = _toml(tmp_path, f'[mine]\nkind = "burst.py:Burst"\n{table}')
    with pytest.raises(StrategyConfigError, match=expected):
        load_instances(("mine",), path, environ={})


def test_constructor_when_it_raises_then_a_config_error_at_load(tmp_path: Path) -> None:
    code = USER_STRATEGY.replace("self.seen: dict[str, int] = {}", "raise RuntimeError('no broker key')")
    _write(tmp_path, "burst.py", code)
    path = _toml(tmp_path, '[mine]\nkind = "burst.py:Burst"\nmin_trades = 1\n')
    with pytest.raises(StrategyConfigError, match="cannot be built: RuntimeError: no broker key"):
        load_instances(("mine",), path, environ={})


# --------------------------------------------------------------------------- memory and snapshots


def test_own_strategy_when_snapshotted_then_its_memory_and_recent_trades_come_back(tmp_path: Path) -> None:
    _write(tmp_path, "burst.py", USER_STRATEGY)
    instance = instance_config(
        "burst", {"burst": {"kind": "burst.py:Burst", "min_trades": 99}}, environ={}, base_dir=tmp_path
    )
    strategy = instance.build(StrategyState.SCANNING)
    for i in range(60):
        strategy.on_trade("BTCUSDT", T0 + i, Decimal(100 + i), Decimal(1), i % 2 == 0)
    strategy.on_liquidation("BTCUSDT", T0 + 61, Side.SELL, Decimal(90), Decimal(2))
    assert len(strategy.recent_trades("BTCUSDT")) == 50  # memory_trades bounds it
    encoded = snap.encode_snapshot(snap.capture(strategy, instance.kind, 7, T0 + S))

    restored = instance.build()
    snap.restore(restored, snap.decode_snapshot(encoded))
    assert restored.recent_trades("BTCUSDT") == strategy.recent_trades("BTCUSDT")
    assert restored.recent_liquidations("BTCUSDT") == strategy.recent_liquidations("BTCUSDT")
    assert restored.seen == {"BTCUSDT": 60}  # type: ignore[attr-defined]

    restored.data_reset(["BTCUSDT"], T0 + 2 * S, "book resync")
    assert restored.recent_trades("BTCUSDT") == () and restored.seen == {}  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- bulwark strategy new | check


def _run(*argv: str) -> tuple[int, list[str], list[str]]:
    out: list[str] = []
    err: list[str] = []
    parser = strategy_cli.argparse.ArgumentParser()
    strategy_cli.add_parser(parser.add_subparsers(dest="command"))
    return strategy_cli.run(parser.parse_args(["strategy", *argv]), out.append, err.append), out, err


def test_template_when_written_then_check_passes_and_it_signals(tmp_path: Path) -> None:
    code, _, err = _run("new", "my-momentum", "--dir", str(tmp_path / "desk"))
    assert code == 0, err
    assert (tmp_path / "desk" / "my_momentum.py").is_file()
    code, out, err = _run("check", str(tmp_path / "desk" / "my_momentum.toml"))
    assert code == 0, err
    assert out[0] == f"ok: [my-momentum] kind my_momentum.py:MyMomentum (SDK {sdk.SDK_VERSION})"
    signals = int(out[2].split(", ")[1].split()[0])
    assert signals > 0  # the template trades, not only loads
    code, _, err = _run("new", "my-momentum", "--dir", str(tmp_path / "desk"))
    assert code == 1 and "not overwriting" in err[0]


def test_check_when_the_strategy_raises_or_the_file_is_broken_then_nonzero_with_each_problem(tmp_path: Path) -> None:
    _write(tmp_path, "burst.py", USER_STRATEGY.replace('f"{len(buys)} taker buys"', "1 / 0"))
    _write(tmp_path, "broken.py", "def oops(:\n")
    path = _toml(
        tmp_path,
        '[burst]\nkind = "burst.py:Burst"\nmin_trades = 1\n[broken]\nkind = "broken.py:Broken"\n[trend]\nfast_s = 10\n',
    )
    code, out, err = _run("check", str(path))
    assert code == 1
    assert any("strategy 'burst'" in line and "on_tick raised ZeroDivisionError" in line for line in err), err
    assert any("broken.py:1: syntax error" in line for line in err), err
    assert out[0].startswith("ok: [trend] kind trend")
    code, out, err = _run("check", f"{path}:trend")
    assert code == 0 and len([line for line in out if line.startswith("ok:")]) == 1
    code, _, err = _run("check", f"{path}:nope")
    assert code == 1 and "no table [nope]" in err[0]


def test_check_when_a_class_alone_then_checked_with_its_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path, "burst.py", USER_STRATEGY.replace("min_trades: int\n", "min_trades: int = 5\n"))
    monkeypatch.chdir(tmp_path)
    code, out, err = _run("check", "burst.py:Burst")
    assert code == 0, err
    assert out[0].startswith("ok: [check] kind burst.py:Burst") and "min_trades=5" in out[1]
    _write(tmp_path, "required.py", USER_STRATEGY)
    code, _, err = _run("check", "required.py:Burst")
    assert code == 1 and "missing parameter(s) min_trades" in err[0]


def test_cli_name_pattern_when_compared_then_the_config_one() -> None:
    assert strategy_cli.NAME_PATTERN.pattern == strategy_config.NAME_PATTERN.pattern


def test_bulwark_up_check_when_a_path_kind_then_accepted_and_a_broken_file_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from entrypoints.cli import _strategy_config_problem

    _write(tmp_path / "desk", "burst.py", USER_STRATEGY)
    good = _toml(tmp_path, '[mine]\nkind = "desk/burst.py:Burst"\nmin_trades = 2\n')
    monkeypatch.chdir(ROOT)  # `bulwark up` runs from anywhere: the path is the TOML's
    assert _strategy_config_problem(("mine", "trend"), good) is None
    _write(tmp_path / "desk", "broken.py", "import no_such_dependency\n")
    broken = _write(tmp_path / "other", "strategies.toml", '[mine]\nkind = "../desk/broken.py:Burst"\n')
    problem = _strategy_config_problem(("mine",), broken)
    assert problem is not None and "desk/broken.py: failed to load: line 1: ModuleNotFoundError" in problem


def test_crash_when_the_class_cannot_be_rebuilt_then_failed_not_a_runner_error(tmp_path: Path) -> None:
    from services.strategy.state import Crashed, Enabled, RunnerState, apply

    code = USER_STRATEGY.replace(
        "        self.seen: dict[str, int] = {}\n",
        "        self.seen: dict[str, int] = {}\n        if getattr(Burst, 'refuse', False):\n"
        "            raise RuntimeError('no broker key now')\n",
    )
    _write(tmp_path, "burst.py", code)
    instance = instance_config(
        "burst", {"burst": {"kind": "burst.py:Burst", "min_trades": 1}}, environ={}, base_dir=tmp_path
    )
    state = RunnerState.fresh(instance, "binance-usdm")
    apply(state, Enabled(T0, "start"))
    type(state.strategy).refuse = True  # type: ignore[attr-defined]
    apply(state, Crashed(T0 + S, "crash: ValueError: bug", "token"))
    assert state.strategy.state == StrategyState.FAILED
    assert "cannot be rebuilt after a crash: RuntimeError: no broker key now" in state.intents[-1].reason  # type: ignore[union-attr]
    assert len(state.crash_record.crashes) == 1


def test_depth_when_the_strategy_asks_for_levels_then_the_tick_view_carries_the_book(tmp_path: Path) -> None:
    import asyncio
    from types import SimpleNamespace

    from libs.logging import get_logger
    from proto.replies import BookReply, BookRequest
    from services.strategy.handlers import StrategyService

    _write(tmp_path, "deep.py", USER_STRATEGY.replace("    memory_trades = 50\n", "    depth_levels = 2\n"))
    instance = instance_config(
        "deep", {"deep": {"kind": "deep.py:Burst", "min_trades": 1, "symbols": ["BTCUSDT"]}}, base_dir=tmp_path
    )
    asked: list[BookRequest] = []

    class StateBuilder:
        async def request(self, subject: str, payload: bytes, timeout_s: float) -> bytes:
            request = msgspec.json.decode(payload, type=BookRequest)
            asked.append(request)
            levels = [(Decimal(100 - i), Decimal(i + 1)) for i in range(request.depth or 0)]
            asks = [(Decimal(101 + i), Decimal(i + 1)) for i in range(request.depth or 0)]
            reply = BookReply(symbol=request.symbol, status=HotStateStatus.VALID, bids=levels, asks=asks)
            return msgspec.json.encode(reply)

    runner = SimpleNamespace(strategy=instance.build(), bus=StateBuilder(), log=get_logger("test"))
    service = StrategyService(runner)  # type: ignore[arg-type]
    market = {
        "BTCUSDT": sdk.MarketView(hot_state_valid=True, best_bid=Decimal(100), best_ask=Decimal(101)),
        "ETHUSDT": sdk.MarketView(hot_state_valid=True),  # not traded by the instance: no request
    }
    views = asyncio.run(service.with_depth(market))
    assert [(r.symbol, r.depth) for r in asked] == [("BTCUSDT", 2)]
    assert views["BTCUSDT"].bids == ((Decimal(100), Decimal(1)), (Decimal(99), Decimal(2)))
    assert views["BTCUSDT"].asks[0] == (Decimal(101), Decimal(1)) and views["ETHUSDT"].bids == ()

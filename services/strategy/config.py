"""Strategy instances and their parameters: a TOML file, then `BULWARK_<KIND>_<FIELD>` overrides.

The file (`BULWARK_STRATEGY_CONFIG`, `bulwark up --strategy-config`) has one table per instance,
named like the instance (the process runs as component `strategy-<name>`):

    [cascade-fade]
    kind = "cascade_fade"          # optional when the name is a kind ("trend", "cascade-fade")
    symbols = ["BTCUSDT"]
    stop_loss_pct = "0.3"
    [cascade-fade.quantities]
    BTCUSDT = "0.002"

    [mine]
    kind = "strategies/mine.py:Breakout"   # a trader's own class (`services.strategy.loader`)
    lookback_s = 30                        # its declared parameters (`config_class`)

Without a file, or for an instance the file does not name, the kind's defaults apply. Unknown,
missing or mistyped parameters and impossible values are refused with a message naming them
(docs/strategies.md lists all).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from proto.enums import StrategyState

from .domain import Strategy, StrategyConfig
from .loader import StrategyConfigError, builtin_kind, is_path_kind, load_strategy_class, parameter_hints
from .strategies import KINDS

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
DEFAULT_INSTANCES: tuple[str, ...] = ("cascade-fade", "trend")
"""What `bulwark up` runs when not told otherwise."""


@dataclass(frozen=True)
class InstanceConfig:
    """One configured strategy instance.

    Attributes:
        name: the instance name (component `strategy-<name>`).
        kind: a built-in kind, or the `file.py:Class` / `module:Class` its table names.
        config: its validated parameters.
        strategy_class: the class it runs (None: the built-in `kind`'s).
    """

    name: str
    kind: str
    config: StrategyConfig
    strategy_class: type[Strategy] | None = None

    def build(self, state: StrategyState = StrategyState.DISABLED) -> Strategy:
        """A fresh strategy object (no setups, no windows)."""
        strategy_cls = self.strategy_class or KINDS[self.kind][0]
        return strategy_cls(self.name, self.config, state=state)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The parsed TOML file (empty path: no file).

    Raises:
        StrategyConfigError: missing, unreadable or not TOML.
    """
    if not str(path):
        return {}
    try:
        with Path(path).open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise StrategyConfigError(f"strategy config {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise StrategyConfigError(f"strategy config {path} is not valid TOML: {exc}") from exc


def _kind_of(name: str, section: Mapping[str, Any], base_dir: Path | None) -> tuple[str, type[Strategy]]:
    raw = section.get("kind", name)
    if not isinstance(raw, str):
        raise StrategyConfigError(f"strategy {name!r}: `kind` must be a string, got {raw!r}")
    builtin = builtin_kind(raw)
    if builtin is not None:
        return builtin, KINDS[builtin][0]
    if not is_path_kind(raw):
        raise StrategyConfigError(
            f"strategy {name!r}: unknown kind {raw!r}; known kinds: {', '.join(sorted(KINDS))}, "
            f"or your own class as 'path/to/file.py:ClassName' or 'package.module:ClassName' "
            f"(set `kind` in its [{name}] table)"
        )
    try:
        return raw, load_strategy_class(raw, base_dir)
    except StrategyConfigError as exc:
        raise StrategyConfigError(f"strategy {name!r}: {exc}") from exc


def _decimal(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise StrategyConfigError(f"{where}: expected a number, got {value!r}")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation as exc:
        raise StrategyConfigError(f"{where}: not a number: {value!r}") from exc
    if not number.is_finite() or number < 0:
        raise StrategyConfigError(f"{where}: must be a finite number >= 0, got {value!r}")
    return number


def _symbols(value: Any, where: str) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(item, str) for item in items):
        raise StrategyConfigError(f"{where}: expected a list of symbols, got {value!r}")
    return tuple(item.strip().upper() for item in items if item.strip())


def _quantities(value: Any, where: str) -> dict[str, Decimal]:
    if isinstance(value, str):  # env form: SYM:QTY,SYM:QTY
        pairs = [item.split(":", 1) for item in value.split(",") if item.strip()]
        if any(len(pair) != 2 for pair in pairs):
            raise StrategyConfigError(f"{where}: expected SYMBOL:QTY[,SYMBOL:QTY...], got {value!r}")
        value = {symbol: quantity for symbol, quantity in pairs}
    if not isinstance(value, Mapping):
        raise StrategyConfigError(f"{where}: expected a table SYMBOL = quantity, got {value!r}")
    result = {
        str(symbol).strip().upper(): _decimal(quantity, f"{where}.{symbol}") for symbol, quantity in value.items()
    }
    if any(quantity <= 0 for quantity in result.values()):
        raise StrategyConfigError(f"{where}: quantities must be > 0")
    return result


def _convert(hint: Any, value: Any, where: str) -> Any:
    if hint is bool:
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
            return value.strip().lower() in ("true", "1")  # env form
        if not isinstance(value, bool):
            raise StrategyConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is Decimal:
        return _decimal(value, where)
    if hint is float:
        return float(_decimal(value, where))
    if hint is int:
        number = _decimal(value, where)
        if number != number.to_integral_value():
            raise StrategyConfigError(f"{where}: expected a whole number, got {value!r}")
        return int(number)
    if hint is str:
        if not isinstance(value, str):
            raise StrategyConfigError(f"{where}: expected a string, got {value!r}")
        return value.strip()
    if typing.get_origin(hint) is tuple:
        return _symbols(value, where)
    if typing.get_origin(hint) in (Mapping, dict):
        return _quantities(value, where)
    raise StrategyConfigError(f"{where}: unsupported parameter type {hint}")  # pragma: no cover


def instance_config(
    name: str,
    sections: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> InstanceConfig:
    """The parameters of instance `name`: its class's declared defaults, then its file table, then
    env overrides (built-in kinds only).

    Args:
        name: instance name (lower case, digits, `-`, `_`).
        sections: the parsed config file (instance name → table).
        environ: environment for `BULWARK_<KIND>_<FIELD>` overrides (default `os.environ`).
        base_dir: the config file's folder, which a `kind = "file.py:Class"` is relative to.

    Raises:
        StrategyConfigError: bad name, unknown kind, a strategy file that does not load, unknown,
            missing or mistyped parameter, or impossible value.
    """
    if not NAME_PATTERN.match(name):
        raise StrategyConfigError(
            f"strategy name {name!r} must be lower case letters, digits, '-' or '_' (it is a subject token)"
        )
    section = sections.get(name, {})
    if not isinstance(section, Mapping):
        raise StrategyConfigError(f"strategy config: [{name}] must be a table")
    kind, strategy_cls = _kind_of(name, section, base_dir)
    config_cls = strategy_cls.config_class
    hints = parameter_hints(config_cls, kind)
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    known = set(fields)
    unknown = sorted(set(section) - known - {"kind"})
    if unknown:
        raise StrategyConfigError(
            f"strategy {name!r} ({kind}): unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    values = {key: _convert(hints[key], raw, f"[{name}].{key}") for key, raw in section.items() if key != "kind"}
    env = os.environ if environ is None else environ
    # `BULWARK_<KIND>_<FIELD>` names a built-in kind; a class of one's own is configured by its table.
    prefix = f"BULWARK_{kind.upper()}_" if builtin_kind(kind) else None
    # Per-symbol tables (quantities, tick sizes) add to and override the defaults, they do not replace them.
    tables = {key: _default_table(fields[key]) for key in known if _is_table(hints[key])}
    for key, table in tables.items():
        table.update(values.get(key, {}))
    for key in sorted(known) if prefix else ():
        raw_env = env.get(f"{prefix}{key.upper()}")
        if raw_env is None:
            continue
        values[key] = _convert(hints[key], raw_env, f"{prefix}{key.upper()}")
        if key in tables:
            tables[key].update(values[key])
    values.update(tables)
    missing = sorted(key for key, f in fields.items() if key not in values and _required(f))
    if missing:
        raise StrategyConfigError(
            f"strategy {name!r} ({kind}): missing parameter(s) {', '.join(missing)} (set them in its [{name}] table)"
        )
    try:
        config = config_cls(**values)
    except Exception as exc:  # a class's own validation (__post_init__) refusing values
        raise StrategyConfigError(f"strategy {name!r} ({kind}): parameters refused: {exc}") from exc
    if strategy_cls is not KINDS.get(kind, (None,))[0]:
        _try_build(name, kind, strategy_cls, config)
    return InstanceConfig(name, kind, config, strategy_cls)


def _is_table(hint: Any) -> bool:
    return typing.get_origin(hint) in (Mapping, dict)


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _default_table(f: dataclasses.Field[Any]) -> dict[str, Decimal]:
    if f.default_factory is not dataclasses.MISSING:
        return dict(f.default_factory())
    return dict(f.default) if isinstance(f.default, Mapping) else {}


def _try_build(name: str, kind: str, strategy_cls: type[Strategy], config: StrategyConfig) -> None:
    # A constructor that raises would fail every restart of the process: refuse it here, at load.
    try:
        strategy_cls(name, config)
    except Exception as exc:  # user code: any failure is a config error
        raise StrategyConfigError(f"strategy {name!r} ({kind}): cannot be built: {type(exc).__name__}: {exc}") from exc


def load_instances(
    names: tuple[str, ...], path: str | Path = "", environ: Mapping[str, str] | None = None
) -> dict[str, InstanceConfig]:
    """Every named instance, validated (used by `bulwark up` before anything starts).

    Raises:
        StrategyConfigError: any instance cannot be configured, or a name repeats.
    """
    if len(set(names)) != len(names):
        raise StrategyConfigError(f"strategy names repeat: {', '.join(names)}")
    sections = read_config_file(path)
    base_dir = config_dir(path)
    return {name: instance_config(name, sections, environ, base_dir) for name in names}


def config_dir(path: str | Path) -> Path | None:
    """The folder a config file's relative strategy paths start from (None without a file: cwd)."""
    return Path(path).resolve().parent if str(path) else None


def instances_from_spec(spec: str) -> dict[str, InstanceConfig | StrategyConfigError]:
    """Every instance a SPEC names (`FILE.toml`, `FILE.toml:NAME`, `path/to/file.py:Class`,
    `package.module:Class` or a built-in kind), each configured or with the error that stops it;
    `bulwark strategy check` and `bulwark backtest` read SPECs through this one function.

    Raises:
        StrategyConfigError: SPEC itself cannot be read.
    """
    path_part, _, name = spec.partition(".toml:") if ".toml:" in spec else (spec, "", "")
    if ".toml:" in spec:
        path_part += ".toml"
    if path_part.endswith(".toml"):
        path = Path(path_part)
        sections = read_config_file(path)
        names = [name] if name else [key for key, value in sections.items() if isinstance(value, dict)]
        if not names:
            raise StrategyConfigError(f"{path}: no strategy table in it (one [name] table per instance)")
        if name and name not in sections:
            raise StrategyConfigError(f"{path}: no table [{name}]; tables: {', '.join(sorted(sections)) or 'none'}")
        results: dict[str, InstanceConfig | StrategyConfigError] = {}
        for instance in names:
            try:
                results[instance] = instance_config(instance, sections, environ={}, base_dir=config_dir(path))
            except StrategyConfigError as exc:
                results[instance] = exc
        return results
    if not is_path_kind(spec) and builtin_kind(spec) is None:
        raise StrategyConfigError(
            f"unknown kind {spec!r} (built-in: {', '.join(sorted(KINDS))}); "
            "expected FILE.toml, FILE.toml:NAME, path/to/file.py:Class, package.module:Class or a built-in kind"
        )
    strategy_cls = load_strategy_class(spec, Path.cwd())
    instance = "check" if is_path_kind(spec) else spec
    try:
        return {instance: instance_config(instance, {instance: {"kind": spec}}, environ={}, base_dir=Path.cwd())}
    except StrategyConfigError as exc:
        hint = " (a class alone is checked with its defaults; give them in a TOML table)"
        return {strategy_cls.__name__: StrategyConfigError(f"{exc}{hint}")}

"""Strategy instances and their parameters: a TOML file, then `BULWARK_<KIND>_<FIELD>` overrides.

The file (`BULWARK_STRATEGY_CONFIG`, `bulwark up --strategy-config`) has one table per instance,
named like the instance (the process runs as component `strategy-<name>`):

    [cascade-fade]
    kind = "cascade_fade"          # optional when the name is a kind ("trend", "cascade-fade")
    symbols = ["BTCUSDT"]
    stop_loss_pct = "0.3"
    [cascade-fade.quantities]
    BTCUSDT = "0.002"

Without a file, or for an instance the file does not name, the kind's defaults apply. Unknown
keys and impossible values are refused with a message naming them (docs/strategies.md lists all).
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
from .strategies import KINDS

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
DEFAULT_INSTANCES: tuple[str, ...] = ("cascade-fade", "trend")
"""What `bulwark up` runs when not told otherwise."""


class StrategyConfigError(ValueError):
    """The strategy configuration cannot be used; the message says what to change."""


@dataclass(frozen=True)
class InstanceConfig:
    """One configured strategy instance."""

    name: str
    kind: str
    config: StrategyConfig

    def build(self, state: StrategyState = StrategyState.DISABLED) -> Strategy:
        """A fresh strategy object (no setups, no windows)."""
        strategy_cls, _ = KINDS[self.kind]
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


def _kind_of(name: str, section: Mapping[str, Any]) -> str:
    raw = section.get("kind", name)
    kind = str(raw).replace("-", "_")
    if kind not in KINDS:
        raise StrategyConfigError(
            f"strategy {name!r}: unknown kind {raw!r}; known kinds: {', '.join(sorted(KINDS))} "
            f"(set `kind` in its [{name}] table)"
        )
    return kind


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
    if hint == tuple[str, ...]:
        return _symbols(value, where)
    if hint == Mapping[str, Decimal]:
        return _quantities(value, where)
    raise StrategyConfigError(f"{where}: unsupported parameter type {hint}")  # pragma: no cover


def instance_config(name: str, sections: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> InstanceConfig:
    """The parameters of instance `name`: kind defaults, then its file table, then env overrides.

    Args:
        name: instance name (lower case, digits, `-`, `_`).
        sections: the parsed config file (instance name → table).
        environ: environment for `BULWARK_<KIND>_<FIELD>` overrides (default `os.environ`).

    Raises:
        StrategyConfigError: bad name, unknown kind, unknown key or impossible value.
    """
    if not NAME_PATTERN.match(name):
        raise StrategyConfigError(
            f"strategy name {name!r} must be lower case letters, digits, '-' or '_' (it is a subject token)"
        )
    section = sections.get(name, {})
    if not isinstance(section, Mapping):
        raise StrategyConfigError(f"strategy config: [{name}] must be a table")
    kind = _kind_of(name, section)
    _, config_cls = KINDS[kind]
    hints = typing.get_type_hints(config_cls)
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(section) - known - {"kind"})
    if unknown:
        raise StrategyConfigError(
            f"strategy {name!r} ({kind}): unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    values = {key: _convert(hints[key], raw, f"[{name}].{key}") for key, raw in section.items() if key != "kind"}
    env = os.environ if environ is None else environ
    prefix = f"BULWARK_{kind.upper()}_"
    defaults = config_cls()
    # Per-symbol tables (quantities, tick sizes) add to and override the defaults, they do not replace them.
    tables = {key: dict(getattr(defaults, key)) for key in known if hints[key] == Mapping[str, Decimal]}
    for key, table in tables.items():
        table.update(values.get(key, {}))
    for key in sorted(known):
        raw_env = env.get(prefix + key.upper())
        if raw_env is None:
            continue
        values[key] = _convert(hints[key], raw_env, prefix + key.upper())
        if key in tables:
            tables[key].update(values[key])
    values.update(tables)
    return InstanceConfig(name, kind, config_cls(**values))


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
    return {name: instance_config(name, sections, environ) for name in names}

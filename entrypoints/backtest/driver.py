"""The one seam between `bulwark backtest` and strategy code: a SPEC becomes a configured strategy
instance (`services.strategy.config.InstanceConfig`), the same object the strategy service runs.

A SPEC is, for now:

* a strategy TOML file (the format `services.strategy.config` reads): its one table is the
  instance; a file with several tables needs `--config FILE` and the table's name as SPEC;
* an instance name looked up in `--config FILE` (absent there: the kind's defaults);
* a built-in kind name (`trend`, `cascade-fade`, `imbalance`) with its default parameters.

Environment overrides (`BULWARK_<KIND>_<FIELD>`) are not applied: a backtest depends on its
files only, so the same command gives the same trades on any machine. Loading strategies from
user code (`kind = "file.py:Class"`) plugs in here, in `strategy_from_spec`, and nowhere else.
"""

from __future__ import annotations

from pathlib import Path

from services.strategy.config import InstanceConfig, StrategyConfigError, instance_config, read_config_file

__all__ = ["StrategyConfigError", "strategy_from_spec"]


def strategy_from_spec(spec: str, config: str | Path = "") -> InstanceConfig:
    """The strategy instance a backtest runs.

    Args:
        spec: a strategy TOML file, or an instance or kind name.
        config: a strategy TOML file the name is looked up in ("" : none).

    Raises:
        StrategyConfigError: unreadable file, unknown kind or parameter, impossible value, or a
            file that names several instances without saying which one.
    """
    spec = spec.strip()
    if not spec:
        raise StrategyConfigError("--strategy is empty: give a strategy TOML file or a kind name")
    if spec.endswith(".toml") or Path(spec).is_file():
        if str(config):
            raise StrategyConfigError(f"--strategy {spec} is a file: leave out --config, or name a table of it")
        sections = read_config_file(spec)
        if len(sections) != 1:
            names = ", ".join(sorted(sections)) or "none"
            raise StrategyConfigError(
                f"strategy file {spec} must hold exactly one [instance] table (it holds: {names}); "
                f"or run `--config {spec} --strategy NAME`"
            )
        (name,) = sections
        return instance_config(name, sections, environ={})
    return instance_config(spec, read_config_file(config), environ={})

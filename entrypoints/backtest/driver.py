"""The one seam between `bulwark backtest` and strategy code: a SPEC becomes a configured strategy
instance (`services.strategy.config.InstanceConfig`), the same object the strategy service runs.

A SPEC is what `bulwark strategy check` takes (`services.strategy.config.instances_from_spec`):

* a strategy TOML file with one table, or `FILE.toml:NAME` for one table of several;
* a strategy class of one's own, `path/to/file.py:Class` or `package.module:Class`, with its
  declared defaults;
* a built-in kind name (`trend`, `cascade-fade`, `imbalance`) with its default parameters;
* with `--config FILE`: an instance name looked up in that file (absent there: the kind's
  defaults), its `kind = "file.py:Class"` relative to the file's folder.

Environment overrides (`BULWARK_<KIND>_<FIELD>`) are not applied: a backtest depends on its
files only, so the same command gives the same trades on any machine.
"""

from __future__ import annotations

from pathlib import Path

from services.strategy.config import (
    InstanceConfig,
    StrategyConfigError,
    config_dir,
    instance_config,
    instances_from_spec,
    read_config_file,
)

__all__ = ["StrategyConfigError", "strategy_from_spec"]


def strategy_from_spec(spec: str, config: str | Path = "") -> InstanceConfig:
    """The strategy instance a backtest runs.

    Args:
        spec: a SPEC as above.
        config: a strategy TOML file an instance name is looked up in ("" : none).

    Raises:
        StrategyConfigError: unreadable file, strategy code that does not load, unknown kind or
            parameter, impossible value, or a SPEC that names several instances.
    """
    spec = spec.strip()
    if not spec:
        raise StrategyConfigError("--strategy is empty: give a strategy TOML file, a file.py:Class or a kind name")
    if str(config):
        if spec.endswith(".toml") or ".toml:" in spec or Path(spec).is_file():
            raise StrategyConfigError(f"--strategy {spec} is a file: leave out --config, or name a table of it")
        return instance_config(spec, read_config_file(config), environ={}, base_dir=config_dir(config))
    instances = instances_from_spec(spec)
    if len(instances) != 1:
        raise StrategyConfigError(
            f"strategy file {spec} must name exactly one instance; it holds {', '.join(sorted(instances))}: "
            f"run `--strategy {spec}:NAME`, or `--config {spec} --strategy NAME`"
        )
    (loaded,) = instances.values()
    if isinstance(loaded, StrategyConfigError):
        raise loaded
    return loaded

"""Strategy instance configuration: TOML tables per instance, kind defaults, env overrides, clear errors."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from services.strategy.config import StrategyConfigError, instance_config, load_instances, read_config_file
from services.strategy.strategies import CascadeFadeConfig, CascadeFadeStrategy, TrendConfig

TOML = """
[cascade-fade]
symbols = ["btcusdt"]
stop_loss_pct = "0.5"
min_liquidations = 4
quiet_s = 1.5

[cascade-fade.quantities]
BTCUSDT = "0.004"

[fast-trend]
kind = "trend"
fast_s = 5
min_gap_bps = 2.5
"""


def test_file_when_instances_configured_then_parameters_applied_and_defaults_kept(tmp_path: Path) -> None:
    path = tmp_path / "strategies.toml"
    path.write_text(TOML)
    instances = load_instances(("cascade-fade", "fast-trend"), path, environ={})
    fade = instances["cascade-fade"]
    assert fade.kind == "cascade_fade" and isinstance(fade.config, CascadeFadeConfig)
    assert fade.config.symbols == ("BTCUSDT",)
    assert (fade.config.stop_loss_pct, fade.config.min_liquidations, fade.config.quiet_s) == (Decimal("0.5"), 4, 1.5)
    assert fade.config.quantity_for("BTCUSDT") == Decimal("0.004")
    assert fade.config.quantity_for("ETHUSDT") == Decimal("0.01")  # default kept
    assert isinstance(fade.build(), CascadeFadeStrategy)
    trend = instances["fast-trend"]
    assert trend.kind == "trend" and isinstance(trend.config, TrendConfig)
    assert (trend.config.fast_s, trend.config.min_gap_bps, trend.config.slow_s) == (5.0, Decimal("2.5"), 90.0)


def test_no_file_when_name_is_a_kind_then_defaults() -> None:
    instances = load_instances(("cascade-fade", "trend", "imbalance"), "", environ={})
    assert [i.kind for i in instances.values()] == ["cascade_fade", "trend", "imbalance"]


def test_env_when_kind_parameter_set_then_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(TOML)
    config = instance_config("cascade-fade", read_config_file(path), {"BULWARK_CASCADE_FADE_STOP_LOSS_PCT": "0.8"})
    assert config.config.stop_loss_pct == Decimal("0.8")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "name", "message"),
    [
        ("[x]\nkind = 'martingale'\n", "x", "unknown kind 'martingale'"),
        ("", "momentum", "unknown kind 'momentum'"),
        ("[trend]\nfast = 5\n", "trend", "unknown parameter(s) fast"),
        ("[trend]\nfast_s = 'soon'\n", "trend", "[trend].fast_s: not a number"),
        ("[trend]\nfast_s = -1\n", "trend", "must be a finite number >= 0"),
        ("[trend]\nquantities = { BTCUSDT = 0 }\n", "trend", "quantities must be > 0"),
        ("[cascade-fade]\nmin_liquidations = 2.5\n", "cascade-fade", "whole number"),
        ("", "Bad.Name", "must be lower case"),
    ],
)
def test_config_when_invalid_then_error_names_the_problem(tmp_path: Path, text: str, name: str, message: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(StrategyConfigError) as error:
        load_instances((name,), path, environ={})
    assert message in str(error.value)


def test_file_when_missing_or_not_toml_then_error(tmp_path: Path) -> None:
    with pytest.raises(StrategyConfigError, match="No such file"):
        read_config_file(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[trend\n")
    with pytest.raises(StrategyConfigError, match="not valid TOML"):
        read_config_file(tmp_path / "bad.toml")


def test_names_when_repeated_then_error() -> None:
    with pytest.raises(StrategyConfigError, match="repeat"):
        load_instances(("trend", "trend"), "", environ={})

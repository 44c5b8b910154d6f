"""libs.bounds: the bounds of values entering from outside, and their use by the settings and the CLI."""

from __future__ import annotations

import argparse
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from entrypoints.cli import _bounded_int, _positive_float
from libs.bounds import BoundsError, check_decimal, check_int, check_json_depth, check_text, json_depth, parse_decimal
from libs.settings import Settings, SettingsError


@pytest.mark.parametrize(
    "raw", ["1e1000000", "1e999999", "1e-20000", "NaN", "sNaN", "Infinity", "-1", "1e19", "0", "1.0000000000000000001"]
)
def test_check_decimal_when_out_of_bounds_then_refused_without_arithmetic(raw: str) -> None:
    with pytest.raises(BoundsError) as refused:
        check_decimal(Decimal(raw), "quantity", allow_zero=False)
    assert refused.value.field == "quantity"


@pytest.mark.parametrize("raw", ["0.01", "65000.5", "1.000000000000000000000000", "123456789012345678", "1e-18"])
def test_check_decimal_when_within_bounds_then_value_kept(raw: str) -> None:
    assert check_decimal(Decimal(raw), allow_zero=False) == Decimal(raw)


@given(st.decimals(allow_nan=True, allow_infinity=True))
def test_check_decimal_when_anything_then_accepted_values_normalise_exactly(value: Decimal) -> None:
    try:
        check_decimal(value, allow_negative=True)
    except BoundsError:
        return
    assert Decimal(format(value.normalize(), "f")) == value


def test_check_int_text_and_json_depth() -> None:
    assert check_int(2**63 - 1) == 2**63 - 1
    with pytest.raises(BoundsError):
        check_int(2**63)
    with pytest.raises(BoundsError):
        check_text("a\x00b")
    with pytest.raises(BoundsError):
        check_text("\ud800")
    assert json_depth('{"a": ["[[[[", {"b": 1}]}') == 3
    with pytest.raises(BoundsError):
        check_json_depth("[" * 5000)
    with pytest.raises(BoundsError):
        parse_decimal("1" * 100)


@pytest.mark.parametrize(
    ("variable", "raw"),
    [("BULWARK_HEARTBEAT_TIMEOUT_S", "nan"), ("BULWARK_GATEWAY_PORT", "9" * 30), ("BULWARK_API_TOKENS", "a\x00")],
)
def test_settings_when_number_unbounded_or_text_has_nul_then_settings_error(variable: str, raw: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: raw})


def test_cli_numbers_when_unbounded_then_usage_error() -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        _positive_float("nan")
    with pytest.raises(argparse.ArgumentTypeError):
        _bounded_int(0)("9" * 30)
    assert _bounded_int(0)("42") == 42

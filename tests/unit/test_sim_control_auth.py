"""The venue simulator's control-API token check (`services.venue_sim.control_auth`)."""

from __future__ import annotations

import base64

import pytest

from services.venue_sim import control_auth
from services.venue_sim.config import config_from

TOKEN = "f" * 48


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {TOKEN}"},
        {"Authorization": f"bearer {TOKEN}"},
        {"X-Bulwark-Sim-Token": TOKEN},
        {"Authorization": _basic("sim", TOKEN)},
        {"Authorization": _basic("", TOKEN)},
    ],
)
def test_allowed_when_token_presented_then_true(headers: dict[str, str]) -> None:
    assert control_auth.allowed(TOKEN, headers)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": _basic("sim", "wrong")},
        {"Authorization": _basic(TOKEN, "")},
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:x").decode()},
        {"Authorization": TOKEN},
        {"X-Bulwark-Sim-Token": TOKEN * 20},
    ],
)
def test_allowed_when_token_missing_or_wrong_then_false(headers: dict[str, str]) -> None:
    assert not control_auth.allowed(TOKEN, headers)


def test_allowed_when_no_token_configured_then_open() -> None:
    assert control_auth.allowed("", {})


def test_config_when_token_variable_set_then_taken_and_not_shown() -> None:
    config = config_from([], {"BULWARK_SIM_CONTROL_TOKEN": TOKEN})
    assert config.control_token == TOKEN
    assert TOKEN not in repr(config)
    assert config_from([], {}).control_token == ""

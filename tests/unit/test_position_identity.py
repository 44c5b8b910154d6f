"""Which venue a position process trades and what it is called (one process per venue, FM-N6)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from libs.settings import Settings, SettingsError
from proto import subjects
from services.position.domain import flatten_stem
from services.position.main import position_identity

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_identity_when_no_position_venue_then_main_venue_and_every_name_as_before() -> None:
    settings = Settings(venue="binance-usdm", venue_rest_url="http://main", backup_venue="backup-x")
    account, component = position_identity(settings)
    assert (account.name, account.rest_url, component) == ("binance-usdm", "http://main", "position")
    assert (
        subjects.position_orders_consumer(component),
        subjects.position_denials_consumer(component),
        subjects.position_cancels_consumer(component),
    ) == (
        "position-orders",
        "position-denials",
        "position-cancels",
    )
    assert flatten_stem(component, "42") == "flatten:position:42:"
    named = Settings(venue="binance-usdm", position_venue="binance-usdm")
    assert position_identity(named)[1] == "position"


def test_identity_when_position_venue_is_the_backup_then_its_account_and_own_names() -> None:
    settings = Settings(
        venue="binance-usdm",
        backup_venue="backup-x",
        backup_venue_rest_url="http://backup",
        backup_venue_ws_url="ws://backup",
        backup_venue_api_key="backup-key",
        position_venue="backup-x",
    )
    account, component = position_identity(settings)
    assert (account.name, account.rest_url, account.ws_url, account.api_key) == (
        "backup-x",
        "http://backup",
        "ws://backup",
        "backup-key",
    )
    assert component == "position-backup-x"
    assert subjects.position_orders_consumer(component) == "position-backup-x-orders"
    assert flatten_stem(component, "42") == "flatten:position-backup-x:42:"


def test_identity_when_position_venue_unknown_then_settings_error_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match="BULWARK_POSITION_VENUE='nowhere'"):
        position_identity(Settings(venue="binance-usdm", position_venue="nowhere"))


def test_main_when_position_venue_unknown_then_one_clear_error_and_exit_2_without_traceback() -> None:
    env = {**os.environ, "BULWARK_POSITION_VENUE": "nowhere", "BULWARK_BACKUP_VENUE": ""}
    done = subprocess.run(
        [sys.executable, "-m", "services.position.main"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "settings_invalid" in output and "BULWARK_POSITION_VENUE" in output
    assert "Traceback" not in output

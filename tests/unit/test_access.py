"""Bus and Valkey users of `bulwark up`: generated credentials, server configuration, the exposure check."""

from __future__ import annotations

import configparser
import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from entrypoints import access, infra
from entrypoints.launcher import LaunchConfig, bus_components, server_specs, write_supervisor_config
from libs.bus import redact_url
from libs.logging import configure, get_logger
from libs.settings import Settings
from proto import permissions, subjects

ROOT = Path(__file__).resolve().parents[2]
STRONG = {
    "BULWARK_ADMIN_TOKEN": "a" * 12 + "0123456789ab",
    "BULWARK_OPERATOR_TOKEN": "b" * 12 + "0123456789ab",
    "BULWARK_VIEWER_TOKEN": "c" * 12 + "0123456789ab",
}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_credentials_when_loaded_twice_then_same_passwords_file_private_and_new_users_added(tmp_path: Path) -> None:
    first = access.load_bus_credentials(tmp_path, (subjects.RISK,))
    again = access.load_bus_credentials(tmp_path, (subjects.RISK, subjects.GATEWAY))
    assert again.nats[subjects.RISK] == first.nats[subjects.RISK]
    assert again.nats[permissions.ADMIN] == first.nats[permissions.ADMIN]
    assert subjects.GATEWAY in again.nats and len(again.nats[subjects.GATEWAY]) >= 32
    assert len(set(again.nats.values())) == len(again.nats)
    assert _mode(tmp_path / access.BUS_CREDENTIALS_FILE) == 0o600


def test_sim_control_token_when_loaded_twice_then_kept_and_carried_in_the_simulator_url(tmp_path: Path) -> None:
    first = access.load_bus_credentials(tmp_path, ())
    again = access.load_bus_credentials(tmp_path, (subjects.RISK,))
    assert first.sim_control_token and again.sim_control_token == first.sim_control_token
    assert first.sim_env() == {"BULWARK_SIM_CONTROL_TOKEN": first.sim_control_token}
    assert first.sim_url("http://127.0.0.1:8100") == f"http://sim:{first.sim_control_token}@127.0.0.1:8100"
    assert first.sim_control_token not in repr(first)


def test_credentials_when_file_unreadable_then_clear_error(tmp_path: Path) -> None:
    (tmp_path / access.BUS_CREDENTIALS_FILE).write_text("{not json")
    with pytest.raises(access.AccessError, match="remove it"):
        access.load_bus_credentials(tmp_path, ())


def test_service_env_when_gateway_then_its_nats_and_valkey_users_only(tmp_path: Path) -> None:
    credentials = access.load_bus_credentials(tmp_path, (subjects.GATEWAY, subjects.RISK))
    gateway = credentials.service_env(subjects.GATEWAY)
    assert gateway["BULWARK_NATS_USER"] == subjects.GATEWAY
    assert gateway["BULWARK_VALKEY_USER"] == subjects.GATEWAY
    assert gateway["BULWARK_NATS_PASSWORD"] == credentials.nats[subjects.GATEWAY]
    risk = credentials.service_env(subjects.RISK)
    assert set(risk) == {"BULWARK_NATS_USER", "BULWARK_NATS_PASSWORD"}
    assert credentials.nats[permissions.ADMIN] not in risk.values()


def test_nats_authorization_when_rendered_then_every_user_with_its_grant() -> None:
    block = access.nats_authorization({subjects.RISK: "pw-risk", subjects.MARKET_DATA: "$MD_PASSWORD"})
    assert block.startswith("authorization {")
    assert '"pw-risk"' in block and "password: $MD_PASSWORD" in block
    risk_part = block[block.index('user: "risk"') :]
    assert '"svc.risk.*"' in risk_part
    market_part = block[block.index('user: "market-data"') : block.index('user: "risk"')]
    assert '"md.>"' in market_part and "cmd.order.submit" not in market_part
    assert '"$JS.API.STREAM.DELETE.>"' in market_part


def test_valkey_acl_when_rendered_then_default_user_off_and_services_without_admin_commands() -> None:
    acl = access.valkey_acl({access.VALKEY_ADMIN: "x1", subjects.GATEWAY: "x2"})
    lines = acl.splitlines()
    assert lines[0] == "user default off"
    assert f"user {subjects.GATEWAY} on >x2 ~* &* +@all -@admin -@dangerous" in lines
    assert f"user {access.VALKEY_ADMIN} on >x1 ~* &* +@all" in lines


def test_launcher_when_configured_then_servers_require_passwords_and_each_service_gets_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No initdb in a unit test: Postgres's command line is not what this checks.
    monkeypatch.setattr(infra, "postgres_spec", lambda *args: infra.ServerSpec("postgres", ["/bin/postgres"], 5432))
    config = LaunchConfig(data_dir=tmp_path, strategies=("trend",), backup_venue="binance-usdm-backup")
    credentials = access.load_bus_credentials(tmp_path, bus_components(config))
    specs = server_specs(config, credentials)
    nats_conf = tmp_path / "nats.conf"
    text = nats_conf.read_text()
    for component in (*subjects.CORE_COMPONENTS, "strategy-trend", "position-binance-usdm-backup"):
        assert f'user: "{component}"' in text, component
    assert _mode(nats_conf) == 0o600
    assert "--aclfile" in specs["valkey"].command
    assert _mode(tmp_path / access.VALKEY_ACL_FILE) == 0o600
    supervisor = write_supervisor_config(config, specs, credentials)
    assert _mode(supervisor) == 0o600
    parser = configparser.RawConfigParser()
    parser.read(supervisor)
    risk_env = parser["program:risk"]["environment"]
    assert 'BULWARK_NATS_USER="risk"' in risk_env
    assert f'BULWARK_NATS_PASSWORD="{credentials.nats[subjects.RISK]}"' in risk_env
    assert credentials.nats[subjects.GATEWAY] not in risk_env
    assert 'BULWARK_VALKEY_USER="gateway"' in parser["program:gateway"]["environment"]
    assert "BULWARK_NATS_USER" not in parser["program:venue-sim"].get("environment", "")
    # Only the simulators hold the control token of their `/_sim/*` API.
    token = credentials.sim_control_token
    assert len(token) >= 32
    assert f'BULWARK_SIM_CONTROL_TOKEN="{token}"' in parser["program:venue-sim"]["environment"]
    assert f'BULWARK_SIM_CONTROL_TOKEN="{token}"' in parser["program:venue-sim-backup"]["environment"]
    assert token not in risk_env and token not in parser["program:gateway"]["environment"]
    # Each service's DSN carries the Postgres password; the simulators have none.
    pg_password = credentials.postgres_password
    assert len(pg_password) >= 32
    assert f'BULWARK_PG_DSN="postgresql://postgres:{pg_password}@127.0.0.1:' in risk_env
    assert pg_password in parser["program:watchdog"]["environment"]
    assert pg_password not in parser["program:venue-sim"]["environment"]
    assert (
        'BULWARK_NATS_USER="position-binance-usdm-backup"'
        in parser["program:position-binance-usdm-backup"]["environment"]
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_exposure_when_loopback_then_no_problem_whatever_the_tokens(host: str) -> None:
    assert access.exposure_problem(host, {}) is None
    assert access.exposure_warning(host) is None


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {**STRONG, "BULWARK_VIEWER_TOKEN": "short"},
        {**STRONG, "BULWARK_ADMIN_TOKEN": "CHANGE-ME-admin-token-0123456789"},
        {**STRONG, "BULWARK_OPERATOR_TOKEN": STRONG["BULWARK_ADMIN_TOKEN"]},
    ],
)
def test_exposure_when_other_host_and_default_or_weak_tokens_then_refused(environ: dict[str, str]) -> None:
    assert access.exposure_problem("0.0.0.0", environ) is not None
    assert access.exposure_warning("0.0.0.0") is not None


def test_exposure_when_other_host_and_own_strong_tokens_then_allowed() -> None:
    assert access.exposure_problem("0.0.0.0", STRONG) is None


def test_cli_when_host_is_not_loopback_without_tokens_then_warns_and_refuses_before_starting(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("BULWARK_")}
    env["PYTHONPATH"] = str(ROOT)
    data_dir = tmp_path / "data"
    result = subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "up", "--host", "0.0.0.0", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "warning: --host 0.0.0.0" in result.stderr
    assert "BULWARK_ADMIN_TOKEN" in result.stderr and "bulwark up:" in result.stderr
    assert not (data_dir / "supervisord.conf").exists()


def test_tool_user_when_data_dir_has_credentials_then_admin_else_settings(tmp_path: Path) -> None:
    assert access.tool_bus_user(tmp_path, Settings()) == ("", "")
    credentials = access.load_bus_credentials(tmp_path, ())
    assert access.tool_bus_user(tmp_path, Settings()) == (permissions.ADMIN, credentials.nats[permissions.ADMIN])
    assert access.tool_bus_user(tmp_path, Settings(nats_user="risk", nats_password="p")) == ("risk", "p")


def test_write_private_when_file_existed_world_readable_then_0600(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("old")
    path.chmod(0o644)
    infra.write_private(path, "new")
    assert path.read_text() == "new" and _mode(path) == 0o600


def test_redact_url_when_logged_then_passwords_hidden_users_kept() -> None:
    assert redact_url("nats://risk:s3cret@h:4222,nats://h2:4222") == "nats://risk:***@h:4222,nats://h2:4222"
    assert redact_url("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"


def test_postgres_password_when_credentials_loaded_twice_then_kept_and_private(tmp_path: Path) -> None:
    first = access.load_bus_credentials(tmp_path, (subjects.RISK,))
    again = access.load_bus_credentials(tmp_path, (subjects.RISK,))
    assert len(first.postgres_password) >= 32 and again.postgres_password == first.postgres_password
    assert first.postgres_password not in repr(first)
    assert _mode(tmp_path / access.BUS_CREDENTIALS_FILE) == 0o600


def test_postgres_hba_when_password_then_every_tcp_connection_must_present_it() -> None:
    rules = [line.split() for line in infra.postgres_hba(True).splitlines()]
    assert rules == [
        # The socket: in the data dir's private folder, the launcher's way to set the password.
        ["local", "all", "all", "trust"],
        ["host", "all", "all", "0.0.0.0/0", "scram-sha-256"],
        ["host", "all", "all", "::/0", "scram-sha-256"],
    ]


def test_postgres_dsn_when_password_then_carried_quoted_and_masked_in_logs() -> None:
    dsn = infra.postgres_dsn(5432, "127.0.0.1", password="p@ss:w/rd")
    assert dsn == "postgresql://postgres:p%40ss%3Aw%2Frd@127.0.0.1:5432/bulwark"
    assert infra.postgres_dsn(5432) == "postgresql://postgres@127.0.0.1:5432/bulwark"
    stream = io.StringIO()
    configure("INFO", stream)
    try:
        get_logger("test").info("db_connect_failed", dsn=dsn, error=f"cannot reach {dsn}", nested={"url": dsn})
    finally:
        configure("INFO", None)
    line = stream.getvalue()
    assert "p%40ss" not in line
    assert json.loads(line)["details"]["dsn"] == "postgresql://postgres:***@127.0.0.1:5432/bulwark"


def test_tool_pg_dsn_when_the_running_system_s_dsn_then_password_added_else_as_given(tmp_path: Path) -> None:
    password = access.load_bus_credentials(tmp_path, ()).postgres_password
    running = "postgresql://postgres@127.0.0.1:5999/bulwark"
    assert access.tool_pg_dsn(tmp_path, running, running) == f"postgresql://postgres:{password}@127.0.0.1:5999/bulwark"
    other = "postgresql://someone@db.example:5432/bulwark"
    assert access.tool_pg_dsn(tmp_path, other, running) == other
    assert access.tool_pg_dsn(tmp_path / "nothing", running, running) == running


def test_sim_control_url_when_token_in_env_or_data_dir_then_carried_else_url_unchanged(tmp_path: Path) -> None:
    token = access.load_bus_credentials(tmp_path, ()).sim_control_token
    url = "http://127.0.0.1:8100"
    assert access.sim_control_url(tmp_path, url, {}) == f"http://sim:{token}@127.0.0.1:8100"
    from_env = access.sim_control_url(tmp_path, url, {access.SIM_CONTROL_TOKEN_VARIABLE: "t" * 40})
    assert from_env == f"http://sim:{'t' * 40}@127.0.0.1:8100"
    assert access.sim_control_url(tmp_path / "none", url, {}) == url

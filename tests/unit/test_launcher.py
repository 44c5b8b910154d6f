"""`bulwark up` pieces that need no running system: config, credentials, port and input checks."""

from __future__ import annotations

import configparser
import http.server
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from entrypoints import infra
from entrypoints.cli import build_parser, main, replay_setup
from entrypoints.launcher import (
    DEFAULT_SYMBOLS,
    LaunchConfig,
    LaunchError,
    System,
    application_programs,
    check_ports,
    load_credentials,
    service_env,
    write_supervisor_config,
)
from libs.recordings import RECORDINGS_DIR


@contextmanager
def _serving(answer: Callable[[str], tuple[int, bytes]]) -> Iterator[int]:
    """A loopback HTTP server answering GET `path` with `answer(path)` (status, body); yields its port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = answer(self.path)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _specs(tmp_path: Path) -> dict[str, infra.ServerSpec]:
    return {
        "nats": infra.ServerSpec("nats", ["/bin/nats-server", "-c", str(tmp_path / "nats.conf")], 4222),
        "postgres": infra.ServerSpec("postgres", ["/bin/postgres", "-D", "x"], 5432, user="pguser", stop_signal="INT"),
        "valkey": infra.ServerSpec("valkey", ["/bin/valkey-server", "--save", ""], 6379),
    }


def test_supervisor_config_when_written_then_every_program_is_restarted_and_services_start_after_infra(
    tmp_path: Path,
) -> None:
    config = LaunchConfig(data_dir=tmp_path, strategies=("imbalance", "trend"))
    parser = configparser.RawConfigParser()
    parser.read(write_supervisor_config(config, _specs(tmp_path)))
    programs = {s.removeprefix("program:"): parser[s] for s in parser if s.startswith("program:")}
    expected = {"nats", "postgres", "valkey", *application_programs(config)}
    assert set(programs) == expected
    assert {"strategy-imbalance", "strategy-trend", "gateway", "venue-sim"} <= set(programs)
    for name, section in programs.items():
        assert section["autorestart"] == "true", name
    for name in ("nats", "postgres", "valkey"):
        assert programs[name]["autostart"] == "true" and int(programs[name]["priority"]) < 20
    assert programs["postgres"]["user"] == "pguser" and programs["postgres"]["stopsignal"] == "INT"
    assert programs["gateway"]["command"] == f"{sys.executable} -m services.gateway.main"
    # Stable per program across restarts (the lease is taken back at once), distinct between programs.
    host = socket.gethostname()
    assert programs["strategy-trend"]["environment"] == (
        f'BULWARK_INSTANCE_ID="strategy-trend@{host}",BULWARK_STRATEGY_NAME="trend"'
    )
    assert programs["position"]["environment"] == f'BULWARK_INSTANCE_ID="position@{host}"'
    assert "environment" not in programs["nats"]
    assert programs["strategy-trend"]["command"] == f"{sys.executable} -m services.strategy.main --name trend"
    assert programs["valkey"]["command"].endswith('--save ""')


def test_credentials_when_loaded_twice_then_same_tokens_and_env_overrides(tmp_path: Path) -> None:
    first = load_credentials(tmp_path, environ={})
    again = load_credentials(tmp_path, environ={})
    assert first == again and len(first.admin_token) == 32
    assert (tmp_path / "credentials.json").stat().st_mode & 0o077 == 0
    overridden = load_credentials(tmp_path, environ={"BULWARK_ADMIN_TOKEN": "chosen"})
    assert overridden.admin_token == "chosen" and overridden.operator_token == first.operator_token


def test_credentials_when_file_corrupt_then_clear_error(tmp_path: Path) -> None:
    (tmp_path / "credentials.json").write_text("{not json")
    with pytest.raises(LaunchError, match="unreadable"):
        load_credentials(tmp_path, environ={})


def test_service_env_when_built_then_points_every_service_at_the_embedded_servers(tmp_path: Path) -> None:
    config = LaunchConfig(data_dir=tmp_path, nats_port=1111, pg_port=2222, redis_port=3333, venue_port=4444)
    env = service_env(config, load_credentials(tmp_path, environ={}))
    assert env["BULWARK_NATS_URL"] == "nats://127.0.0.1:1111"
    assert env["BULWARK_PG_DSN"].endswith("@127.0.0.1:2222/bulwark")
    assert env["BULWARK_REDIS_URL"] == "redis://127.0.0.1:3333/0"
    assert env["BULWARK_VENUE_REST_URL"] == "http://127.0.0.1:4444"


@pytest.mark.parametrize(
    ("field", "flag", "extra"),
    [
        ("gateway_port", "--gateway-port", {}),
        ("backup_venue_port", "--backup-venue-port", {"backup_venue": "b"}),
    ],
)
def test_check_ports_when_a_port_busy_then_error_names_the_flag(
    tmp_path: Path, field: str, flag: str, extra: dict[str, object]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = {
            name: infra.free_port()
            for name in ("gateway_port", "venue_port", "nats_port", "nats_monitor_port", "pg_port", "redis_port")
        }
        config = LaunchConfig(data_dir=tmp_path, **{**ports, **extra, field: port})  # type: ignore[arg-type]
        with pytest.raises(LaunchError, match=f"{flag} {port}"):
            check_ports(config)


def test_up_when_recording_missing_then_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["up", "--venue-source", f"replay:{tmp_path / 'nope.gz'}"])
    assert exit_info.value.code == 2
    assert "recording(s) not found" in capsys.readouterr().err


def test_up_when_port_invalid_then_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["up", "--gateway-port", "70000"])
    assert "port out of range" in capsys.readouterr().err


def test_status_when_gateway_down_then_clear_message_and_exit_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["status", "--gateway", f"http://127.0.0.1:{infra.free_port()}"])
    assert code == 5  # `entrypoints.ops_cli.EXIT_UNREACHABLE`, documented in docs/operations.md
    assert "gateway not reachable" in capsys.readouterr().err


def test_supervisor_config_when_written_then_services_stop_together_before_the_infrastructure(tmp_path: Path) -> None:
    config = LaunchConfig(data_dir=tmp_path)
    parser = configparser.RawConfigParser()
    parser.read(write_supervisor_config(config, _specs(tmp_path)))
    groups = {s.removeprefix("group:"): parser[s] for s in parser if s.startswith("group:")}
    assert groups["infra"]["programs"] == "nats,postgres,valkey"
    assert groups["venue"]["programs"] == "venue-sim"
    assert set(groups["services"]["programs"].split(",")) == set(application_programs(config)) - {"venue-sim"}
    assert int(groups["infra"]["priority"]) < int(groups["venue"]["priority"]) < int(groups["services"]["priority"])


def test_launch_config_when_defaults_then_one_process_per_default_strategy(tmp_path: Path) -> None:
    config = LaunchConfig(data_dir=tmp_path)
    programs = application_programs(config)
    assert programs["strategy-cascade-fade"] == programs["strategy-trend"] == "services.strategy.main"
    assert "BULWARK_STRATEGY_CONFIG" not in service_env(config, load_credentials(tmp_path, environ={}))


def test_service_env_when_strategy_config_given_then_every_strategy_process_gets_it(tmp_path: Path) -> None:
    config = LaunchConfig(data_dir=tmp_path, strategy_config=tmp_path / "strategies.toml")
    env = service_env(config, load_credentials(tmp_path, environ={}))
    assert env["BULWARK_STRATEGY_CONFIG"] == str(tmp_path / "strategies.toml")
    assert env["BULWARK_STRATEGIES"] == "cascade-fade,trend"


def test_up_when_strategy_kind_unknown_then_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["up", "--data-dir", str(tmp_path / "bw"), "--strategies", "momentum"])
    assert code == 2
    assert "unknown kind 'momentum'" in capsys.readouterr().err
    assert not (tmp_path / "bw").exists()


def test_up_when_strategy_config_has_a_bad_parameter_then_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "s.toml").write_text("[trend]\nfast_s = 'soon'\n")
    code = main(["up", "--data-dir", str(tmp_path / "bw"), "--strategy-config", str(tmp_path / "s.toml")])
    assert code == 2
    assert "[trend].fast_s" in capsys.readouterr().err


def test_wait_venue_when_ping_answers_then_true_and_when_nothing_listens_then_false_after_timeout(
    tmp_path: Path,
) -> None:
    import time

    with _serving(lambda path: (200 if path == "/fapi/v1/ping" else 404, b"{}")) as port:
        answering = System(LaunchConfig(data_dir=tmp_path, host="127.0.0.1", venue_port=port))
        assert answering.wait_venue(5.0)
    lines: list[str] = []
    silent = System(LaunchConfig(data_dir=tmp_path, host="127.0.0.1", venue_port=infra.free_port()), lines.append)
    start = time.monotonic()
    assert not silent.wait_venue(0.5)
    assert 0.5 <= time.monotonic() - start < 3.0
    assert lines and "starting the services anyway" in lines[0]


DATA = RECORDINGS_DIR


def test_up_when_replay_without_symbols_then_the_recordings_symbols_and_market() -> None:
    usdm = f"replay:{DATA / 'usdm_ethusdt_20240808.gz'}"
    assert replay_setup(usdm, None) == (("ETHUSDT",), {})
    spot = f"replay:{DATA / 'spot_btcusdt_20240808.gz'},{DATA / 'spot_btcusdt_20240809.gz'}"
    assert replay_setup(spot, None) == (
        ("BTCUSDT",),
        {"BULWARK_VENUE_MARKET": "spot", "BULWARK_VENUE": "binance-spot"},
    )
    feed = f"replay:{DATA / 'cryptofeed/BINANCE_FUTURES.ws.1.0'},{DATA / 'cryptofeed/BINANCE_FUTURES.http.0.0'}"
    assert replay_setup(feed, ("SUSHIUSDT",)) == (("SUSHIUSDT",), {})
    assert replay_setup("synthetic", None) == (DEFAULT_SYMBOLS, {})
    assert replay_setup("synthetic", ("BNBUSDT",)) == (("BNBUSDT",), {})
    assert replay_setup(None, None) == (DEFAULT_SYMBOLS, {})  # the default recordings carry exactly these
    with pytest.raises(ValueError, match=r"BNBUSDT not in the recording.*--venue-source synthetic"):
        replay_setup(None, ("BNBUSDT",))


@pytest.mark.parametrize(
    ("files", "symbols", "message"),
    [
        (("usdm_ethusdt_20240808.gz",), "BTCUSDT,ETHUSDT", "--symbols BTCUSDT not in the recording"),
        (("usdm_ethusdt_20240808.gz", "spot_btcusdt_20240808.gz"), None, "mix USD-M and spot"),
        (("cryptofeed/BINANCE_FUTURES.ws.1.0",), None, "no replayable symbol"),
    ],
)
def test_up_when_replay_cannot_serve_the_system_then_exit_2_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], files: tuple[str, ...], symbols: str | None, message: str
) -> None:
    args = ["up", "--data-dir", str(tmp_path), "--venue-source", "replay:" + ",".join(str(DATA / f) for f in files)]
    code = main([*args, *(["--symbols", symbols] if symbols else [])])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "nothing may start"


# --------------------------------------------------------------------------- backup venue (FM-N6)


def _backup_config(tmp_path: Path, **overrides: object) -> LaunchConfig:
    values: dict[str, object] = {
        "data_dir": tmp_path,
        "backup_venue": "binance-usdm-backup",
        "backup_venue_port": 5555,
        "venue_port": 4444,
    }
    values.update(overrides)
    return LaunchConfig(**values)  # type: ignore[arg-type]


def test_supervisor_config_when_backup_venue_then_its_simulator_and_position_process_are_programs(
    tmp_path: Path,
) -> None:
    config = _backup_config(tmp_path)
    parser = configparser.RawConfigParser()
    parser.read(write_supervisor_config(config, _specs(tmp_path)))
    programs = {s.removeprefix("program:"): parser[s] for s in parser if s.startswith("program:")}
    groups = {s.removeprefix("group:"): parser[s] for s in parser if s.startswith("group:")}
    host = socket.gethostname()

    backup_sim = programs["venue-sim-backup"]
    assert backup_sim["command"] == f"{sys.executable} -m services.venue_sim.main --port 5555"
    assert int(backup_sim["priority"]) == int(programs["venue-sim"]["priority"]) == 20
    # The backup account's own key, from supervisord's environment: no secret in the config file.
    assert backup_sim["environment"] == (
        f'BULWARK_INSTANCE_ID="venue-sim-backup@{host}",'
        'BULWARK_VENUE_API_KEY="%(ENV_BULWARK_BACKUP_VENUE_API_KEY)s",'
        'BULWARK_VENUE_API_SECRET="%(ENV_BULWARK_BACKUP_VENUE_API_SECRET)s"'
    )
    backup_position = programs["position-binance-usdm-backup"]
    assert backup_position["command"] == f"{sys.executable} -m services.position.main"
    assert backup_position["environment"] == (
        f'BULWARK_INSTANCE_ID="position-binance-usdm-backup@{host}",BULWARK_POSITION_VENUE="binance-usdm-backup"'
    )
    assert backup_position["autorestart"] == "true"
    assert programs["position"]["environment"] == f'BULWARK_INSTANCE_ID="position@{host}"'
    assert groups["venue"]["programs"] == "venue-sim,venue-sim-backup"
    assert "position-binance-usdm-backup" in groups["services"]["programs"].split(",")
    assert "venue-sim-backup" not in groups["services"]["programs"].split(",")


def test_supervisor_config_when_backup_env_expanded_by_supervisord_then_the_simulator_gets_the_backup_key(
    tmp_path: Path,
) -> None:
    from supervisor.options import ServerOptions, UnhosedConfigParser

    conf = write_supervisor_config(_backup_config(tmp_path), _specs(tmp_path))
    options = ServerOptions()
    read = UnhosedConfigParser()
    options.environ_expansions = {
        **options.environ_expansions,
        "ENV_BULWARK_BACKUP_VENUE_API_KEY": "backup-key",
        "ENV_BULWARK_BACKUP_VENUE_API_SECRET": "backup-secret",
    }
    read.read(str(conf))
    (backup,) = options.processes_from_section(read, "program:venue-sim-backup", "venue")
    assert backup.environment["BULWARK_VENUE_API_KEY"] == "backup-key"
    assert backup.environment["BULWARK_VENUE_API_SECRET"] == "backup-secret"


def test_service_env_when_backup_venue_then_every_service_knows_its_name_urls_and_keys(tmp_path: Path) -> None:
    creds = load_credentials(tmp_path, environ={})
    env = service_env(_backup_config(tmp_path), creds)
    assert env["BULWARK_BACKUP_VENUE"] == "binance-usdm-backup"
    assert env["BULWARK_BACKUP_VENUE_REST_URL"] == "http://127.0.0.1:5555"
    assert env["BULWARK_BACKUP_VENUE_WS_URL"] == "ws://127.0.0.1:5555"
    assert env["BULWARK_VENUE_REST_URL"] == "http://127.0.0.1:4444"
    assert (env["BULWARK_BACKUP_VENUE_API_KEY"], env["BULWARK_BACKUP_VENUE_API_SECRET"]) == (
        "bulwark-sim-backup-key",
        "bulwark-sim-backup-secret",
    )
    assert creds.backup_venue_api_key != creds.venue_api_key  # another account
    assert env["BULWARK_POSITION_VENUE"] == ""  # only the backup's position program trades the backup


def test_service_env_when_no_backup_venue_then_none_configured_whatever_the_caller_exported(tmp_path: Path) -> None:
    config = LaunchConfig(data_dir=tmp_path)
    env = service_env(config, load_credentials(tmp_path, environ={}))
    assert env["BULWARK_BACKUP_VENUE"] == "" and env["BULWARK_POSITION_VENUE"] == ""
    assert not any(key.startswith("BULWARK_BACKUP_VENUE_") for key in env)
    assert set(application_programs(config)) == set(application_programs(LaunchConfig(data_dir=tmp_path)))
    assert not any(name.startswith(("venue-sim-", "position-")) for name in application_programs(config))
    assert "--backup-venue-port" not in config.ports()


def test_credentials_when_backup_key_overridden_then_the_override_wins(tmp_path: Path) -> None:
    creds = load_credentials(tmp_path, environ={"BULWARK_BACKUP_VENUE_API_KEY": "mine"})
    assert creds.backup_venue_api_key == "mine"
    assert creds.backup_venue_api_secret == "bulwark-sim-backup-secret"


def test_credentials_when_file_from_before_backup_venues_then_tokens_kept_and_backup_keys_added(
    tmp_path: Path,
) -> None:
    import json

    old = {
        "admin_token": "a" * 32,
        "operator_token": "o" * 32,
        "viewer_token": "v" * 32,
        "venue_api_key": "k",
        "venue_api_secret": "s",
    }
    (tmp_path / "credentials.json").write_text(json.dumps(old))
    creds = load_credentials(tmp_path, environ={})
    assert (creds.admin_token, creds.venue_api_key) == ("a" * 32, "k")
    assert json.loads((tmp_path / "credentials.json").read_text())["backup_venue_api_key"] == "bulwark-sim-backup-key"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"backup_venue": "binance.usdm"}, "letters, digits"),
        ({"backup_venue": "binance-usdm"}, "is the main venue"),
        ({"backup_venue_port": 4444}, "--venue-port and --backup-venue-port are the same port 4444"),
    ],
)
def test_check_ports_when_backup_venue_unusable_then_error_says_what_to_change(
    tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(LaunchError, match=message):
        check_ports(_backup_config(tmp_path, **overrides))


def test_up_parser_when_backup_venue_flag_then_name_optional_and_port_defaults_to_8101() -> None:
    parser = build_parser()
    assert parser.parse_args(["up"]).backup_venue is None
    bare = parser.parse_args(["up", "--backup-venue", "--data-dir", "x"])
    assert bare.backup_venue == "" and bare.backup_venue_port == 8101
    named = parser.parse_args(["up", "--backup-venue", "okx-sim", "--backup-venue-port", "9101"])
    assert (named.backup_venue, named.backup_venue_port) == ("okx-sim", 9101)


def test_up_when_backup_venue_is_the_main_venue_then_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["up", "--data-dir", str(tmp_path / "bw"), "--backup-venue", "binance-usdm"])
    assert code == 2
    assert "is the main venue" in capsys.readouterr().err
    assert not (tmp_path / "bw").exists()


def test_wait_venue_when_backup_simulator_silent_then_named_and_false(tmp_path: Path) -> None:
    lines: list[str] = []
    silent_port = infra.free_port()
    with _serving(lambda path: (200, b"{}")) as port:
        config = _backup_config(tmp_path, venue_port=port, backup_venue_port=silent_port)
        assert not System(config, lines.append).wait_venue(0.5)
    assert len(lines) == 1 and f":{silent_port}/fapi/v1/ping" in lines[0]


def test_status_when_backup_venue_then_the_table_lists_each_venue_with_its_order_link(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    status = {
        "trading_state": "ACTIVE",
        "degradation_level": "NORMAL",
        "health": "GREEN",
        "components": {"position-binance-usdm-backup": {"state": "READY", "pid": 7, "last_heartbeat_age_ms": 5}},
        "symbols": {},
        "venues": {
            "binance-usdm": {
                "role": "main",
                "order_link": "DISCONNECTED",
                "order_link_reason": "venue breaker open",
                "position_component": "position",
                "position_state": "READY",
            },
            "binance-usdm-backup": {
                "role": "backup",
                "order_link": None,
                "order_link_reason": None,
                "position_component": "position-binance-usdm-backup",
                "position_state": "READY",
            },
        },
    }

    with _serving(lambda path: (200, json.dumps(status).encode())) as port:
        code = main(["status", "--gateway", f"http://127.0.0.1:{port}"])
    out = capsys.readouterr().out
    assert code == 0
    rows = [line.split("│")[1:-1] for line in out.splitlines() if line.startswith("│ binance-usdm")]
    assert [[cell.strip() for cell in row] for row in rows] == [
        ["binance-usdm", "main", "DISCONNECTED", "venue breaker open", "position=READY"],
        ["binance-usdm-backup", "backup", "UNKNOWN", "", "position-binance-usdm-backup=READY"],
    ]

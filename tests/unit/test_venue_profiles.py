"""`bulwark up --venue`: profiles, keys and what the launcher writes for a venue other than its simulator."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from entrypoints import infra
from entrypoints.cli import build_parser, main
from entrypoints.launcher import (
    LaunchConfig,
    application_programs,
    load_credentials,
    service_env,
    write_supervisor_config,
)
from entrypoints.venue_cli import venue_of
from entrypoints.venue_profiles import (
    CONFIRM_FLAG,
    VenueChoice,
    VenueProfileError,
    read_key_file,
    resolve_venue,
    venue_env,
)

KEY, SECRET = "k3y-never-shown-Zq81", "s3cret-never-shown-Xw42"
ENV = {"BULWARK_VENUE_API_KEY": KEY, "BULWARK_VENUE_API_SECRET": SECRET}


def _key_file(tmp_path: Path, mode: int, text: str = f"api_key={KEY}\napi_secret={SECRET}\n") -> Path:
    path = tmp_path / "binance.key"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_key_file_when_readable_by_others_then_refused_naming_chmod_600(tmp_path: Path) -> None:
    path = _key_file(tmp_path, 0o644)
    with pytest.raises(VenueProfileError, match="chmod 600") as refused:
        read_key_file(path)
    assert KEY not in str(refused.value) and "0644" in str(refused.value)
    with pytest.raises(VenueProfileError, match="0640"):
        read_key_file(_key_file(tmp_path, 0o640))


def test_key_file_when_0600_then_key_and_secret_in_either_format(tmp_path: Path) -> None:
    assert read_key_file(_key_file(tmp_path, 0o600)) == (KEY, SECRET)
    assert read_key_file(_key_file(tmp_path, 0o400, f"# testnet\n{KEY}\n{SECRET}\n")) == (KEY, SECRET)
    both = f"BULWARK_VENUE_API_KEY={KEY}\nBULWARK_VENUE_API_SECRET='{SECRET}'\n"
    assert read_key_file(_key_file(tmp_path, 0o600, both)) == (KEY, SECRET)


def test_key_file_when_incomplete_or_missing_then_refused_without_showing_it(tmp_path: Path) -> None:
    with pytest.raises(VenueProfileError, match="api_secret") as refused:
        read_key_file(_key_file(tmp_path, 0o600, f"api_key={KEY}\n"))
    assert KEY not in str(refused.value)
    with pytest.raises(VenueProfileError, match="No such file"):
        read_key_file(tmp_path / "absent.key")


def test_resolve_when_testnet_or_mainnet_then_binance_urls_and_mainnet_needs_confirmation() -> None:
    testnet = resolve_venue("binance-testnet", environ=ENV)
    assert (testnet.rest_url, testnet.ws_url) == (
        "https://testnet.binancefuture.com",
        "wss://fstream.binancefuture.com",
    )
    assert not testnet.simulated and not testnet.starts_halted
    with pytest.raises(VenueProfileError, match=CONFIRM_FLAG):
        resolve_venue("binance", environ=ENV)
    mainnet = resolve_venue("binance", confirmed=True, environ=ENV)
    assert (mainnet.rest_url, mainnet.ws_url) == ("https://fapi.binance.com", "wss://fstream.binance.com")
    assert mainnet.starts_halted and (mainnet.api_key, mainnet.api_secret) == (KEY, SECRET)


def test_resolve_when_real_venue_without_key_or_half_a_key_then_refused() -> None:
    with pytest.raises(VenueProfileError, match="needs an API key"):
        resolve_venue("binance-testnet", environ={})
    with pytest.raises(VenueProfileError, match="both"):
        resolve_venue("binance-testnet", environ={"BULWARK_VENUE_API_KEY": KEY})


def test_resolve_when_custom_then_urls_required_and_checked() -> None:
    with pytest.raises(VenueProfileError, match="--venue-rest-url URL and --venue-ws-url URL"):
        resolve_venue("custom", rest_url="http://127.0.0.1:9100", environ={})
    with pytest.raises(VenueProfileError, match="ws or wss"):
        resolve_venue("custom", rest_url="http://127.0.0.1:9100", ws_url="http://127.0.0.1:9100", environ={})
    custom = resolve_venue("custom", rest_url="http://127.0.0.1:9100/", ws_url="ws://127.0.0.1:9100", environ={})
    assert custom.rest_url == "http://127.0.0.1:9100" and not custom.api_key
    with pytest.raises(VenueProfileError, match="--venue custom"):
        resolve_venue("sim", rest_url="http://127.0.0.1:9100", environ={})
    with pytest.raises(VenueProfileError, match="own URLs"):
        resolve_venue("binance-testnet", rest_url="http://127.0.0.1:9100", environ=ENV)


def test_venue_choice_when_shown_then_no_key_in_it() -> None:
    choice = resolve_venue("binance-testnet", environ=ENV)
    assert KEY not in repr(choice) and SECRET not in repr(choice) and SECRET not in str(choice)


def _custom_config(tmp_path: Path) -> LaunchConfig:
    choice = resolve_venue("custom", rest_url="http://10.1.2.3:9100", ws_url="ws://10.1.2.3:9100", environ=ENV)
    return LaunchConfig(data_dir=tmp_path, venue=choice, venue_port=8100)


def test_launch_when_custom_venue_then_no_simulator_program_and_services_point_at_it(tmp_path: Path) -> None:
    config = _custom_config(tmp_path)
    assert "venue-sim" not in application_programs(config)
    assert "--venue-port" not in config.ports()
    specs = {
        "nats": infra.ServerSpec("nats", ["/bin/nats-server"], 4222),
        "postgres": infra.ServerSpec("postgres", ["/bin/postgres"], 5432),
        "valkey": infra.ServerSpec("valkey", ["/bin/valkey-server"], 6379),
    }
    conf = write_supervisor_config(config, specs)
    parser = configparser.RawConfigParser()
    parser.read(conf)
    assert not [section for section in parser if "venue" in section]
    assert KEY not in conf.read_text() and SECRET not in conf.read_text()
    env = service_env(config, load_credentials(tmp_path, environ={}))
    assert env["BULWARK_VENUE_REST_URL"] == "http://10.1.2.3:9100"
    assert env["BULWARK_VENUE_WS_URL"] == "ws://10.1.2.3:9100"
    assert (env["BULWARK_VENUE_API_KEY"], env["BULWARK_VENUE_PROFILE"]) == (KEY, "custom")
    # The data dir keeps only the simulator's keys: the real one is never written there.
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text(errors="replace") and SECRET not in path.read_text(errors="replace")


def test_venue_env_when_sim_then_only_the_profile() -> None:
    assert venue_env(VenueChoice()) == {"BULWARK_VENUE_PROFILE": "sim"}


def test_up_flags_when_simulator_only_options_with_another_venue_then_refused() -> None:
    args = build_parser().parse_args(
        ["up", "--venue", "custom", "--venue-rest-url", "http://h:1", "--venue-ws-url", "ws://h:1", "--backup-venue"]
    )
    with pytest.raises(VenueProfileError, match="--backup-venue"):
        venue_of(args)


def test_up_when_mainnet_unconfirmed_then_exit_2_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["up", "--data-dir", str(tmp_path / "d"), "--venue", "binance"]) == 2
    assert CONFIRM_FLAG in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_preflight_when_gateway_down_then_exit_1_with_the_direct_hint(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preflight", "--gateway", "http://127.0.0.1:9"]) == 1
    assert "--direct" in capsys.readouterr().err


def test_status_line_when_preflight_failed_then_names_the_failed_checks() -> None:
    from entrypoints.venue_cli import preflight_line

    assert "not run yet" in preflight_line(None)
    failed = {"ok": False, "trigger": "reconnect", "checks": [{"name": "position_mode", "ok": False}]}
    assert "FAILED: position_mode" in preflight_line(failed)
    assert "all ok" in preflight_line({"ok": True, "trigger": "start", "checks": [{"name": "api_key", "ok": True}]})


def test_preflight_when_gateway_answers_then_exit_code_follows_the_checks(capsys: pytest.CaptureFixture[str]) -> None:
    import http.server
    import json
    import threading

    shown: dict[str, object] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"preflight": shown.get("value")}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    gateway = f"http://127.0.0.1:{server.server_address[1]}"
    check = {"name": "position_mode", "ok": False, "message": "hedge mode"}
    try:
        assert main(["preflight", "--gateway", gateway]) == 1  # none published yet
        shown["value"] = {"venue": "binance-usdm", "ok": False, "checks": [check], "trigger": "reconnect"}
        assert main(["preflight", "--gateway", gateway]) == 1
        assert "FAIL position_mode" in capsys.readouterr().out
        shown["value"] = {"venue": "binance-usdm", "ok": True, "checks": [{**check, "ok": True}]}
        assert main(["preflight", "--json", "--gateway", gateway]) == 0
        assert json.loads(capsys.readouterr().out)["ok"] is True
        shown["value"] = {"venue": 7}
        assert main(["preflight", "--gateway", gateway]) == 1
        assert "unreadable" in capsys.readouterr().err
    finally:
        server.shutdown()
        server.server_close()

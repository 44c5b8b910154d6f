"""`bulwark up --paper-link` (paper beside live) needs no running system to check its programs: a
paper simulator mirroring the main venue's market on its own port, with the paper account's key,
and the paper venue's position process; every service learns the paper venue."""

from __future__ import annotations

import configparser
import socket
import sys
from pathlib import Path

from entrypoints.cli import build_parser
from entrypoints.launcher import LaunchConfig, load_credentials, service_env, write_supervisor_config
from entrypoints.venue_profiles import VenueChoice
from tests.unit.test_launcher import _specs

PAPER = "binance-usdm-paper"


def _config(tmp_path: Path, **overrides: object) -> LaunchConfig:
    values: dict[str, object] = {"data_dir": tmp_path, "paper_link": True, "paper_venue_port": 6666, "venue_port": 4444}
    values.update(overrides)
    return LaunchConfig(**values)  # type: ignore[arg-type]


def _programs(config: LaunchConfig, tmp_path: Path) -> tuple[dict[str, configparser.SectionProxy], dict[str, str]]:
    parser = configparser.RawConfigParser()
    parser.read(write_supervisor_config(config, _specs(tmp_path)))
    programs = {s.removeprefix("program:"): parser[s] for s in parser if s.startswith("program:")}
    groups = {s.removeprefix("group:"): parser[s]["programs"] for s in parser if s.startswith("group:")}
    return programs, groups


def test_supervisor_config_when_paper_link_then_a_mirror_of_the_local_simulator_and_its_position_process(
    tmp_path: Path,
) -> None:
    programs, groups = _programs(_config(tmp_path), tmp_path)
    host = socket.gethostname()
    sim = programs["venue-sim-paper-link"]
    assert sim["command"] == (
        f"{sys.executable} -m services.venue_sim.main --port 6666 --source mirror "
        "--mirror-rest-url http://127.0.0.1:4444 --mirror-ws-url ws://127.0.0.1:4444"
    )
    # The paper account's key from supervisord's environment: never the venue's, no secret in the file.
    assert 'BULWARK_VENUE_API_KEY="%(ENV_BULWARK_PAPER_VENUE_API_KEY)s"' in sim["environment"]
    position = programs[f"position-{PAPER}"]
    assert position["command"] == f"{sys.executable} -m services.position.main"
    assert position["environment"] == f'BULWARK_INSTANCE_ID="position-{PAPER}@{host}",BULWARK_POSITION_VENUE="{PAPER}"'
    assert groups["venue"] == "venue-sim,venue-sim-paper-link"
    assert f"position-{PAPER}" in groups["services"].split(",")
    # The main position process still trades the venue.
    assert programs["position"]["environment"] == f'BULWARK_INSTANCE_ID="position@{host}"'


def test_supervisor_config_when_paper_link_with_another_venue_then_it_mirrors_that_venue(tmp_path: Path) -> None:
    venue = VenueChoice(profile="custom", rest_url="https://venue.example", ws_url="wss://venue.example")
    programs, groups = _programs(_config(tmp_path, venue=venue), tmp_path)
    assert (
        "--mirror-rest-url https://venue.example --mirror-ws-url wss://venue.example"
        in (programs["venue-sim-paper-link"]["command"])
    )
    assert groups["venue"] == "venue-sim-paper-link"  # no local simulator of the venue


def test_service_env_when_paper_link_then_every_service_knows_the_paper_venue_and_not_otherwise(
    tmp_path: Path,
) -> None:
    creds = load_credentials(tmp_path, environ={})
    env = service_env(_config(tmp_path), creds)
    assert env["BULWARK_PAPER_VENUE"] == PAPER
    assert env["BULWARK_PAPER_VENUE_REST_URL"] == "http://127.0.0.1:6666"
    assert env["BULWARK_PAPER_VENUE_WS_URL"] == "ws://127.0.0.1:6666"
    assert env["BULWARK_PAPER_VENUE_API_KEY"] == creds.paper_venue_api_key != creds.venue_api_key
    assert "BULWARK_PAPER" not in env  # the system itself trades live
    plain = service_env(LaunchConfig(data_dir=tmp_path), creds)
    assert plain["BULWARK_PAPER_VENUE"] == ""  # whatever the caller exported
    assert "--paper-venue-port" not in LaunchConfig(data_dir=tmp_path).ports()


def test_config_when_paper_link_with_paper_or_clashing_port_then_problems_named(tmp_path: Path) -> None:
    assert any("--paper-link" in p for p in _config(tmp_path, paper=True).problems())
    clash = _config(tmp_path, paper_venue_port=4444).problems()
    assert any("4444" in p for p in clash)
    assert any(PAPER in p for p in _config(tmp_path, backup_venue=PAPER).problems())
    assert _config(tmp_path).problems() == []


def test_cli_when_paper_link_flag_then_parsed() -> None:
    args = build_parser().parse_args(["up", "--paper-link", "--paper-venue-port", "7777"])
    assert args.paper_link and args.paper_venue_port == 7777
    assert not build_parser().parse_args(["up"]).paper_link

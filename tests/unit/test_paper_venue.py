"""`bulwark up --paper`: the paper simulator mirrors the venue's live market and the position
service's order link goes to it with the paper account's key, never the venue's; the mirror's book
follows the venue's depth stream diff by diff (`domain.book_follower`) and its frames
(`adapters.mirror`)."""

from __future__ import annotations

import configparser
from decimal import Decimal
from pathlib import Path

import pytest

from entrypoints import infra
from entrypoints.launcher import (
    PAPER_VENUE_PROGRAM,
    LaunchConfig,
    application_programs,
    load_credentials,
    service_env,
    write_supervisor_config,
)
from entrypoints.venue_cli import mode_line, paper_line, venue_line
from entrypoints.venue_profiles import MAINNET, TESTNET, VenueChoice, VenueProfileError, resolve_venue, venue_env
from services.venue_sim.adapters.mirror import market_streams, parse_frame
from services.venue_sim.domain.book_follower import BookFollower
from services.venue_sim.domain.market_events import DepthEvent, LiquidationEvent, MarkEvent, TradeEvent

REAL_KEY, REAL_SECRET = "real-venue-key", "real-venue-secret"


def _specs(tmp_path: Path) -> dict[str, infra.ServerSpec]:
    return {
        "nats": infra.ServerSpec("nats", ["/bin/nats-server"], 4222),
        "postgres": infra.ServerSpec("postgres", ["/bin/postgres"], 5432, stop_signal="INT"),
        "valkey": infra.ServerSpec("valkey", ["/bin/valkey-server"], 6379),
    }


def _programs(config: LaunchConfig, tmp_path: Path) -> dict[str, configparser.SectionProxy]:
    parser = configparser.RawConfigParser()
    parser.read(write_supervisor_config(config, _specs(tmp_path)))
    return {s.removeprefix("program:"): parser[s] for s in parser if s.startswith("program:")}


def test_resolve_venue_when_paper_then_no_key_needed_none_kept_and_mainnet_not_halted() -> None:
    environ = {"BULWARK_VENUE_API_KEY": REAL_KEY, "BULWARK_VENUE_API_SECRET": REAL_SECRET}

    mainnet = resolve_venue(MAINNET, paper=True, environ=environ)

    assert mainnet.paper and not mainnet.starts_halted and mainnet.api_key == "" and mainnet.api_secret == ""
    assert "BULWARK_VENUE_API_KEY" not in venue_env(mainnet)
    assert resolve_venue(TESTNET, paper=True, environ={}).rest_url.startswith("https://")
    with pytest.raises(VenueProfileError, match="needs no --venue-key-file"):
        resolve_venue(TESTNET, paper=True, key_file=Path("/nonexistent"))
    with pytest.raises(VenueProfileError, match="REAL MONEY"):
        resolve_venue(MAINNET, environ=environ)  # live mainnet still needs its confirmation


def test_supervisor_config_when_paper_on_a_real_venue_then_paper_simulator_and_order_link_to_it(
    tmp_path: Path,
) -> None:
    venue = VenueChoice("custom", "http://venue:9100", "ws://venue:9100", REAL_KEY, REAL_SECRET, "env")
    config = LaunchConfig(data_dir=tmp_path, venue=venue, paper=True, venue_port=9300)

    programs = _programs(config, tmp_path)
    env = service_env(config, load_credentials(tmp_path, environ={}))

    assert PAPER_VENUE_PROGRAM in application_programs(config) and "venue-sim" not in programs
    paper = programs[PAPER_VENUE_PROGRAM]
    assert (
        "--port 9300 --source mirror --mirror-rest-url http://venue:9100 --mirror-ws-url ws://venue:9100"
        in (paper["command"])
    )
    position = programs["position"]["environment"]
    assert 'BULWARK_VENUE_REST_URL="http://127.0.0.1:9300"' in position
    assert 'BULWARK_VENUE_WS_URL="ws://127.0.0.1:9300"' in position
    for environment in (position, paper["environment"]):
        assert 'BULWARK_VENUE_API_KEY="%(ENV_BULWARK_PAPER_VENUE_API_KEY)s"' in environment
    # Market data reads the venue; the services know it trades on paper.
    assert env["BULWARK_VENUE_REST_URL"] == "http://venue:9100" and env["BULWARK_PAPER"] == "true"
    assert env["BULWARK_PAPER_VENUE_API_KEY"] not in (REAL_KEY, "")
    text = (tmp_path / "supervisord.conf").read_text()
    assert REAL_KEY not in text and REAL_SECRET not in text
    assert config.ports()["--venue-port"] == 9300


def test_supervisor_config_when_paper_on_the_simulator_then_it_is_both_and_says_paper(tmp_path: Path) -> None:
    config = LaunchConfig(data_dir=tmp_path, paper=True)

    programs = _programs(config, tmp_path)
    env = service_env(config, load_credentials(tmp_path, environ={}))

    assert "venue-sim" in programs and PAPER_VENUE_PROGRAM not in programs
    assert "BULWARK_VENUE_REST_URL" not in programs["position"]["environment"]
    assert env["BULWARK_PAPER"] == "true"
    assert "BULWARK_PAPER" not in service_env(LaunchConfig(data_dir=tmp_path), load_credentials(tmp_path, environ={}))


# --------------------------------------------------------------------------- the mirror's book


def diff(first: int, final: int, previous: int, bid: str = "100") -> DepthEvent:
    return DepthEvent("BTCUSDT", first, final, previous, ((Decimal(bid), Decimal(1)),), ())


def test_book_follower_when_snapshot_arrives_then_old_diffs_dropped_bridge_applied_and_chain_followed() -> None:
    follower = BookFollower("BTCUSDT")
    assert follower.on_depth(diff(90, 95, 89)) == []
    assert follower.on_depth(diff(96, 102, 95)) == []  # buffered until the snapshot

    applied = follower.on_snapshot(100)

    assert applied == [diff(96, 102, 95)] and follower.synced
    assert follower.on_depth(diff(103, 104, 102)) == [diff(103, 104, 102)]


def test_book_follower_when_a_diff_is_lost_then_out_of_step_until_a_new_snapshot() -> None:
    follower = BookFollower("BTCUSDT")
    follower.on_snapshot(100)
    follower.on_depth(diff(99, 101, 98))

    assert follower.on_depth(diff(110, 112, 109)) is None  # 102..109 never arrived
    assert not follower.synced
    assert follower.on_depth(diff(113, 115, 112)) == []
    assert follower.on_snapshot(111) == [diff(110, 112, 109), diff(113, 115, 112)]


def test_book_follower_when_snapshot_older_than_every_diff_then_asks_for_another() -> None:
    follower = BookFollower("BTCUSDT")
    follower.on_depth(diff(120, 125, 119))

    assert follower.on_snapshot(100) is None
    assert follower.on_snapshot(122) == [diff(120, 125, 119)]


def test_mirror_frames_when_venue_sends_them_then_market_events_and_bad_ones_raise() -> None:
    depth = parse_frame(
        "btcusdt@depth@100ms",
        {"e": "depthUpdate", "E": 10, "T": 8, "s": "BTCUSDT", "U": 5, "u": 7, "pu": 4, "b": [["1", "2"]], "a": []},
    )
    assert depth == DepthEvent("BTCUSDT", 5, 7, 4, ((Decimal(1), Decimal(2)),), (), 2)
    trade = parse_frame(
        "btcusdt@aggTrade", {"e": "aggTrade", "s": "BTCUSDT", "a": 1, "l": 9, "p": "65000.1", "q": "0.5", "m": True}
    )
    assert trade == TradeEvent("BTCUSDT", 9, Decimal("65000.1"), Decimal("0.5"), True)
    mark = parse_frame("btcusdt@markPrice@1s", {"e": "markPriceUpdate", "s": "BTCUSDT", "p": "1", "i": "2", "r": "0"})
    assert mark == MarkEvent("BTCUSDT", Decimal(1), Decimal(2), Decimal(0))
    forced = parse_frame(
        "btcusdt@forceOrder", {"e": "forceOrder", "o": {"s": "BTCUSDT", "S": "SELL", "p": "9", "ap": "8", "q": "3"}}
    )
    assert forced == LiquidationEvent("BTCUSDT", "SELL", Decimal(8), Decimal(3))
    assert parse_frame("x@y", {"e": "somethingElse"}) is None
    with pytest.raises(ValueError, match="depth"):
        parse_frame("btcusdt@depth@100ms", {"e": "depthUpdate", "s": "BTCUSDT", "U": "x"})
    assert market_streams(["ETHUSDT"]) == [
        "ethusdt@depth@100ms",
        "ethusdt@aggTrade",
        "ethusdt@markPrice@1s",
        "ethusdt@forceOrder",
    ]


def test_cli_lines_when_paper_then_bulwark_up_and_status_say_so() -> None:
    choice = resolve_venue(TESTNET, paper=True, environ={})

    assert "orders on paper" in venue_line(choice) and "HALTED" not in venue_line(choice)
    shown = paper_line(True, False, "http://127.0.0.1:8100")
    assert shown is not None and "PAPER" in shown and "http://127.0.0.1:8100" in shown
    assert paper_line(False, True, "x") is None
    assert mode_line({"mode": "PAPER", "paper": True}).split()[:2] == ["mode", "PAPER"]
    assert mode_line({}).split() == ["mode", "LIVE"]

"""The venue options of the command line: `bulwark up --venue ...` (profiles in
`entrypoints.venue_profiles`) and `bulwark preflight [--json] [--direct]`.

`bulwark preflight` shows what the running system's position service found at its last
preflight (through the gateway's `/v1/status`, so it is the verdict trading obeys); `--direct`
runs the checks now against the venue the settings (or flags) name, e.g. before a first
`bulwark up --venue binance-testnet`. Either way it exits 0 only when every check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from entrypoints.operator_api import fetch_json, gateway_url
from entrypoints.venue_profiles import (
    CONFIRM_FLAG,
    MAINNET,
    PROFILES,
    SIM,
    VenueChoice,
    VenueProfileError,
    resolve_venue,
)
from proto.kv import PreflightValue


def add_up_flags(up: argparse.ArgumentParser) -> None:
    """The venue flags of `bulwark up`."""
    up.add_argument(
        "--venue",
        choices=PROFILES,
        default=SIM,
        help="venue profile: sim (default: the local simulator), binance-testnet, binance (mainnet, real money: "
        f"needs {CONFIRM_FLAG}, starts HALTED) or custom (--venue-rest-url and --venue-ws-url); "
        "README: Trading a real venue",
    )
    up.add_argument("--venue-rest-url", help="REST base URL of a custom venue, e.g. http://127.0.0.1:9100")
    up.add_argument("--venue-ws-url", help="WebSocket base URL of a custom venue, e.g. ws://127.0.0.1:9100")
    up.add_argument(
        "--venue-key-file",
        type=Path,
        help="file with api_key=... and api_secret=... (mode 0600); default: BULWARK_VENUE_API_KEY/_SECRET",
    )
    up.add_argument(CONFIRM_FLAG, dest="confirm_real_money", action="store_true", help="confirm --venue binance")
    up.add_argument(
        "--paper",
        action="store_true",
        help="paper trading: the venue's real market data, orders filled by a simulator's matching engine "
        "against its live book, no order reaches the venue (docs/strategies.md: Paper trading)",
    )


def venue_of(args: argparse.Namespace) -> VenueChoice:
    """The venue `bulwark up`'s flags ask for.

    Raises:
        VenueProfileError: as `resolve_venue`, or a simulator-only option with another venue.
    """
    choice = resolve_venue(
        args.venue,
        rest_url=args.venue_rest_url,
        ws_url=args.venue_ws_url,
        key_file=args.venue_key_file,
        confirmed=args.confirm_real_money,
        paper=args.paper,
    )
    if not choice.simulated:
        simulator_only = [
            flag
            for flag, given in (
                ("--backup-venue", args.backup_venue is not None),
                ("--venue-source", args.venue_source is not None),
                ("--venue-speed", args.venue_speed is not None),
                ("--venue-seed", args.venue_seed is not None),
            )
            if given
        ]
        if simulator_only:
            raise VenueProfileError(f"{', '.join(simulator_only)} only apply to --venue sim (the local simulator)")
    return choice


def venue_line(choice: VenueChoice) -> str:
    """What `bulwark up` prints about a venue that is not its simulator."""
    role = "market data only, orders on paper" if choice.paper else "no simulator"
    line = f"  venue            {choice.profile}: {choice.rest_url}  (streams {choice.ws_url}; {role})"
    if choice.starts_halted:
        line += "\n  trading          HALTED at start: check `bulwark preflight`, then resume"
    return line


def paper_line(paper: bool, simulated: bool, paper_url: str) -> str | None:
    """What `bulwark up` prints about paper trading (None when it trades live)."""
    if not paper:
        return None
    where = "the simulator is the venue" if simulated else f"orders to the paper simulator {paper_url}"
    return f"  mode             PAPER: no order reaches the venue ({where}; state: /_sim/state)"


def mode_line(status: dict[str, Any]) -> str:
    """`bulwark status`'s line about where orders go: LIVE or PAPER."""
    if status.get("paper"):
        return "mode               PAPER (orders filled by the paper simulator; none reaches the venue)"
    return f"mode               {status.get('mode') or 'LIVE'}"


def preflight_line(shown: dict[str, Any] | None) -> str:
    """`bulwark status`'s one line about the venue preflight (details: `bulwark preflight`)."""
    if not shown:
        return "preflight          not run yet"
    failed = [check.get("name") for check in shown.get("checks") or [] if not check.get("ok")]
    verdict = "all ok" if shown.get("ok") else f"FAILED: {', '.join(map(str, failed)) or 'venue unreachable'}"
    return f"preflight          {verdict} ({shown.get('trigger') or '?'}; `bulwark preflight` for each check)"


def add_preflight_parser(commands: Any, data_dir: Path) -> None:
    """`bulwark preflight [--json] [--direct]`."""
    parser = commands.add_parser(
        "preflight",
        help="the venue preflight: the running system's latest (default) or run now (--direct); exit 0 only "
        "when every check passes",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--gateway", help="gateway URL (default: BULWARK_GATEWAY_URL, else the data dir's system, else port 8000)"
    )
    parser.add_argument("--data-dir", type=Path, default=data_dir, help="the data dir of `bulwark up` (token, URL)")
    parser.add_argument(
        "--direct",
        action="store_true",
        help="run the checks now against the venue of the BULWARK_VENUE_* settings (or the --venue flags), "
        "without a running system; like the position service it SETS the configured leverage and margin type",
    )
    parser.add_argument("--venue", choices=PROFILES, help="with --direct: the venue profile (default: the settings)")
    parser.add_argument("--venue-rest-url", help="with --direct --venue custom")
    parser.add_argument("--venue-ws-url", help="with --direct --venue custom")
    parser.add_argument("--venue-key-file", type=Path, help="with --direct: key file (mode 0600)")


def cmd_preflight(args: argparse.Namespace, out: Callable[[str], None], err: Callable[[str], None], token: str) -> int:
    """Show the preflight; 0 only when every check passed, 1 when one failed or none is known, 2 on bad options."""
    if args.direct:
        try:
            value = asyncio.run(_direct_preflight(args))
        except VenueProfileError as exc:
            err(f"bulwark preflight: {exc}")
            return 2
    else:
        gateway = gateway_url(args.gateway, args.data_dir, os.environ)
        try:
            status = fetch_json(gateway + "/v1/status", token)
        except urllib.error.HTTPError as exc:
            err(f"bulwark preflight: gateway answered {exc.code}: {exc.read().decode(errors='replace')[:300]}")
            return 1
        except (urllib.error.URLError, OSError) as exc:
            err(
                f"bulwark preflight: gateway not reachable at {gateway} ({exc}); is `bulwark up` running? "
                "(`bulwark preflight --direct` checks the venue without it)"
            )
            return 1
        shown = status.get("preflight")
        if not shown:
            err("bulwark preflight: no preflight published yet (the position service runs it at its start)")
            return 1
        try:
            value = msgspec.convert(shown, PreflightValue)
        except msgspec.ValidationError as exc:
            err(f"bulwark preflight: the gateway's preflight is unreadable ({exc}); is it another version?")
            return 1
    if args.json:
        out(msgspec.json.encode(value).decode())
    else:
        verdict = "all ok" if value.ok else "FAILED"
        out(f"preflight of {value.venue} ({value.profile or '?'}, {value.trigger or 'now'}): {verdict}")
        for check in value.checks:
            mark = "ok  " if check.ok and not check.warning else "warn" if check.ok else "FAIL"
            out(f"  {mark} {check.name:<22} {check.message}")
    return 0 if value.ok else 1


async def _direct_preflight(args: argparse.Namespace) -> PreflightValue:
    from libs.binance.client import BinanceRestClient
    from libs.binance.preflight import run_preflight
    from libs.settings import Settings
    from services.position.preflight import preflight_config

    settings = Settings.from_env()
    profile = args.venue or settings.venue_profile
    if args.venue and args.venue != SIM:
        choice = (
            resolve_venue(
                args.venue, rest_url=args.venue_rest_url, ws_url=args.venue_ws_url, key_file=args.venue_key_file
            )
            if args.venue != MAINNET
            else resolve_venue(args.venue, key_file=args.venue_key_file, confirmed=True)
        )
        rest_url, key, secret = choice.rest_url, choice.api_key, choice.api_secret
    else:
        rest_url, key, secret = settings.venue_rest_url, settings.venue_api_key, settings.venue_api_secret
    config, problems = preflight_config(settings, profile, rest_url)
    async with BinanceRestClient(rest_url, key, secret) as client:
        report = await run_preflight(client, config, time.time_ns)
    checks = [*problems, *report.checks]
    return PreflightValue(
        venue=settings.venue,
        ok=report.ok and not problems,
        checks=checks,
        profile=profile,
        trigger="direct",
        ts_ns=time.time_ns(),
    )

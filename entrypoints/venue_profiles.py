"""Venue profiles of `bulwark up --venue`: which venue the system trades and with which key.

| profile | REST | WebSocket | simulator started | trading at start |
|---|---|---|---|---|
| `sim` (default) | the local simulator | the local simulator | yes | as persisted |
| `binance-testnet` | https://testnet.binancefuture.com | wss://fstream.binancefuture.com | no | as persisted |
| `binance` (mainnet, real money) | https://fapi.binance.com | wss://fstream.binance.com | no | HALTED |
| `custom` | `--venue-rest-url` | `--venue-ws-url` | no | as persisted |

A profile is only settings (`BULWARK_VENUE_PROFILE`, `BULWARK_VENUE_REST_URL`,
`BULWARK_VENUE_WS_URL`, `BULWARK_VENUE_API_KEY`, `BULWARK_VENUE_API_SECRET`), so compose and
Kubernetes select one the same way (docker-compose.yml, k8s/configmap.yaml). The key comes from
`BULWARK_VENUE_API_KEY` / `BULWARK_VENUE_API_SECRET` or a key file readable by its owner only
(mode 0600 or 0400); it is passed to the services in their environment and never printed, logged
or written to the data dir. On paper (`--paper`) no key is needed or kept: the venue is asked only for
public market data, and orders go to a paper simulator with its own key (`entrypoints.launcher`).
Mainnet needs an explicit confirmation flag and always starts HALTED,
written by the launcher before any service runs (`entrypoints.admin_bus.hold_halted` with
`MAINNET_HALT_REASON`; and again by position's start-up preflight, which is how compose
and Kubernetes get it too): the operator resumes after reading the preflight.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from libs.binance.preflight import PROFILE_URLS, REAL_MONEY_PROFILE

SIM = "sim"
TESTNET = "binance-testnet"
MAINNET = REAL_MONEY_PROFILE
CUSTOM = "custom"
PROFILES = (SIM, TESTNET, MAINNET, CUSTOM)
CONFIRM_FLAG = "--i-understand-this-trades-real-money"
MAINNET_HALT_REASON = (
    "mainnet profile: trading starts HALTED; read the preflight (`bulwark preflight`, /v1/status) "
    "and resume (`POST /v1/trading/resume`) when it is all ok"
)

_URLS = PROFILE_URLS
"""Binance USD-M REST and WebSocket bases; streams go on the base's routes (`/public`, `/market`,
`/private/ws/<listenKey>`: `libs.binance.routes`)."""


class VenueProfileError(ValueError):
    """The venue options cannot be used; the message says what to change."""


@dataclass(frozen=True)
class VenueChoice:
    """The venue `bulwark up` trades: its profile, endpoints and key."""

    profile: str = SIM
    rest_url: str = ""
    """Empty for `sim`: the launcher's own simulator."""
    ws_url: str = ""
    api_key: str = ""
    api_secret: str = ""
    key_source: str = ""
    """Where the key came from (for the operator; never the key itself)."""
    paper: bool = False
    """Paper trading: the venue's market data only; orders go to a paper simulator."""

    @property
    def simulated(self) -> bool:
        """The launcher starts the venue simulator."""
        return self.profile == SIM

    @property
    def starts_halted(self) -> bool:
        """Trading is set HALTED before any service starts (mainnet, unless on paper)."""
        return self.profile == MAINNET and not self.paper

    def __repr__(self) -> str:
        # Never show the key in a traceback or a debug print.
        return f"VenueChoice(profile={self.profile!r}, rest_url={self.rest_url!r}, ws_url={self.ws_url!r})"


def read_key_file(path: Path) -> tuple[str, str]:
    """(api key, api secret) from a file only its owner may read.

    The file holds `api_key=...` and `api_secret=...` lines (`BULWARK_VENUE_API_KEY=` /
    `BULWARK_VENUE_API_SECRET=` work too), or just the key and the secret on two lines;
    `#` starts a comment.

    Raises:
        VenueProfileError: missing, readable by group or others, or without both values.
    """
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise VenueProfileError(f"--venue-key-file {path}: {exc.strerror or exc}") from exc
    if mode & 0o077:
        raise VenueProfileError(
            f"--venue-key-file {path} has mode {mode:04o}: a key file must be readable by its owner only; "
            f"run `chmod 600 {path}`"
        )
    try:
        lines = [line.strip() for line in path.read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise VenueProfileError(f"--venue-key-file {path}: unreadable ({type(exc).__name__})") from exc
    lines = [line for line in lines if line and not line.startswith("#")]
    named: dict[str, str] = {}
    bare: list[str] = []
    for line in lines:
        name, sep, value = line.partition("=")
        key = name.strip().lower().removeprefix("bulwark_venue_")
        if sep and key in ("api_key", "api_secret"):
            named[key] = value.strip().strip("'\"")
        else:
            bare.append(line)
    if not named and len(bare) == 2:
        named = {"api_key": bare[0], "api_secret": bare[1]}
    if not named.get("api_key") or not named.get("api_secret"):
        # Say what is missing, never what is there.
        raise VenueProfileError(
            f"--venue-key-file {path}: needs `api_key=...` and `api_secret=...` lines (or the key and the "
            "secret on two lines)"
        )
    return named["api_key"], named["api_secret"]


def _url(flag: str, value: str, schemes: tuple[str, ...]) -> str:
    if not value.startswith(tuple(f"{scheme}://" for scheme in schemes)) or "://" == value[-3:]:
        raise VenueProfileError(f"{flag} {value!r}: expected a {' or '.join(schemes)} URL")
    return value.rstrip("/")


def resolve_venue(
    profile: str,
    *,
    rest_url: str | None = None,
    ws_url: str | None = None,
    key_file: Path | None = None,
    confirmed: bool = False,
    environ: Mapping[str, str] | None = None,
    paper: bool = False,
) -> VenueChoice:
    """The venue of `bulwark up --venue PROFILE ...` (`paper`: its market data only, no key).

    Raises:
        VenueProfileError: unknown profile, URLs missing or given where they do not belong, mainnet
            unconfirmed, no key for a real venue, an unsafe or incomplete key file.
    """
    env = os.environ if environ is None else environ
    if profile not in PROFILES:
        raise VenueProfileError(f"--venue {profile!r}: choose one of {', '.join(PROFILES)}")
    if profile == SIM:
        if rest_url or ws_url or key_file:
            raise VenueProfileError(
                "--venue-rest-url, --venue-ws-url and --venue-key-file select another venue: add --venue custom "
                "(or binance-testnet, binance)"
            )
        return VenueChoice()
    if profile == CUSTOM:
        if not rest_url or not ws_url:
            raise VenueProfileError("--venue custom needs --venue-rest-url URL and --venue-ws-url URL")
        rest, ws = _url("--venue-rest-url", rest_url, ("http", "https")), _url("--venue-ws-url", ws_url, ("ws", "wss"))
    else:
        if rest_url or ws_url:
            raise VenueProfileError(f"--venue {profile} has its own URLs; other URLs need --venue custom")
        rest, ws = _URLS[profile]
    if paper:
        if key_file is not None:
            raise VenueProfileError("--paper sends no order to the venue: it needs no --venue-key-file")
        # The venue's key is not even read: nothing on paper may sign a request to the venue.
        return VenueChoice(
            profile, rest, ws, key_source="none (paper: the venue's public market data only)", paper=True
        )
    if profile == MAINNET and not confirmed:
        raise VenueProfileError(
            f"--venue binance trades REAL MONEY on Binance mainnet: add {CONFIRM_FLAG} to confirm "
            "(trading then starts HALTED until you resume it after the preflight)"
        )
    if key_file is not None:
        key, secret = read_key_file(key_file)
        source = f"key file {key_file}"
    else:
        key, secret = env.get("BULWARK_VENUE_API_KEY", ""), env.get("BULWARK_VENUE_API_SECRET", "")
        source = "BULWARK_VENUE_API_KEY / BULWARK_VENUE_API_SECRET"
        if bool(key) != bool(secret):
            raise VenueProfileError("set both BULWARK_VENUE_API_KEY and BULWARK_VENUE_API_SECRET, or neither")
        if not key:
            if profile != CUSTOM:
                raise VenueProfileError(
                    f"--venue {profile} needs an API key: set BULWARK_VENUE_API_KEY and BULWARK_VENUE_API_SECRET, "
                    "or give --venue-key-file FILE (mode 0600)"
                )
            # A custom venue may be a simulator run elsewhere: it takes the data dir's simulator key.
            source = "the data dir's simulator key (none given)"
    return VenueChoice(profile, rest, ws, key, secret, source)


def venue_env(choice: VenueChoice) -> dict[str, str]:
    """The `BULWARK_*` settings of a venue that is not the launcher's simulator (empty for `sim`).

    The key is in it only when one was given (a custom venue without one keeps the data dir's).
    """
    if choice.simulated:
        return {"BULWARK_VENUE_PROFILE": SIM}
    env = {
        "BULWARK_VENUE_PROFILE": choice.profile,
        "BULWARK_VENUE_REST_URL": choice.rest_url,
        "BULWARK_VENUE_WS_URL": choice.ws_url,
    }
    if choice.api_key:
        env["BULWARK_VENUE_API_KEY"] = choice.api_key
        env["BULWARK_VENUE_API_SECRET"] = choice.api_secret
    return env

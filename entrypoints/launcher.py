"""`bulwark up`: the whole system on one machine under supervisord.

Infrastructure (nats-server, Postgres, Valkey) and every service run as supervisord programs, so a
crashed process is restarted (with supervisord's back-off while it keeps failing at start). The
launcher writes the supervisord configuration into the data dir, starts supervisord, waits for the
infrastructure, prepares the database and streams, then starts the venue simulator and services.
A second `bulwark up` on the same data dir resumes with the same state and tokens.

With a backup venue (`bulwark up --backup-venue`, SPEC FM-N6) a second simulator process serves
another account on its own port (`venue-sim-backup`, its own in-memory state, the same protocol
and market) and a second position process trades it (`position-<name>`,
`BULWARK_POSITION_VENUE=<name>`); every service learns the backup venue's name, URLs and keys
from `BULWARK_BACKUP_VENUE*`.

On paper (`bulwark up --paper`) no order reaches the venue. With the simulator as the venue it is
both the market and the paper venue (it only says PAPER). With another venue a paper simulator
(`venue-sim-paper`, on `--venue-port`) mirrors that venue's live market (`--source mirror`) and
the position service's order link is pointed at it with the paper account's own key, while
market-data keeps reading the venue: real market data, orders filled by the simulator's matching
engine against the live book. The venue's key is never given to the paper order link.

Paper beside live (`bulwark up --paper-link`): the system trades live, and a second order link
lets single strategies trade on paper (`POST /v1/strategies/{name}/enable {"mode": "paper"}`):
a paper simulator (`venue-sim-paper`, on `--paper-venue-port`) mirrors the main venue's market
(the local simulator with `--venue sim`) and a position process trades it as the paper venue
`<main venue>-paper` (`position-<main venue>-paper`, the paper account's key). Risk routes only
paper strategies' orders there (`BULWARK_PAPER_VENUE`). It is a flag, not always on: two more
processes on every start, and a mirror that cannot follow the venue would report a component
DOWN on a live system that does not use paper at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entrypoints import access, infra
from entrypoints.admin_bus import admin_bus, hold_halted
from entrypoints.shutdown_gate import hard_shutdown_on_record, leave_hard_shutdown
from entrypoints.venue_profiles import MAINNET_HALT_REASON, VenueChoice, venue_env
from libs import db
from libs.bus import Bus
from proto.subjects import DEFAULT_VENUE, POSITION, position_component

SERVICE_MODULES: dict[str, str] = {
    "market-data": "services.market_data.main",
    "state-builder": "services.state_builder.main",
    "risk": "services.risk.main",
    "position": "services.position.main",
    "watchdog": "services.watchdog.main",
    "gateway": "services.gateway.main",
}
STRATEGY_MODULE = "services.strategy.main"
VENUE_SIM_MODULE = "services.venue_sim.main"
POSITION_MODULE = SERVICE_MODULES["position"]
INFRA_PROGRAMS = ("nats", "postgres", "valkey")
VENUE_PROGRAM = "venue-sim"
BACKUP_VENUE_PROGRAM = "venue-sim-backup"
"""The backup venue's simulator: another account with its own orders, fills and positions."""
PAPER_VENUE_PROGRAM = "venue-sim-paper"
"""The paper venue: a simulator mirroring a real venue's live market (`--paper` with another venue)."""
PAPER_LINK_PROGRAM = "venue-sim-paper-link"
"""The paper simulator beside live (`--paper-link`): mirrors the main venue's market for paper strategies."""
DEFAULT_PAPER_VENUE_PORT = 8102
PAPER_PROFILE = "paper"
"""`BULWARK_VENUE_PROFILE` of the position process on paper (its order link is the paper simulator)."""
DEFAULT_BACKUP_VENUE_PORT = 8101
VENUE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
"""A venue name is a subject token (`evt.order.<event>.<venue>.<symbol>`) and part of a program name."""


def paper_venue_name(main_venue: str = DEFAULT_VENUE) -> str:
    """The paper venue's name beside live (`--paper-link`): `<main venue>-paper`."""
    return f"{main_venue}-paper"


def default_backup_venue(main_venue: str = DEFAULT_VENUE) -> str:
    """The backup venue's name when `--backup-venue` names none: `<main venue>-backup`."""
    return f"{main_venue}-backup"


DEFAULT_SYMBOLS = ("BTCUSDT", "ETHUSDT")
"""Symbols of a synthetic market when none are asked for (a replay defaults to its own)."""


class LaunchError(RuntimeError):
    """The system cannot be started; the message tells the user what to change."""


@dataclass
class LaunchConfig:
    """Everything `bulwark up` needs; defaults are the README's."""

    data_dir: Path
    host: str = "127.0.0.1"
    gateway_port: int = 8000
    venue_port: int = 8100
    nats_port: int = 4222
    nats_monitor_port: int = 8222
    pg_port: int = 5432
    redis_port: int = 6379
    venue_source: str | None = None
    venue_speed: float | None = None
    venue_seed: int | None = None
    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    strategies: tuple[str, ...] = ("cascade-fade", "trend")
    strategy_config: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    backup_venue: str = ""
    """Name of the backup venue to simulate and trade (FM-N6); empty: none."""
    backup_venue_port: int = DEFAULT_BACKUP_VENUE_PORT
    main_venue: str = DEFAULT_VENUE
    """`BULWARK_VENUE` of the services (a spot replay trades `binance-spot`)."""
    venue: VenueChoice = field(default_factory=VenueChoice)
    """The venue profile (`--venue`): the local simulator, or a venue elsewhere (no simulator started)."""
    metrics_port: int = 0
    """First Prometheus `/metrics` port of the services (`--metrics-port`): one each, in program order;
    0: each service takes a free port and reports it (`metrics_url` in `/v1/status`)."""
    paper: bool = False
    """Paper trading (`--paper`): no order reaches the venue (see the module docstring)."""
    paper_link: bool = False
    """A paper order link beside live (`--paper-link`, see the module docstring)."""
    paper_venue_port: int = DEFAULT_PAPER_VENUE_PORT
    leave_hard_shutdown: str = ""
    """`--leave-hard-shutdown REASON`: the operator's manual restart out of a persisted HARD_SHUTDOWN
    (`shutdown_gate`); empty: a HARD_SHUTDOWN on record is kept."""

    @property
    def paper_simulator(self) -> bool:
        """A paper simulator mirrors another venue (on `venue_port`)."""
        return self.paper and not self.venue.simulated

    @property
    def paper_venue(self) -> str:
        """The paper venue beside live ("" without `--paper-link`)."""
        return paper_venue_name(self.main_venue) if self.paper_link else ""

    def ports(self) -> dict[str, int]:
        ports = {
            "--gateway-port": self.gateway_port,
            "--nats-port": self.nats_port,
            "--nats-monitor-port": self.nats_monitor_port,
            "--pg-port": self.pg_port,
            "--redis-port": self.redis_port,
        }
        if self.venue.simulated or self.paper_simulator:
            ports["--venue-port"] = self.venue_port
        if self.backup_venue:
            ports["--backup-venue-port"] = self.backup_venue_port
        if self.paper_link:
            ports["--paper-venue-port"] = self.paper_venue_port
        return ports

    def problems(self) -> list[str]:
        """What makes this configuration unusable, in the user's terms (empty: none)."""
        found = []
        if self.backup_venue:
            if not VENUE_NAME.match(self.backup_venue):
                found.append(f"--backup-venue {self.backup_venue!r}: a venue name is letters, digits, '-' and '_' only")
            if self.backup_venue == self.main_venue:
                found.append(f"--backup-venue {self.backup_venue!r} is the main venue; name another one")
            taken = [flag for flag, port in self.ports().items() if port == self.backup_venue_port]
            if len(taken) > 1:
                found.append(f"{' and '.join(taken)} are the same port {self.backup_venue_port}")
        if self.paper_link:
            if self.paper:
                found.append("--paper-link is for paper beside live; with --paper every order is on paper already")
            taken = [flag for flag, port in self.ports().items() if port == self.paper_venue_port]
            if len(taken) > 1:
                found.append(f"{' and '.join(taken)} are the same port {self.paper_venue_port}")
            if self.backup_venue == self.paper_venue:
                found.append(f"--backup-venue {self.backup_venue!r} is the paper venue's name; name another one")
        metrics = metrics_ports(self)
        if metrics and max(metrics.values()) > 65535:
            found.append(f"--metrics-port {self.metrics_port}: {len(metrics)} services need ports up to 65535")
        for flag, port in self.ports().items():
            if port in metrics.values():
                program = next(name for name, taken in metrics.items() if taken == port)
                found.append(f"{flag} {port} is the metrics port of {program} (--metrics-port {self.metrics_port})")
        return found

    def url(self, scheme: str, port: int) -> str:
        return f"{scheme}://{self.host}:{port}"


@dataclass
class Credentials:
    admin_token: str
    operator_token: str
    viewer_token: str
    venue_api_key: str
    venue_api_secret: str
    backup_venue_api_key: str
    backup_venue_api_secret: str
    paper_venue_api_key: str = "bulwark-paper-key"
    paper_venue_api_secret: str = "bulwark-paper-secret"


VENUE_START_WAIT_S = 60.0
"""How long `bulwark up` waits for the venue simulator before starting the services regardless."""


def load_credentials(data_dir: Path, environ: dict[str, str] | None = None) -> Credentials:
    """Tokens and venue keys, generated once per data dir and kept in `credentials.json` (0600).

    `BULWARK_ADMIN_TOKEN`, `BULWARK_OPERATOR_TOKEN`, `BULWARK_VIEWER_TOKEN`, `BULWARK_VENUE_API_KEY`,
    `BULWARK_VENUE_API_SECRET`, `BULWARK_BACKUP_VENUE_API_KEY`, `BULWARK_BACKUP_VENUE_API_SECRET`,
    `BULWARK_PAPER_VENUE_API_KEY` and `BULWARK_PAPER_VENUE_API_SECRET` override the stored values.
    The backup venue's simulator is another account: its own key; so is the paper venue's.
    """
    env = dict(os.environ if environ is None else environ)
    path = data_dir / "credentials.json"
    stored: dict[str, str] = {}
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise LaunchError(f"{path} is unreadable ({exc}); remove it to generate new tokens") from exc
    defaults = {
        "admin_token": secrets.token_hex(16),
        "operator_token": secrets.token_hex(16),
        "viewer_token": secrets.token_hex(16),
        "venue_api_key": "bulwark-sim-key",
        "venue_api_secret": "bulwark-sim-secret",
        "backup_venue_api_key": "bulwark-sim-backup-key",
        "backup_venue_api_secret": "bulwark-sim-backup-secret",
        "paper_venue_api_key": "bulwark-paper-key",
        "paper_venue_api_secret": "bulwark-paper-secret",
    }
    values = {key: stored.get(key) or default for key, default in defaults.items()}
    if stored != values:
        path.write_text(json.dumps(values, indent=2))
        path.chmod(0o600)
    for key in values:
        override = env.get(f"BULWARK_{key.upper()}")
        if override:
            values[key] = override
    return Credentials(**values)


def service_env(config: LaunchConfig, creds: Credentials) -> dict[str, str]:
    """The `BULWARK_*` environment every program gets (inherited from supervisord)."""
    env = {
        "BULWARK_NATS_URL": f"nats://{config.host}:{config.nats_port}",
        "BULWARK_PG_DSN": infra.postgres_dsn(config.pg_port, config.host),
        "BULWARK_REDIS_URL": f"redis://{config.host}:{config.redis_port}/0",
        "BULWARK_VENUE_REST_URL": config.url("http", config.venue_port),
        "BULWARK_VENUE_WS_URL": config.url("ws", config.venue_port),
        "BULWARK_VENUE_API_KEY": creds.venue_api_key,
        "BULWARK_VENUE_API_SECRET": creds.venue_api_secret,
        "BULWARK_ADMIN_TOKEN": creds.admin_token,
        "BULWARK_OPERATOR_TOKEN": creds.operator_token,
        "BULWARK_VIEWER_TOKEN": creds.viewer_token,
        "BULWARK_GATEWAY_HOST": config.host,
        "BULWARK_GATEWAY_PORT": str(config.gateway_port),
        "BULWARK_SYMBOLS": ",".join(config.symbols),
        "BULWARK_STRATEGIES": ",".join(config.strategies),
        "BULWARK_SIM_HOST": config.host,
        "BULWARK_SIM_PORT": str(config.venue_port),
        # The launcher owns the topology: a backup venue is configured exactly when its simulator
        # and position process run, whatever the caller's environment says.
        "BULWARK_BACKUP_VENUE": config.backup_venue,
        "BULWARK_POSITION_VENUE": "",
        # Each service's own /metrics port: a free one unless `--metrics-port` gives them (per program).
        "BULWARK_METRICS_HOST": config.host,
        "BULWARK_METRICS_PORT": "0",
        # Every venue profile's position process publishes the venue's rules (exchangeInfo): risk
        # denies entries until they are in KV rather than letting them out unchecked.
        "BULWARK_VENUE_RULES_REQUIRED": "true",
        "PYTHONUNBUFFERED": "1",
    }
    if config.backup_venue:
        env.update(
            {
                "BULWARK_BACKUP_VENUE_REST_URL": config.url("http", config.backup_venue_port),
                "BULWARK_BACKUP_VENUE_WS_URL": config.url("ws", config.backup_venue_port),
                "BULWARK_BACKUP_VENUE_API_KEY": creds.backup_venue_api_key,
                "BULWARK_BACKUP_VENUE_API_SECRET": creds.backup_venue_api_secret,
            }
        )
    if config.paper:
        env["BULWARK_PAPER"] = "true"
    # Like the backup venue: configured exactly when its simulator and position process run.
    env["BULWARK_PAPER_VENUE"] = config.paper_venue
    if config.paper_link:
        env.update(
            {
                "BULWARK_PAPER_VENUE_REST_URL": config.url("http", config.paper_venue_port),
                "BULWARK_PAPER_VENUE_WS_URL": config.url("ws", config.paper_venue_port),
            }
        )
    if config.paper_simulator or config.paper_link:
        # Only the paper simulator and the position process read them (`write_supervisor_config`).
        env["BULWARK_PAPER_VENUE_API_KEY"] = creds.paper_venue_api_key
        env["BULWARK_PAPER_VENUE_API_SECRET"] = creds.paper_venue_api_secret
    if config.venue_source:
        env["BULWARK_SIM_SOURCE"] = config.venue_source
    if config.venue_speed is not None:
        env["BULWARK_SIM_SPEED"] = str(config.venue_speed)
    if config.venue_seed is not None:
        env["BULWARK_SIM_SEED"] = str(config.venue_seed)
    if config.strategy_config is not None:
        env["BULWARK_STRATEGY_CONFIG"] = str(config.strategy_config)
    env.update(venue_env(config.venue))
    env.update(config.extra_env)
    return env


def _program(name: str, command: list[str], logs: Path, *, priority: int, autostart: bool, **extra: str) -> str:
    lines = [
        f"[program:{name}]",
        "command=" + " ".join(_quote(part) for part in command),
        f"priority={priority}",
        f"autostart={'true' if autostart else 'false'}",
        "autorestart=true",
        "startsecs=1",
        "startretries=20",
        "stopwaitsecs=10",
        "stopasgroup=true",
        "killasgroup=true",
        f"stdout_logfile={logs / (name + '.log')}",
        "stdout_logfile_maxbytes=20MB",
        "stdout_logfile_backups=3",
        "redirect_stderr=true",
    ]
    lines += [f"{key}={value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def _quote(part: str) -> str:
    if not part or any(ch in part for ch in ' "%;#'):
        escaped = part.replace("%", "%%").replace('"', '\\"')
        return f'"{escaped}"'
    return part


PAPER_ACCOUNT_ENV = {
    # Taken from supervisord's environment so no secret is written to its config.
    "BULWARK_VENUE_API_KEY": "%(ENV_BULWARK_PAPER_VENUE_API_KEY)s",
    "BULWARK_VENUE_API_SECRET": "%(ENV_BULWARK_PAPER_VENUE_API_SECRET)s",
}
"""The paper account's key, for the paper simulator and the order link to it (never the venue's)."""


def paper_simulator_args(config: LaunchConfig) -> list[str]:
    """The paper simulator's flags: mirror the venue's live market (public endpoints only)."""
    return ["--source", "mirror", "--mirror-rest-url", config.venue.rest_url, "--mirror-ws-url", config.venue.ws_url]


def mirror_urls(config: LaunchConfig) -> tuple[str, str]:
    """(REST, WebSocket) base of the market a paper simulator mirrors: the venue's, or the local
    simulator's with `--venue sim`."""
    if config.venue.simulated:
        return config.url("http", config.venue_port), config.url("ws", config.venue_port)
    return config.venue.rest_url, config.venue.ws_url


def paper_link_args(config: LaunchConfig) -> list[str]:
    """The paper simulator beside live: its own port, mirroring the main venue's market."""
    rest, ws = mirror_urls(config)
    return [
        "--port",
        str(config.paper_venue_port),
        "--source",
        "mirror",
        "--mirror-rest-url",
        rest,
        "--mirror-ws-url",
        ws,
    ]


def paper_position_program(config: LaunchConfig) -> str | None:
    """The program (= component) name of the paper venue's position process (`--paper-link`)."""
    return position_component(config.paper_venue, config.main_venue) if config.paper_venue else None


def paper_order_link_env(config: LaunchConfig) -> dict[str, str]:
    """The main position process's settings on paper: its order link goes to the paper simulator."""
    return {
        "BULWARK_VENUE_REST_URL": config.url("http", config.venue_port),
        "BULWARK_VENUE_WS_URL": config.url("ws", config.venue_port),
        "BULWARK_VENUE_REST_ALTERNATES": "",
        "BULWARK_VENUE_WS_ALTERNATES": "",
        "BULWARK_VENUE_WS_ROUTED": "true",
        "BULWARK_VENUE_PROFILE": PAPER_PROFILE,
        **PAPER_ACCOUNT_ENV,
    }


def venue_programs(config: LaunchConfig) -> tuple[str, ...]:
    """The simulator programs: the main venue's, then the backup venue's if configured (none when
    the venue profile is not `sim`)."""
    link = (PAPER_LINK_PROGRAM,) if config.paper_link else ()
    if config.paper_simulator:
        return (PAPER_VENUE_PROGRAM,)
    if not config.venue.simulated:
        return link
    return (VENUE_PROGRAM, BACKUP_VENUE_PROGRAM, *link) if config.backup_venue else (VENUE_PROGRAM, *link)


def backup_position_program(config: LaunchConfig) -> str | None:
    """The program (= component) name of the position process of the backup venue, if any."""
    return position_component(config.backup_venue, config.main_venue) if config.backup_venue else None


def application_programs(config: LaunchConfig) -> dict[str, str]:
    """Program name -> python module of the venue simulator(s) and every service."""
    programs = dict.fromkeys(venue_programs(config), VENUE_SIM_MODULE)
    programs.update(SERVICE_MODULES)
    backup_position = backup_position_program(config)
    if backup_position is not None:
        programs[backup_position] = POSITION_MODULE
    paper_position = paper_position_program(config)
    if paper_position is not None:
        programs[paper_position] = POSITION_MODULE
    for name in config.strategies:
        programs[f"strategy-{name}"] = STRATEGY_MODULE
    return programs


def metrics_ports(config: LaunchConfig) -> dict[str, int]:
    """Program name -> its Prometheus port, consecutive from `--metrics-port` in program order (the same
    order at every start, so a scrape configuration stays valid); empty with 0 (free ports)."""
    if not config.metrics_port:
        return {}
    return {name: config.metrics_port + index for index, name in enumerate(bus_components(config))}


def program_instance_id(program: str) -> str:
    """`BULWARK_INSTANCE_ID` of a supervised program: the same across its restarts.

    supervisord runs at most one process per program and restarts it only after it exited, so a
    restarted position service or strategy takes its single-writer lease back at once (a new
    fencing token) instead of waiting for the dead holder's lease to expire (SPEC §8). A process
    of another program, host or `bulwark up` is another holder.
    """
    return f"{program}@{socket.gethostname()}"


def bus_components(config: LaunchConfig) -> tuple[str, ...]:
    """The programs that connect to NATS, each as its own user (every service; not the simulators)."""
    return tuple(name for name in application_programs(config) if name not in venue_programs(config))


def write_supervisor_config(
    config: LaunchConfig, specs: dict[str, infra.ServerSpec], bus_credentials: access.BusCredentials | None = None
) -> Path:
    data = config.data_dir
    logs = data / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    sections = [
        f"[unix_http_server]\nfile={data / 'supervisor.sock'}\nchmod=0700\n",
        "[supervisord]\nnodaemon=true\n"
        f"logfile={logs / 'supervisord.log'}\npidfile={data / 'supervisord.pid'}\nchildlogdir={logs}\n"
        "loglevel=info\n",
        "[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n",
        f"[supervisorctl]\nserverurl=unix://{data / 'supervisor.sock'}\n",
    ]
    for name in INFRA_PROGRAMS:
        spec = specs[name]
        extra: dict[str, str] = {"stopsignal": spec.stop_signal}
        if spec.user:
            extra["user"] = spec.user
        sections.append(_program(name, spec.command, logs, priority=10, autostart=True, **extra))
    for name, module in application_programs(config).items():
        extra = {}
        command = [sys.executable, "-m", module]
        environment: dict[str, str] = {}
        if "BULWARK_INSTANCE_ID" not in config.extra_env:
            environment["BULWARK_INSTANCE_ID"] = program_instance_id(name)
        if name.startswith("strategy-"):
            # One OS process per strategy instance (FM-C2: a crash or kill -9 affects no other one).
            instance = name.removeprefix("strategy-")
            command += ["--name", instance]
            environment["BULWARK_STRATEGY_NAME"] = instance
        elif name == backup_position_program(config):
            environment["BULWARK_POSITION_VENUE"] = config.backup_venue
        elif name == paper_position_program(config):
            environment["BULWARK_POSITION_VENUE"] = config.paper_venue
        elif name == PAPER_LINK_PROGRAM:
            command += paper_link_args(config)
            environment.update(PAPER_ACCOUNT_ENV)
        elif name == PAPER_VENUE_PROGRAM:
            command += ["--port", str(config.venue_port), *paper_simulator_args(config)]
            environment.update(PAPER_ACCOUNT_ENV)
        elif name == POSITION and config.paper_simulator:
            environment.update(paper_order_link_env(config))
        elif name == BACKUP_VENUE_PROGRAM:
            command += ["--port", str(config.backup_venue_port)]
            # The simulator accepts the key its account is given (BULWARK_VENUE_API_*): the backup
            # account's, taken from supervisord's environment so no secret is written to its config.
            environment["BULWARK_VENUE_API_KEY"] = "%(ENV_BULWARK_BACKUP_VENUE_API_KEY)s"
            environment["BULWARK_VENUE_API_SECRET"] = "%(ENV_BULWARK_BACKUP_VENUE_API_SECRET)s"
        if bus_credentials is not None and name in venue_programs(config):
            # Only the holder of the data dir's token may inject faults or read the true state.
            environment.update(bus_credentials.sim_env())
        if bus_credentials is not None and name in bus_components(config):
            # Each service its own NATS (and Valkey) user; the file is 0600 like the credentials.
            environment.update(bus_credentials.service_env(name))
            environment["BULWARK_PG_DSN"] = infra.postgres_dsn(
                config.pg_port, config.host, password=bus_credentials.postgres_password
            )
        if name in metrics_ports(config):
            environment["BULWARK_METRICS_PORT"] = str(metrics_ports(config)[name])
        if environment:
            extra["environment"] = ",".join(f'{key}="{value}"' for key, value in environment.items())
        priority = 20 if name in venue_programs(config) else 30
        sections.append(_program(name, command, logs, priority=priority, autostart=False, **extra))
    # Groups stop as a whole: supervisord stops one group at a time, so one group per layer lets
    # every service stop in parallel (then the simulators, then the infrastructure).
    services = [name for name in application_programs(config) if name not in venue_programs(config)]
    sections.append(f"[group:infra]\nprograms={','.join(INFRA_PROGRAMS)}\npriority=10\n")
    if venue_programs(config):
        sections.append(f"[group:venue]\nprograms={','.join(venue_programs(config))}\npriority=20\n")
    sections.append(f"[group:services]\nprograms={','.join(services)}\npriority=30\n")
    path = data / "supervisord.conf"
    infra.write_private(path, "\n".join(sections))
    return path


def server_specs(config: LaunchConfig, bus_credentials: access.BusCredentials) -> dict[str, infra.ServerSpec]:
    """nats-server with a user per service, Postgres, and Valkey with its ACL (nobody gets in without a password)."""
    data = config.data_dir
    valkey_admin = (access.VALKEY_ADMIN, bus_credentials.valkey[access.VALKEY_ADMIN])
    authorization = access.nats_authorization(bus_credentials.nats, config.main_venue)
    return {
        "nats": infra.nats_spec(data, config.nats_port, config.nats_monitor_port, config.host, authorization),
        "postgres": infra.postgres_spec(data, config.pg_port, config.host, bus_credentials.postgres_password),
        "valkey": infra.valkey_spec(
            data, config.redis_port, config.host, access.write_valkey_acl(data, bus_credentials), valkey_admin
        ),
    }


def supervisor_rpc(data_dir: Path) -> Any:
    """An XML-RPC proxy to the supervisord of a data dir (over its unix socket)."""
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, f"unix://{data_dir / 'supervisor.sock'}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def check_ports(config: LaunchConfig) -> None:
    problems = config.problems()
    if problems:
        raise LaunchError("; ".join(problems))
    busy = [f"{flag} {port}" for flag, port in config.ports().items() if not infra.port_is_free(config.host, port)]
    busy += [
        f"--metrics-port {port} ({program})"
        for program, port in metrics_ports(config).items()
        if not infra.port_is_free(config.host, port)
    ]
    if busy:
        raise LaunchError(
            "port(s) already in use on "
            + config.host
            + ": "
            + ", ".join(busy)
            + ". Stop whatever uses them (another `bulwark up`?) or choose other ports with those flags."
        )


def system_running_on(data_dir: Path) -> int | None:
    pid_file = data_dir / "supervisord.pid"
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


async def _prepare_stores(config: LaunchConfig, bus: Bus, bus_credentials: access.BusCredentials) -> None:
    password = bus_credentials.postgres_password
    await infra.ensure_database(config.pg_port, config.host, password=password, data_dir=config.data_dir)
    pool = await db.create_pool(infra.postgres_dsn(config.pg_port, config.host, password=password))
    try:
        await db.migrate(pool)
    finally:
        await pool.close()
    await bus.ensure_streams()


def _pings(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):
        return False


class System:
    """A running `bulwark up`: supervisord and its programs."""

    def __init__(self, config: LaunchConfig, announce: Callable[[str], None] = lambda line: None) -> None:
        self.config = config
        self.announce = announce
        self.process: subprocess.Popen[bytes] | None = None
        self.credentials: Credentials | None = None

    def start(self, timeout_s: float = 90.0) -> None:
        """Start everything; returns once every program was asked to start.

        Raises:
            LaunchError: busy port, missing binary, a server that does not come up.
        """
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        running = system_running_on(config.data_dir)
        if running is not None:
            raise LaunchError(f"a Bulwark system is already running on {config.data_dir} (supervisord pid {running})")
        check_ports(config)
        try:
            bus_credentials = access.load_bus_credentials(config.data_dir, bus_components(config))
            specs = server_specs(config, bus_credentials)
        except (infra.InfraError, access.AccessError, OSError, subprocess.CalledProcessError) as exc:
            raise LaunchError(str(exc)) from exc
        self.credentials = load_credentials(config.data_dir)
        conf = write_supervisor_config(config, specs, bus_credentials)
        env = {**os.environ, **service_env(config, self.credentials)}
        supervisord = Path(sys.executable).parent / "supervisord"
        command = [str(supervisord)] if supervisord.exists() else [sys.executable, "-m", "supervisor.supervisord"]
        self.process = subprocess.Popen(
            [*command, "-c", str(conf)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        for name in INFRA_PROGRAMS:
            remaining = max(1.0, deadline - time.monotonic())
            try:
                infra.wait_ready(specs[name], remaining, alive=self.alive)
            except infra.InfraError as exc:
                log = config.data_dir / "logs" / f"{name}.log"
                tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
                self.stop()
                raise LaunchError(f"{exc}\n--- {log} ---\n{tail}") from exc
            self.announce(f"{name:<9} ready on {config.host}:{specs[name].port}")
        asyncio.run(self._before_services(bus_credentials))
        rpc = self.rpc()
        if venue_programs(config):
            rpc.supervisor.startProcessGroup("venue", False)
        self.wait_venue(min(VENUE_START_WAIT_S, max(1.0, deadline - time.monotonic())))
        rpc.supervisor.startProcessGroup("services", False)

    async def _before_services(self, bus_credentials: access.BusCredentials) -> None:
        """Database, streams, the mainnet HALT and the HARD_SHUTDOWN gate, over one admin connection."""
        config = self.config
        admin = access.ADMIN
        nats_url = f"nats://{config.host}:{config.nats_port}"
        async with admin_bus(nats_url, user=admin, password=bus_credentials.nats[admin]) as bus:
            await _prepare_stores(config, bus, bus_credentials)
            if config.venue.starts_halted:
                await hold_halted(bus, MAINNET_HALT_REASON)
            await self._hard_shutdown_gate(bus)

    async def _hard_shutdown_gate(self, bus: Bus) -> None:
        """Keep a HARD_SHUTDOWN on record and say so, or leave it when the operator asked to."""
        config = self.config
        if config.leave_hard_shutdown:
            left = await leave_hard_shutdown(bus, config.leave_hard_shutdown)
            if left is None:
                self.announce("--leave-hard-shutdown: the system was not in HARD_SHUTDOWN; nothing changed")
            else:
                self.announce(
                    f"left HARD_SHUTDOWN ({left.reason}); level NORMAL, trading HALTED until an operator resumes"
                )
            return
        held = await hard_shutdown_on_record(bus)
        if held is not None:
            self.announce(
                f"HARD_SHUTDOWN on record ({held.reason}): trading stays HALTED. Once the cause is fixed, "
                'restart with --leave-hard-shutdown "why" (docs/runbooks/degradation-levels.md)'
            )

    def venue_urls(self) -> dict[str, str]:
        """Program name -> REST base URL of every venue simulator of this system."""
        config = self.config
        if config.paper_simulator:
            return {PAPER_VENUE_PROGRAM: config.url("http", config.venue_port)}
        if not config.venue.simulated:
            return {PAPER_LINK_PROGRAM: config.url("http", config.paper_venue_port)} if config.paper_link else {}
        urls = {VENUE_PROGRAM: config.url("http", config.venue_port)}
        if config.backup_venue:
            urls[BACKUP_VENUE_PROGRAM] = config.url("http", config.backup_venue_port)
        if config.paper_link:
            urls[PAPER_LINK_PROGRAM] = config.url("http", config.paper_venue_port)
        return urls

    def wait_venue(self, timeout_s: float) -> bool:
        """Wait until every venue simulator answers `GET /fapi/v1/ping` (they load their recordings first).

        Services started before them would find a venue unreachable: a position service's
        reconciliation would open the venue breaker and keep the system from trading for its 30 s
        cool-down. Past `timeout_s` the services start anyway: they handle an unreachable venue.
        """
        deadline = time.monotonic() + timeout_s
        waiting = [f"{url}/fapi/v1/ping" for url in self.venue_urls().values()]
        while waiting and time.monotonic() < deadline and (self.process is None or self.alive()):
            waiting = [url for url in waiting if not _pings(url)]
            if waiting:
                time.sleep(0.2)
        for url in waiting:
            self.announce(
                f"venue simulator not answering on {url} after {timeout_s:.0f} s; starting the services anyway"
            )
        return not waiting

    def rpc(self) -> Any:
        return supervisor_rpc(self.config.data_dir)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def programs(self) -> list[dict[str, Any]]:
        return list(self.rpc().supervisor.getAllProcessInfo())

    def revive_fatal(self) -> list[str]:
        """Start again any program supervisord gave up on (FATAL), so back-off never ends in silence."""
        revived = []
        for info in self.programs():
            if info["statename"] == "FATAL":
                with contextlib.suppress(xmlrpc.client.Fault):
                    self.rpc().supervisor.startProcess(f"{info['group']}:{info['name']}", False)
                    revived.append(info["name"])
        return revived

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM to supervisord: programs stop in reverse priority (services, then infrastructure)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

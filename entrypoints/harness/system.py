"""The whole system launched exactly as a user does (`bulwark up` in a subprocess), for e2e tests,
benchmarks and chaos runs that need everything running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from entrypoints.access import ADMIN, load_bus_credentials
from entrypoints.infra import free_port
from entrypoints.launcher import (
    BACKUP_VENUE_PROGRAM,
    INFRA_PROGRAMS,
    PAPER_VENUE_PROGRAM,
    VENUE_PROGRAM,
    supervisor_rpc,
)
from proto.subjects import CORE_COMPONENTS, MARKET_WS_LINK, POSITION


def market_streams_connected(status: dict[str, Any]) -> bool:
    """Every market-data WebSocket link in a `/v1/status` CONNECTED: risk denies entries during a
    reconnect's clean window (link SUSPECT) even while the books are VALID again."""
    links = status.get("links") or {}
    return all(
        isinstance(value, dict) and value.get("state") == "CONNECTED"
        for name, value in links.items()
        if name.endswith(f".{MARKET_WS_LINK}")
    )


def market_ready(status: dict[str, Any]) -> bool:
    """Every symbol of a `/v1/status` VALID and every market stream CONNECTED."""
    symbols = status.get("symbols") or {}
    return (
        bool(symbols)
        and all(symbol.get("hot_state") == "VALID" for symbol in symbols.values())
        and market_streams_connected(status)
    )


@dataclass
class RunningSystem:
    """A running `bulwark up` and how to reach it."""

    process: subprocess.Popen[bytes]
    data_dir: Path
    gateway: str
    venue: str
    """The venue simulator's URL with its control token as credentials (`http://sim:TOKEN@host:port`)."""
    admin_token: str
    operator_token: str
    viewer_token: str
    log_path: Path
    nats_url: str = field(default="", repr=False)
    """The system's NATS with the admin user's credentials, for tests that play a part of the
    system (e.g. a strategy's signals)."""
    backup_venue: str = ""
    """The backup venue simulator's URL (`bulwark up --backup-venue`), empty without one; like
    `venue`, with the simulators' control token as its credentials."""
    backup_venue_name: str = ""
    paper_venue: str = ""
    """The paper link's simulator URL (`bulwark up --paper-link`), empty without one; like `venue`."""
    paper_venue_name: str = ""

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.gateway,
            headers={"Authorization": f"Bearer {token or self.admin_token}"},
            timeout=15.0,
        )

    def disable_strategies(self) -> None:
        """Disable every strategy instance (they keep running and heartbeating), so only a test's
        own orders move positions and PnL."""
        with self.client() as client:
            for strategy in client.get("/v1/strategies").json()["strategies"]:
                response = client.post(f"/v1/strategies/{strategy['name']}/disable")
                assert response.status_code == 202, response.text

    def status(self) -> dict[str, Any]:
        with self.client() as client:
            response = client.get("/v1/status")
            response.raise_for_status()
            result: dict[str, Any] = response.json()
            return result

    def wait_all_ready(self, components: tuple[str, ...] | None = None, timeout_s: float = 90.0) -> dict[str, Any]:
        """Poll `/v1/status` until every one of `components` heartbeats READY.

        Without `components`: every core component, every `strategy-<name>` the status lists (at
        least one strategy) and a backup venue's `position-<venue>` when it lists one, and the
        market ready to trade on (`market_ready`): a test's first order must not meet a book still
        being built or a reconnect's clean window.
        """
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.status()
                comps = last["components"]
                listed = sorted(n for n in comps if n.startswith(("strategy-", f"{POSITION}-")))
                wanted = components or (*CORE_COMPONENTS, *listed)
                if (
                    (components or any(n.startswith("strategy-") for n in comps))
                    and all(comps.get(name, {}).get("state") == "READY" for name in wanted)
                    and (components is not None or market_ready(last))
                ):
                    return last
            except (httpx.HTTPError, KeyError) as exc:
                last = repr(exc)
            time.sleep(0.5)
        raise AssertionError(f"not every component READY within {timeout_s}s; last status: {last}")

    def program(self, name: str) -> dict[str, Any]:
        """supervisord's record of one program (`nats`, `postgres`, `valkey`, `venue-sim`,
        `venue-sim-backup`, a service)."""
        info: dict[str, Any] = self._supervisor("getProcessInfo", _program_name(name))
        return info

    def program_pid(self, name: str) -> int | None:
        """The pid of a program supervisord runs (the infrastructure has no heartbeat with a pid)."""
        info = self.program(name)
        return int(info["pid"]) if info.get("statename") == "RUNNING" and info.get("pid") else None

    def stop_program(self, name: str) -> None:
        """Stop a program and keep it stopped (supervisord does not restart what it was told to stop)."""
        self._supervisor("stopProcess", _program_name(name), True)

    def start_program(self, name: str) -> None:
        self._supervisor("startProcess", _program_name(name), True)

    def _supervisor(self, method: str, *args: Any) -> Any:
        """One XML-RPC call to supervisord, closing its socket after (no leaked sockets)."""
        proxy = supervisor_rpc(self.data_dir)
        try:
            return getattr(proxy.supervisor, method)(*args)
        finally:
            proxy("close")()


def _program_name(name: str) -> str:
    """supervisord's `group:name` for a program of `bulwark up` (see entrypoints.launcher)."""
    if name in INFRA_PROGRAMS:
        return f"infra:{name}"
    if name in (VENUE_PROGRAM, BACKUP_VENUE_PROGRAM, PAPER_VENUE_PROGRAM):
        return f"venue:{name}"
    return f"services:{name}"


# A strategy configuration under which the default instances never trade: the load script is then
# the only source of orders, so two runs of it are comparable (`bulwark up --strategy-config`).
QUIET_STRATEGY_CONFIG = """\
[cascade-fade]
min_liquidations = 1000000

[trend]
min_gap_bps = 1000000
warmup_s = 100000
"""


LOAD_ENV = {"BULWARK_RISK_CB1_CONSECUTIVE_LOSSES": "1000000"}
"""Settings of a system the load script (`entrypoints.harness.load`) drives: its round trips mostly lose
the spread and fees, so five losses in a row would trip CB-1 (HALTED, flatten) part-way through a
long run and end the comparison. CB-1 itself has its own tests."""


def quiet_strategy_args(folder: Path) -> list[str]:
    """`bulwark up` arguments that keep the strategy instances from trading (they still run and
    heartbeat), so operator orders are the only orders: runs become comparable."""
    config = folder / "quiet-strategies.toml"
    config.write_text(QUIET_STRATEGY_CONFIG)
    return ["--strategy-config", str(config)]


def start_system(
    data_dir: Path, log_path: Path, extra_args: list[str] | None = None, env: dict[str, str] | None = None
) -> RunningSystem:
    """Run `bulwark up` on free loopback ports, as a user would, and wait for its credentials.

    `env` adds `BULWARK_*` settings for every service (e.g. a short CB-2 pause for a test); the
    caller's own `BULWARK_*` variables are never passed on. With `--backup-venue` among
    `extra_args`, the backup venue simulator gets a free port too.
    """
    ports = {name: free_port() for name in ("gateway", "venue", "nats", "monitor", "pg", "redis", "backup", "paper")}
    backup_args = ["--backup-venue-port", str(ports["backup"])] if "--backup-venue" in (extra_args or []) else []
    if "--paper-link" in (extra_args or []):
        backup_args += ["--paper-venue-port", str(ports["paper"])]
    env = {**{key: value for key, value in os.environ.items() if not key.startswith("BULWARK_")}, **(env or {})}
    command = [
        sys.executable,
        "-m",
        "entrypoints.cli",
        "up",
        "--data-dir",
        str(data_dir),
        "--gateway-port",
        str(ports["gateway"]),
        "--venue-port",
        str(ports["venue"]),
        "--nats-port",
        str(ports["nats"]),
        "--nats-monitor-port",
        str(ports["monitor"]),
        "--pg-port",
        str(ports["pg"]),
        "--redis-port",
        str(ports["redis"]),
        *backup_args,
        *(extra_args or []),
    ]
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    credentials = data_dir / "credentials.json"
    deadline = time.monotonic() + 120
    while not credentials.exists() or not log_path.read_text(errors="replace").count("admin token"):
        if process.poll() is not None:
            raise AssertionError(f"bulwark up exited {process.returncode}:\n{log_path.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            raise AssertionError(f"bulwark up did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    creds = json.loads(credentials.read_text())
    endpoints = json.loads((data_dir / "endpoints.json").read_text())
    # The simulators' control API wants the data dir's token: carried in the URLs as Basic
    # credentials, so every `f"{system.venue}/_sim/..."` of httpx or aiohttp presents it.
    bus = load_bus_credentials(data_dir, ())
    return RunningSystem(
        process=process,
        data_dir=data_dir,
        gateway=f"http://127.0.0.1:{ports['gateway']}",
        venue=bus.sim_url(f"http://127.0.0.1:{ports['venue']}"),
        admin_token=creds["admin_token"],
        operator_token=creds["operator_token"],
        viewer_token=creds["viewer_token"],
        log_path=log_path,
        nats_url=bus.nats_url("127.0.0.1", ports["nats"], ADMIN),
        backup_venue=bus.sim_url(endpoints["backup_venue"]) if endpoints.get("backup_venue") else "",
        backup_venue_name=endpoints.get("backup_venue_name", ""),
        paper_venue=bus.sim_url(endpoints["paper_venue"]) if endpoints.get("paper_venue") else "",
        paper_venue_name=endpoints.get("paper_venue_name", ""),
    )


def start_load_system(data_dir: Path, log_path: Path, folder: Path) -> RunningSystem:
    """A system for the load script: quiet strategies (operator orders only) and `LOAD_ENV`."""
    return start_system(data_dir, log_path, quiet_strategy_args(folder), env=LOAD_ENV)


def stop_system(system: RunningSystem, timeout_s: float = 90.0) -> int:
    """SIGTERM `bulwark up` (it stops every process it started); kill it if it hangs."""
    if system.process.poll() is None:
        system.process.send_signal(signal.SIGTERM)
        try:
            system.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            system.process.kill()
            system.process.wait(timeout=10)
    return system.process.returncode

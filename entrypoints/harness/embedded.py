"""Start real nats-server, Postgres and Valkey for tests, on free loopback ports in a temp dir.

The command lines come from `entrypoints.infra`, the same code `bulwark up` supervises.
Processes are stopped by pid, never by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from entrypoints import access, infra
from proto.permissions import ADMIN

BUS_USERS: tuple[str, ...] = tuple(user for user in access.deployment_users() if user != ADMIN)
"""The components a test system has NATS users for (besides the admin user tests connect as)."""


@dataclass
class RunningServer:
    spec: infra.ServerSpec
    process: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        if not self.alive():
            return
        sig = signal.SIGINT if self.spec.stop_signal == "INT" else signal.SIGTERM
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.alive():
            self.process.kill()
            self.process.wait(timeout=5)


def start_server(spec: infra.ServerSpec, log_dir: Path, timeout_s: float = 30.0) -> RunningServer:
    """Start one server and wait until it is ready."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{spec.name}.log"
    uid, gid, groups = infra.as_user(spec.user)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            spec.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            user=uid,
            group=gid,
            extra_groups=groups,
        )
    server = RunningServer(spec=spec, process=process, log_path=log_path)
    try:
        infra.wait_ready(spec, timeout_s, alive=server.alive)
    except infra.InfraError as exc:
        server.stop()
        tail = log_path.read_text(errors="replace")[-2000:]
        raise infra.InfraError(f"{exc}\n--- {spec.name} log ---\n{tail}") from exc
    return server


@dataclass
class EmbeddedInfra:
    """nats-server + Postgres + Valkey for one test session."""

    data_dir: Path
    host: str = "127.0.0.1"
    nats_port: int = 0
    nats_monitor_port: int = 0
    pg_port: int = 0
    redis_port: int = 0
    servers: dict[str, RunningServer] = field(default_factory=dict)
    users: tuple[str, ...] = BUS_USERS
    """Components with a NATS user, as under `bulwark up` (NATS and Valkey refuse anyone else)."""

    _credentials: access.BusCredentials | None = field(default=None, repr=False)

    @property
    def credentials(self) -> access.BusCredentials:
        """The users and passwords of this infrastructure (generated once into the data dir)."""
        if self._credentials is None:
            self._credentials = access.load_bus_credentials(self.data_dir, self.users)
        return self._credentials

    @property
    def nats_url(self) -> str:
        """The URL with the admin user's credentials (tests act as any part of the system)."""
        return self.credentials.nats_url(self.host, self.nats_port)

    @property
    def pg_dsn(self) -> str:
        """The DSN with the password of the data dir's Postgres (as every service gets it)."""
        return infra.postgres_dsn(self.pg_port, self.host, password=self.credentials.postgres_password)

    @property
    def redis_url(self) -> str:
        """The URL with the Valkey admin user's credentials."""
        return self.credentials.redis_url(self.host, self.redis_port)

    def env(self) -> dict[str, str]:
        """The `BULWARK_*` variables that point a service at this infrastructure (as the admin user)."""
        return {
            "BULWARK_NATS_URL": self.nats_url,
            "BULWARK_PG_DSN": self.pg_dsn,
            "BULWARK_REDIS_URL": self.redis_url,
        }

    def service_env(self, component: str) -> dict[str, str]:
        """`env()` for one component connecting as its own users, exactly as under `bulwark up`."""
        return {
            "BULWARK_NATS_URL": f"nats://{self.host}:{self.nats_port}",
            "BULWARK_PG_DSN": self.pg_dsn,
            "BULWARK_REDIS_URL": f"redis://{self.host}:{self.redis_port}/0",
            **self.credentials.service_env(component),
        }

    def spec(self, name: str) -> infra.ServerSpec:
        match name:
            case "nats":
                authorization = access.nats_authorization(self.credentials.nats)
                return infra.nats_spec(
                    self.data_dir, self.nats_port, self.nats_monitor_port, self.host, authorization=authorization
                )
            case "postgres":
                return infra.postgres_spec(
                    self.data_dir, self.pg_port, self.host, password=self.credentials.postgres_password
                )
            case "valkey":
                credentials = self.credentials
                acl_file = access.write_valkey_acl(self.data_dir, credentials)
                admin = (access.VALKEY_ADMIN, credentials.valkey[access.VALKEY_ADMIN])
                return infra.valkey_spec(self.data_dir, self.redis_port, self.host, acl_file=acl_file, auth=admin)
        raise ValueError(f"unknown server {name!r}")

    def start(self, names: tuple[str, ...] = ("nats", "postgres", "valkey")) -> EmbeddedInfra:
        for attr in ("nats_port", "nats_monitor_port", "pg_port", "redis_port"):
            if not getattr(self, attr):
                setattr(self, attr, infra.free_port(self.host))
        for name in names:
            self.start_one(name)
        if "postgres" in names:
            password = self.credentials.postgres_password
            asyncio.run(infra.ensure_database(self.pg_port, self.host, password=password, data_dir=self.data_dir))
        return self

    def start_one(self, name: str) -> RunningServer:
        server = start_server(self.spec(name), self.data_dir / "logs")
        self.servers[name] = server
        return server

    def stop_one(self, name: str) -> None:
        server = self.servers.pop(name, None)
        if server is not None:
            server.stop()

    def stop(self) -> None:
        for name in reversed(list(self.servers)):
            with contextlib.suppress(Exception):
                self.stop_one(name)

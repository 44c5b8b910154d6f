"""Who may reach the embedded servers: NATS users, the Valkey ACL, and the exposure check.

`bulwark up` (and the test harness, the same way) generates one NATS user per component with a
random password, a Valkey user for the gateway and an admin user of each, once per data dir, in
`bus-credentials.json` (mode 0600). The NATS configuration gets the users with their permissions
from `proto.permissions`; Valkey gets an ACL file (0600) in which the default user is off. A
connection without credentials is refused by both. Each service is given only its own user and
password (`BULWARK_NATS_USER`/`BULWARK_NATS_PASSWORD`, the gateway also
`BULWARK_VALKEY_USER`/`BULWARK_VALKEY_PASSWORD`). Remove the file (with the system stopped) to
rotate every password: the next `bulwark up` generates new ones (docs/security.md). The same file
holds the token of the venue simulators' control API (`/_sim/*`), given to the simulators only,
and the password of the embedded Postgres (`postgres.postgres`): the server is initialised with it
(scram-sha-256, required over TCP and the socket) and every service's `BULWARK_PG_DSN` carries it.
Postgres keeps the password it was initialised with: removing the file does not rotate it
(docs/security.md says how).
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from entrypoints.infra import write_private
from libs.settings import Settings
from proto import permissions
from proto.permissions import ADMIN
from proto.subjects import CORE_COMPONENTS, DEFAULT_VENUE, GATEWAY, position_component, strategy_component

BUS_CREDENTIALS_FILE = "bus-credentials.json"
VALKEY_ACL_FILE = "valkey-users.acl"
VALKEY_ADMIN = ADMIN
"""The Valkey user of the launcher and test harnesses (every command)."""
VALKEY_SERVICE_USERS: tuple[str, ...] = (GATEWAY,)
"""Services that use Valkey (the gateway's idempotency keys)."""
VALKEY_SERVICE_RULES = "~* &* +@all -@admin -@dangerous"
"""A service may read and write keys, never reconfigure, flush or shut down the server."""
SIM_CONTROL = "control"
"""The venue simulators' control token in the credentials file (`sim.control`)."""
SIM_CONTROL_TOKEN_VARIABLE = "BULWARK_SIM_CONTROL_TOKEN"
POSTGRES_USER = "postgres"
"""The embedded Postgres's role (`entrypoints.infra.postgres_dsn`); its password is `postgres.postgres`."""
GATEWAY_TOKEN_VARIABLES = ("BULWARK_ADMIN_TOKEN", "BULWARK_OPERATOR_TOKEN", "BULWARK_VIEWER_TOKEN")
MIN_TOKEN_LENGTH = 24
PLACEHOLDER_MARKERS = ("change-me", "changeme", "secret", "password", "token")


class AccessError(RuntimeError):
    """The credentials cannot be read or written; the message says what to do."""


@dataclass(frozen=True)
class BusCredentials:
    """Passwords of every NATS and Valkey user of one data dir."""

    nats: dict[str, str]
    valkey: dict[str, str]
    sim_control_token: str = field(default="", repr=False)
    """The token of the venue simulators' control API (`/_sim/*`, `BULWARK_SIM_CONTROL_TOKEN`)."""
    postgres_password: str = field(default="", repr=False)
    """The password of the embedded Postgres's `postgres` role."""

    def nats_url(self, host: str, port: int, user: str = ADMIN) -> str:
        """`nats://user:password@host:port` (for tools and tests that connect as `user`)."""
        return f"nats://{quote(user, safe='')}:{quote(self.nats[user], safe='')}@{host}:{port}"

    def redis_url(self, host: str, port: int, user: str = VALKEY_ADMIN) -> str:
        """`redis://user:password@host:port/0`."""
        return f"redis://{quote(user, safe='')}:{quote(self.valkey[user], safe='')}@{host}:{port}/0"

    def service_env(self, component: str) -> dict[str, str]:
        """The credentials one process is given: its own NATS user, and its Valkey user if it has one."""
        env = {"BULWARK_NATS_USER": component, "BULWARK_NATS_PASSWORD": self.nats[component]}
        if component in self.valkey:
            env.update({"BULWARK_VALKEY_USER": component, "BULWARK_VALKEY_PASSWORD": self.valkey[component]})
        return env

    def sim_env(self) -> dict[str, str]:
        """What a venue simulator is given: the token its control API requires."""
        return {SIM_CONTROL_TOKEN_VARIABLE: self.sim_control_token}

    def sim_url(self, url: str) -> str:
        """`url` (`http://host:port`) with the control token as Basic credentials (httpx and aiohttp send them)."""
        scheme, _, rest = url.partition("://")
        return f"{scheme}://sim:{quote(self.sim_control_token, safe='')}@{rest}"


def load_bus_credentials(data_dir: Path, components: Iterable[str]) -> BusCredentials:
    """The users of `data_dir`, generating a password for every user that has none yet.

    Passwords already stored are kept, so a second `bulwark up` (or a restarted server) accepts the
    services it accepted before. The file is written with mode 0600.

    Raises:
        AccessError: the file exists but cannot be read.
    """
    path = data_dir / BUS_CREDENTIALS_FILE
    kinds = ("nats", "valkey", "sim", "postgres")
    stored: dict[str, dict[str, str]] = {kind: {} for kind in kinds}
    if path.exists():
        try:
            loaded = json.loads(path.read_text())
            stored = {kind: dict(loaded.get(kind) or {}) for kind in kinds}
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            raise AccessError(f"{path} is unreadable ({exc}); remove it to generate new bus passwords") from exc
    wanted = {
        "nats": [ADMIN, *components],
        "valkey": [VALKEY_ADMIN, *VALKEY_SERVICE_USERS],
        "sim": [SIM_CONTROL],
        "postgres": [POSTGRES_USER],
    }
    changed = False
    for kind, users in wanted.items():
        for user in users:
            if not stored[kind].get(user):
                stored[kind][user] = secrets.token_hex(24)
                changed = True
    if changed or not path.exists():
        write_private(path, json.dumps(stored, indent=2, sort_keys=True))
    return BusCredentials(
        nats=stored["nats"],
        valkey=stored["valkey"],
        sim_control_token=stored["sim"][SIM_CONTROL],
        postgres_password=stored["postgres"][POSTGRES_USER],
    )


def _quoted(value: str) -> str:
    return json.dumps(value)


def _list(items: Iterable[str]) -> str:
    return "[" + ", ".join(_quoted(item) for item in items) + "]"


def nats_authorization(passwords: Mapping[str, str], main_venue: str = DEFAULT_VENUE) -> str:
    """The `authorization { users = [...] }` block of nats-server for these users.

    Args:
        passwords: user -> password, or -> `$VARIABLE` for a configuration that takes the
            password from the server's environment (k8s, compose).
        main_venue: `BULWARK_VENUE` (the `position` user's venue).
    """
    lines = ["authorization {", "  users = ["]
    for user in sorted(passwords):
        grant = permissions.grant(user, main_venue)
        password = passwords[user]
        shown = password if password.startswith("$") else _quoted(password)
        lines += [
            "    {",
            f"      user: {_quoted(user)}",
            f"      password: {shown}",
            "      permissions: {",
            f"        publish: {{ allow: {_list(grant.publish)}, deny: {_list(grant.deny_publish)} }}",
            f"        subscribe: {{ allow: {_list(grant.subscribe)} }}",
            # Answers to requests this user received (the reply subject of a `svc.*` query).
            "        allow_responses: true",
            "      }",
            "    }",
        ]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def valkey_acl(passwords: Mapping[str, str]) -> str:
    """The Valkey ACL file: the default user off, the admin with every right, services without admin commands."""
    lines = ["user default off"]
    for user in sorted(passwords):
        rules = "~* &* +@all" if user == VALKEY_ADMIN else VALKEY_SERVICE_RULES
        lines.append(f"user {user} on >{passwords[user]} {rules}")
    return "\n".join(lines) + "\n"


def write_valkey_acl(data_dir: Path, credentials: BusCredentials) -> Path:
    """Write the Valkey ACL file (0600) into `data_dir`; returns its path."""
    path = data_dir / VALKEY_ACL_FILE
    write_private(path, valkey_acl(credentials.valkey))
    return path


def is_loopback(host: str) -> bool:
    """Whether `host` binds the loopback interface only (`127.0.0.1`, `::1`, `localhost`)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_problem(host: str, environ: Mapping[str, str]) -> str | None:
    """Why the system must not start on `host` with these settings (None: it may).

    Off loopback the gateway is reachable by others: its tokens must be given explicitly
    (`BULWARK_ADMIN_TOKEN`, `BULWARK_OPERATOR_TOKEN`, `BULWARK_VIEWER_TOKEN`), long, distinct and
    no placeholder, not left to tokens generated into a data dir that others may have seen.
    """
    if is_loopback(host):
        return None
    tokens = {name: environ.get(name, "") for name in GATEWAY_TOKEN_VARIABLES}
    weak = [
        name
        for name, token in tokens.items()
        if len(token) < MIN_TOKEN_LENGTH or any(marker in token.lower() for marker in PLACEHOLDER_MARKERS)
    ]
    if weak:
        return (
            f"--host {host} makes the gateway, NATS and Valkey reachable from other machines; set "
            f"{', '.join(weak)} to your own random tokens of at least {MIN_TOKEN_LENGTH} characters "
            "(e.g. `openssl rand -hex 24`) first"
        )
    if len(set(tokens.values())) != len(tokens):
        return f"--host {host}: {', '.join(GATEWAY_TOKEN_VARIABLES)} must be three different tokens"
    return None


def exposure_warning(host: str) -> str | None:
    """What to tell the operator when the servers bind beyond loopback (None on loopback)."""
    if is_loopback(host):
        return None
    return (
        f"warning: --host {host} binds the gateway, NATS, Valkey and the venue simulator beyond loopback; "
        "NATS and Valkey require the generated passwords, but put a firewall and TLS in front of them"
    )


def tool_bus_user(data_dir: Path, settings: Settings) -> tuple[str, str]:
    """(user, password) of an operator tool (`bulwark projections`): `BULWARK_NATS_USER` when set,
    else the admin user of the `bulwark up` in `data_dir`, else none."""
    if settings.nats_user:
        return settings.nats_user, settings.nats_password
    path = data_dir / BUS_CREDENTIALS_FILE
    if path.exists():
        return ADMIN, load_bus_credentials(data_dir, ()).nats[ADMIN]
    return "", ""


def sim_control_url(data_dir: Path, url: str, environ: Mapping[str, str]) -> str:
    """A simulator's `url` with the control token for an operator tool (chaos experiments):
    `BULWARK_SIM_CONTROL_TOKEN` when set (compose, k8s), else the token of `bulwark up` in `data_dir`,
    else `url` as it is (a simulator started by hand, whose control API is open)."""
    token = environ.get(SIM_CONTROL_TOKEN_VARIABLE, "")
    if not token and (data_dir / BUS_CREDENTIALS_FILE).exists():
        token = load_bus_credentials(data_dir, ()).sim_control_token
    return BusCredentials({}, {}, sim_control_token=token).sim_url(url) if token else url


def tool_pg_dsn(data_dir: Path, dsn: str, running_dsn: str | None) -> str:
    """`dsn` for an operator tool: the running system's DSN (`endpoints.json`, shown without its
    password) with the password of `data_dir`'s Postgres; any other DSN as given."""
    path = data_dir / BUS_CREDENTIALS_FILE
    if dsn != running_dsn or not path.exists():
        return dsn
    password = load_bus_credentials(data_dir, ()).postgres_password
    scheme, _, rest = dsn.partition("://")
    user, at, host = rest.partition("@")
    if not at or ":" in user:
        return dsn
    return f"{scheme}://{user}:{quote(password, safe='')}@{host}"


# --------------------------------------------------------------------------- compose and Kubernetes

DEPLOYMENT_BACKUP_VENUE = f"{DEFAULT_VENUE}-backup"
"""The backup venue the deployment files name (k8s/backup-venue, compose profile backup-venue)."""
DEPLOYMENT_STRATEGIES = ("cascade-fade", "trend")
"""The strategy instances the deployment files run."""


def deployment_users() -> tuple[str, ...]:
    """The NATS users of docker-compose.yml and k8s/: the admin, every component they run."""
    return (
        ADMIN,
        *CORE_COMPONENTS,
        position_component(DEPLOYMENT_BACKUP_VENUE, DEFAULT_VENUE),
        *(strategy_component(name) for name in DEPLOYMENT_STRATEGIES),
    )


def password_variable(user: str, server: str = "NATS") -> str:
    """The environment variable (and Secret key) holding `user`'s password, e.g. `NATS_PASSWORD_MARKET_DATA`."""
    return f"{server}_PASSWORD_" + re.sub(r"[^A-Z0-9]", "_", user.upper())


def deployment_authorization() -> str:
    """The authorization block of the deployments' nats.conf: each password from the server's environment."""
    return nats_authorization({user: f"${password_variable(user)}" for user in deployment_users()})


def deployment_password_variables() -> tuple[str, ...]:
    """Every password variable a deployment sets: one per NATS user, one per Valkey user."""
    valkey = (password_variable(user, "VALKEY") for user in (VALKEY_ADMIN, *VALKEY_SERVICE_USERS))
    return (*(password_variable(user) for user in deployment_users()), *valkey)


COMPOSE_POSTGRES_PASSWORD = "POSTGRES_PASSWORD"
"""docker compose's Postgres password (the server's and every service's `BULWARK_PG_DSN`)."""


def compose_secret_variables() -> tuple[str, ...]:
    """Every secret docker compose's `.env` must hold: the bus passwords, Postgres's, the simulators' token."""
    return (*deployment_password_variables(), COMPOSE_POSTGRES_PASSWORD, SIM_CONTROL_TOKEN_VARIABLE)


def main(argv: list[str]) -> int:
    """`python -m entrypoints.access env`: fresh random secrets for docker compose's `.env`;
    `python -m entrypoints.access nats-authorization`: the users block of the deployments' nats.conf."""
    match argv:
        case ["env"]:
            sys.stdout.write("".join(f"{name}={secrets.token_hex(24)}\n" for name in compose_secret_variables()))
            return 0
        case ["nats-authorization"]:
            sys.stdout.write(deployment_authorization())
            return 0
    sys.stderr.write("usage: python -m entrypoints.access env | nats-authorization\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

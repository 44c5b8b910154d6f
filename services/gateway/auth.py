"""Who may call the gateway: roles, the bearer-token table and the role check (pure rules).

Tokens come from the settings (one per role) and `BULWARK_API_TOKENS` (named tokens, so every
action records who took it); the FastAPI side of the check is in `dependencies`.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from enum import IntEnum

from libs.settings import Settings
from services.gateway.errors import ApiError


class Role(IntEnum):
    """Roles by rank: a higher role can do everything a lower one can."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Principal:
    """Who is calling: a name recorded on every action, and the role that limits what they may do."""

    name: str
    role: Role


TOKEN_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def parse_api_tokens(spec: str) -> dict[str, Principal]:
    """Parse `BULWARK_API_TOKENS`: `name:role:token` entries, comma separated.

    The token is everything after the second colon, so it may itself contain colons.

    Raises:
        ValueError: an entry is malformed, names an unknown role, or repeats a token.
    """
    tokens: dict[str, Principal] = {}
    for index, raw in enumerate(item.strip() for item in spec.split(",")):
        if not raw:
            continue
        name, _, rest = raw.partition(":")
        role_name, _, token = rest.partition(":")
        if not TOKEN_NAME_PATTERN.match(name) or not token:
            raise ValueError(f"BULWARK_API_TOKENS entry {index + 1}: expected name:role:token")
        try:
            role = Role[role_name.strip().upper()]
        except KeyError as exc:
            raise ValueError(f"BULWARK_API_TOKENS entry {index + 1}: unknown role {role_name!r}") from exc
        if token in tokens:
            raise ValueError(f"BULWARK_API_TOKENS entry {index + 1}: token used twice")
        tokens[token] = Principal(name, role)
    return tokens


class TokenTable:
    """Every bearer token the gateway accepts: the role tokens (named after their role) and the
    named tokens of `BULWARK_API_TOKENS`. Built once; comparisons are constant-time."""

    def __init__(self, settings: Settings) -> None:
        self._entries: list[tuple[bytes, Principal]] = []
        for configured, role in (
            (settings.admin_token, Role.ADMIN),
            (settings.operator_token, Role.OPERATOR),
            (settings.viewer_token, Role.VIEWER),
        ):
            if configured:
                self._entries.append((configured.encode(), Principal(role.label, role)))
        for token, principal in parse_api_tokens(settings.api_tokens).items():
            self._entries.append((token.encode(), principal))

    def lookup(self, token: str) -> Principal | None:
        """The principal a bearer token identifies, or None (empty configured tokens never match)."""
        candidate = token.encode()
        found: Principal | None = None
        for configured, principal in self._entries:
            # Check every entry (no early exit) so the answer time does not tell which one matched.
            if hmac.compare_digest(configured, candidate) and found is None:
                found = principal
        return found


def role_for_token(token: str, settings: Settings) -> Role | None:
    """The role a bearer token grants, or None."""
    principal = TokenTable(settings).lookup(token)
    return principal.role if principal is not None else None


def authorize(authorization: str | None, required: Role, tokens: TokenTable | Settings) -> Principal:
    """Check an `Authorization` header against the required role.

    Raises:
        ApiError: 401 when the token is missing or unknown, 403 when its role is too low.
    """
    table = tokens if isinstance(tokens, TokenTable) else TokenTable(tokens)
    if not authorization:
        raise ApiError(401, "unauthorized", "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401, "unauthorized", "expected 'Authorization: Bearer <token>'", headers={"WWW-Authenticate": "Bearer"}
        )
    principal = table.lookup(token.strip())
    if principal is None:
        raise ApiError(401, "unauthorized", "invalid token", headers={"WWW-Authenticate": "Bearer"})
    if principal.role < required:
        raise ApiError(
            403,
            "forbidden",
            f"requires role {required.label}",
            {"role": principal.role.label, "required": required.label},
        )
    return principal

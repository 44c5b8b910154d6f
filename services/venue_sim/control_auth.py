"""Who may use the simulator's control API (`/_sim/*`): the holder of the control token.

`bulwark up` generates the token into the data dir (`entrypoints.access`) and gives it to the
simulator as `BULWARK_SIM_CONTROL_TOKEN`. A client presents it as `Authorization: Bearer TOKEN`,
as `X-Bulwark-Sim-Token: TOKEN`, or as the password of HTTP Basic credentials (so a URL
`http://sim:TOKEN@host:port` works unchanged with httpx and aiohttp). Without a token configured
(a simulator started by hand for tests) the control API stays open and the simulator warns at start.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping

TOKEN_HEADER = "X-Bulwark-Sim-Token"
CONTROL_TOKEN_VARIABLE = "BULWARK_SIM_CONTROL_TOKEN"
MAX_TOKEN_LENGTH = 512
"""Longer presented tokens are refused unread (the generated one is 48 characters)."""


def presented_token(headers: Mapping[str, str]) -> str | None:
    """The token a request presents (None: none, or a malformed Authorization header)."""
    direct = headers.get(TOKEN_HEADER)
    if direct:
        return direct
    authorization = headers.get("Authorization", "")
    scheme, _, value = authorization.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return value
    if scheme.lower() == "basic" and value and len(value) <= 4 * MAX_TOKEN_LENGTH:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, colon, password = decoded.partition(":")
        return password if colon and password else None
    return None


def allowed(expected: str, headers: Mapping[str, str]) -> bool:
    """Whether a request with these headers may use the control API (always, without a token)."""
    if not expected:
        return True
    token = presented_token(headers)
    if token is None or len(token) > MAX_TOKEN_LENGTH:
        return False
    return hmac.compare_digest(token.encode("utf-8"), expected.encode("utf-8"))

"""HMAC-SHA256 request signing of Binance signed endpoints (`SIGNED` security type).

Binance signs the *total params* string: the query string concatenated with the form-encoded
request body, exactly as sent (no re-encoding), without the `signature` parameter itself.
"""

from __future__ import annotations

import hashlib
import hmac


def sign(query: str, secret: str) -> str:
    """Signature of a total-params string.

    Args:
        query: the query string and/or form body exactly as sent, without `signature`.
        secret: the API secret.

    Returns:
        The lowercase hex HMAC-SHA256 digest Binance expects in `signature`.
    """
    return hmac.new(secret.encode(), query.encode(), hashlib.sha256).hexdigest()


def verify(query: str, signature: str, secret: str) -> bool:
    """True when `signature` is the signature of `query` under `secret` (constant time)."""
    return hmac.compare_digest(sign(query, secret), signature.lower())


def split_signature(params: str) -> tuple[str, str | None]:
    """Remove the `signature=` parameter from a raw params string.

    Returns:
        (the params string that was signed, the signature or None when absent).
    """
    kept: list[str] = []
    signature: str | None = None
    for part in params.split("&"):
        if part.startswith("signature="):
            signature = part[len("signature=") :]
        elif part:
            kept.append(part)
    return "&".join(kept), signature


def total_params(query_string: str, body: str) -> str:
    """Binance's total params: query string concatenated with the body (no separator)."""
    return query_string + body

"""Valkey/Redis client for idempotency keys (SPEC §6: `SET NX` with a 24 h TTL)."""

from __future__ import annotations

import redis.asyncio as redis

IDEMPOTENCY_TTL_S = 24 * 3600


def create_client(url: str, *, username: str = "", password: str = "") -> redis.Redis:
    """A client with short timeouts, so a dead cache is noticed quickly and the fallback used.

    Args:
        url: `redis://host:port/db` (it may carry `user:password@` itself).
        username: the Valkey ACL user (`BULWARK_VALKEY_USER`); empty: the URL's, or the default user.
        password: its password (`BULWARK_VALKEY_PASSWORD`).
    """
    credentials = {"username": username or None, "password": password or None} if username or password else {}
    return redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0, health_check_interval=5, **credentials)

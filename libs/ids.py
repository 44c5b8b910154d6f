"""Deterministic ids: the venue client order id derives from the idempotency key (SPEC §6), so a
resend after a crash can never create a second order."""

from __future__ import annotations

import hashlib

CLIENT_ORDER_ID_PREFIX = "bw"


def client_order_id_for(idempotency_key: str) -> str:
    """Venue client order id for an idempotency key: `bw` + 30 hex chars of its SHA-256.

    Fits Binance's `newClientOrderId` pattern `^[\\.A-Z\\:/a-z0-9_-]{1,36}$`.
    """
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()
    return f"{CLIENT_ORDER_ID_PREFIX}{digest[:30]}"

"""The bodies of risk's request/reply endpoints (`svc.risk.*`): the requests it decodes and its error reply."""

from __future__ import annotations

import msgspec


class OperatorRequest(msgspec.Struct, kw_only=True):
    """`svc.risk.halt` / `resume` / `reduce`: who asks, and why (a reason is required)."""

    operator: str = "unknown"
    reason: str = ""


class BreakerResetRequest(msgspec.Struct, kw_only=True):
    """`svc.risk.breaker_reset`: which breaker, who resets it, and why (all required)."""

    breaker: str = ""
    operator: str = ""
    reason: str = ""


operator_request_decoder = msgspec.json.Decoder(OperatorRequest)
reset_request_decoder = msgspec.json.Decoder(BreakerResetRequest)


def error_reply(code: str, message: str) -> bytes:
    """The error body every endpoint answers with: `{"error": {"code", "message"}}`."""
    return msgspec.json.encode({"error": {"code": code, "message": message}})

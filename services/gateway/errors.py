"""The gateway's one error shape: `ApiError` and the `{"error": {"code", "message", "details"}}` envelope.

Every non-2xx answer uses the envelope; a dependency that is down is a 503 with `Retry-After`, one
whose reply cannot be read a 502.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answered as `{"error": {"code", "message", "details"}}` with an HTTP status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details if details is not None else {}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON error envelope."""
        return error_body(self.code, self.message, self.details)


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The error envelope every non-2xx answer uses."""
    return {"error": {"code": code, "message": message, "details": details if details is not None else {}}}


RETRY_AFTER_S = 5


def unavailable(dependency: str, message: str, *, reason: str | None = None) -> ApiError:
    """503 for a dependency that is down (with `Retry-After`); `reason` is the underlying error."""
    details: dict[str, Any] = {"dependency": dependency}
    if reason is not None:
        details["reason"] = reason
    return ApiError(
        503,
        "dependency_unavailable",
        message,
        details,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def bad_reply(dependency: str, reason: str) -> ApiError:
    """502 for a dependency that answered, but with a reply that is neither its body nor an error
    (a peer on another version, a bug); `reason` says what did not decode."""
    details = {"dependency": dependency, "reason": reason}
    return ApiError(502, "bad_gateway", f"{dependency} answered with an unreadable reply", details)

"""Error types shared by services. Classification of external errors into SPEC's classes lives
with each adapter; these are the in-process signals handlers raise."""

from __future__ import annotations

from proto.enums import ErrorClass


class BulwarkError(Exception):
    """Base of errors that carry a SPEC error class."""

    error_class: ErrorClass = ErrorClass.PERMANENT

    def __init__(self, message: str, *, error_class: ErrorClass | None = None) -> None:
        super().__init__(message)
        if error_class is not None:
            self.error_class = error_class


class TransientError(BulwarkError):
    """Try again shortly (a dependency hiccup); a consumer naks with a delay."""

    error_class = ErrorClass.TRANSIENT


class PermanentError(BulwarkError):
    """Will never succeed as is; a consumer dead-letters the message at once."""

    error_class = ErrorClass.PERMANENT


class DependencyUnavailable(TransientError):
    """A store or service the operation needs is down (maps to HTTP 503)."""

    def __init__(self, dependency: str, message: str = "") -> None:
        super().__init__(message or f"{dependency} unavailable")
        self.dependency = dependency

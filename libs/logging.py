"""Structured JSON logs in the shape of SPEC §9, one object per line on stdout.

    {"timestamp": ns, "level", "component", "event" | "error_type", "details", "action_taken", "trace_id"}

Secrets never reach a log line: values of keys that look like credentials are masked, and so is
the password of any URL (`postgresql://user:***@host/db`) in a value.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from typing import Any, TextIO

import msgspec

_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
_SECRET_MARKERS = ("secret", "password", "token", "api_key", "apikey", "signature", "authorization")
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*:)[^/@\s]+@")
"""The password part of `scheme://user:password@host` (a DSN, a URL with credentials)."""
_encoder = msgspec.json.Encoder(decimal_format="string")
_lock = threading.Lock()
_state: dict[str, Any] = {"level": 20, "stream": None}


def configure(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Set the minimum level and the output stream for every logger in this process."""
    _state["level"] = _LEVELS.get(level.upper(), 20)
    _state["stream"] = stream


def _mask(details: dict[str, Any]) -> dict[str, Any]:
    masked: dict[str, Any] = {}
    for key, value in details.items():
        lowered = key.lower()
        if any(marker in lowered for marker in _SECRET_MARKERS) and value not in (None, ""):
            masked[key] = "***"
        elif isinstance(value, dict):
            masked[key] = _mask(value)
        elif isinstance(value, str) and "://" in value:
            masked[key] = _URL_PASSWORD.sub(r"\g<head>***@", value)
        else:
            masked[key] = value
    return masked


def _current_trace_id() -> str | None:
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover - dependency is mandatory, but logging must never fail
        return None
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


class Logger:
    """A component's logger. Methods take an event name and keyword details."""

    def __init__(self, component: str) -> None:
        self.component = component

    def _emit(
        self,
        level: str,
        event: str | None,
        details: dict[str, Any],
        *,
        error_type: str | None = None,
        action_taken: str | None = None,
    ) -> None:
        if _LEVELS[level] < _state["level"]:
            return
        record: dict[str, Any] = {"timestamp": time.time_ns(), "level": level, "component": self.component}
        if error_type is not None:
            record["error_type"] = error_type
        if event is not None:
            record["event"] = event
        record["details"] = _mask(details)
        if action_taken is not None:
            record["action_taken"] = action_taken
        record["trace_id"] = _current_trace_id()
        try:
            line = _encoder.encode(record)
        except (TypeError, msgspec.EncodeError):
            record["details"] = {key: repr(value) for key, value in record["details"].items()}
            line = _encoder.encode(record)
        stream = _state["stream"] or sys.stdout
        with _lock:
            try:
                stream.write(line.decode() + "\n")
                stream.flush()
            except (OSError, ValueError):
                # ENOSPC or a closed stream must never take a service down (FM-C4).
                pass

    def debug(self, event: str, *, action_taken: str | None = None, **details: Any) -> None:
        self._emit("DEBUG", event, details, action_taken=action_taken)

    def info(self, event: str, *, action_taken: str | None = None, **details: Any) -> None:
        self._emit("INFO", event, details, action_taken=action_taken)

    def warning(self, event: str, *, action_taken: str | None = None, **details: Any) -> None:
        self._emit("WARNING", event, details, action_taken=action_taken)

    def error(
        self, event: str, *, error_type: str | None = None, action_taken: str | None = None, **details: Any
    ) -> None:
        self._emit("ERROR", event, details, error_type=error_type, action_taken=action_taken)

    def exception(self, event: str, exc: BaseException, *, action_taken: str | None = None, **details: Any) -> None:
        """Log a caught exception with its type and message (and traceback in details)."""
        import traceback

        details = {**details, "message": str(exc)[:2000]}
        details["traceback"] = "".join(traceback.format_exception(exc))[-4000:]
        self._emit("ERROR", event, details, error_type=type(exc).__name__, action_taken=action_taken)


def get_logger(component: str) -> Logger:
    return Logger(component)

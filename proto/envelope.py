"""The shared envelope every message carries, and id/time helpers for building one."""

from __future__ import annotations

import time
import uuid

import msgspec

SCHEMA_VERSION = 1


def new_message_id() -> str:
    """A fresh, globally unique message id (UUID4 hex)."""
    return uuid.uuid4().hex


def now_ns() -> int:
    """Wall-clock time as integer nanoseconds since the epoch (UTC)."""
    return time.time_ns()


class Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", omit_defaults=False):
    """Base of every message on the bus: the envelope.

    Attributes:
        message_id: Unique id; also the JetStream de-duplication id unless a command overrides it.
        correlation_id: Id of the flow this message belongs to (e.g. the signal or operator request).
        causation_id: Id of the message that directly caused this one.
        ts_event_ns: When the thing happened (venue time for market data), integer ns UTC.
        ts_init_ns: When this message object was created, integer ns UTC.
        schema_version: Contract version of the message.
    """

    message_id: str = msgspec.field(default_factory=new_message_id)
    correlation_id: str | None = None
    causation_id: str | None = None
    ts_event_ns: int = msgspec.field(default_factory=now_ns)
    ts_init_ns: int = msgspec.field(default_factory=now_ns)
    schema_version: int = SCHEMA_VERSION

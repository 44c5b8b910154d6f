"""I/O of the watchdog: the audit log and dead-letter table in Postgres, machine resources,
`proto.kv` values read from the KV bucket, the heartbeat subscription, and the webhook alert sinks
(Slack, PagerDuty, Telegram, a generic signed JSON webhook)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import asyncpg
import msgspec
import psutil
from nats.aio.msg import Msg

from libs.bus import Bus, Delivery
from libs.clock import Clock
from libs.errors import DependencyUnavailable, PermanentError
from libs.heartbeat import HeartbeatTracker
from libs.logging import Logger
from libs.settings import Settings
from libs.store_errors import WriteFailure, classify_write_error, describe
from proto import subjects
from proto.codec import decode_as, encode
from proto.envelope import Message
from proto.kv import BreakerValue, PreflightValue, StrategyStateValue, decode_value
from proto.messages import DeadLettered, Heartbeat, PositionChanged
from services.watchdog.alert_lifecycle import PositionSeen, Wanted
from services.watchdog.alerts import AlertNotice, severity_rank
from services.watchdog.notifications import (
    SIGNATURE_HEADER,
    pagerduty_payload,
    slack_payload,
    telegram_payload,
    webhook_payload,
    webhook_signature,
)
from services.watchdog.observations import ResourceObservation

V = TypeVar("V", bound=msgspec.Struct)

PG_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncio.TimeoutError,
)

_INSERT_AUDIT = (
    "INSERT INTO audit_events (stream, stream_seq, subject, type, message_id, ts_event_ns, payload) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb) ON CONFLICT (stream, stream_seq) DO NOTHING"
)
_INSERT_DEAD_LETTER = (
    "INSERT INTO dead_letters (stream_seq, consumer, subject, reason, deliveries, payload, original_message_id, "
    "status, created_ns, updated_ns) VALUES ($1, $2, $3, $4, $5, $6, $7, 'PENDING', $8, $9) "
    "ON CONFLICT (stream_seq) DO NOTHING"
)


def _require(pool: asyncpg.Pool | None) -> asyncpg.Pool:
    if pool is None:
        raise DependencyUnavailable("postgres")
    return pool


async def write_audit_event(pool: asyncpg.Pool | None, stream: str, message: Message, delivery: Delivery) -> None:
    """Insert one persisted message into `audit_events` (idempotent on stream + sequence).

    Raises:
        PermanentError: the row can never be written (bad data): the message is dead-lettered.
        Exception: Postgres is unreachable; the consumer waits and tries the same message again.
    """
    try:
        await _require(pool).execute(
            _INSERT_AUDIT,
            stream,
            delivery.stream_sequence,
            delivery.subject,
            type(message).__name__,
            message.message_id,
            message.ts_event_ns,
            encode(message).decode(),
        )
    except Exception as exc:
        _raise_if_refused(exc, "audit row")
        raise


async def write_dead_letter(pool: asyncpg.Pool | None, letter: DeadLettered, delivery: Delivery) -> None:
    """Insert a dead letter into `dead_letters` (idempotent on the DLQ stream sequence).

    The last resort keeps what it can: a NUL (which a text column refuses) is stored as U+FFFD, so
    a letter about a message with a NUL in it is recorded rather than refused.
    """
    try:
        await _require(pool).execute(
            _INSERT_DEAD_LETTER,
            delivery.stream_sequence,
            _storable(letter.consumer),
            _storable(letter.subject),
            _storable(letter.reason),
            letter.deliveries,
            _storable(letter.payload),
            _storable(letter.original_message_id),
            letter.ts_event_ns,
            time.time_ns(),
        )
    except Exception as exc:
        _raise_if_refused(exc, "dead letter row")
        raise


def _storable(text: str | None) -> str | None:
    return None if text is None else text.replace("\x00", "\ufffd")


def _raise_if_refused(exc: Exception, row: str) -> None:
    """A row Postgres refuses becomes a `PermanentError` (dead-lettered at once); the caller raises
    anything else as it is (an outage: the consumer waits; unclassified: retried, bounded)."""
    if classify_write_error(exc) is WriteFailure.BAD_ROW:
        raise PermanentError(f"{row} rejected: {describe(exc)}") from exc


DEAD_LETTER_RETENTION_NS = 30 * 24 * 3600 * 1_000_000_000


async def dead_letters_waiting(pool: asyncpg.Pool | None) -> dict[str, int]:
    """Dead letters not retried yet, by consumer (the DLQ depth an operator works down)."""
    rows = await _require(pool).fetch(
        "SELECT consumer, count(*) AS waiting FROM dead_letters WHERE status <> 'RETRIED' GROUP BY consumer"
    )
    return {str(row["consumer"]): int(row["waiting"]) for row in rows}


async def purge_old_dead_letters(
    pool: asyncpg.Pool | None, now_ns: int, retention_ns: int = DEAD_LETTER_RETENTION_NS
) -> int:
    """Delete dead letters older than 30 days (SPEC §6); returns how many were removed."""
    result = await _require(pool).execute("DELETE FROM dead_letters WHERE created_ns < $1", now_ns - retention_ns)
    return int(result.split()[-1]) if result else 0


# --------------------------------------------------------------------------- KV bucket and heartbeats


async def read_kv_value(bus: Bus, log: Logger, key: str, kind: type[V]) -> tuple[V | None, int | None]:
    """(the value as `kind`, revision) of a KV entry (`proto.kv`); (None, None) when never set,
    (None, revision) when it does not decode (logged: the caller fails closed)."""
    entry = await bus.kv_get(key)
    if entry is None:
        return None, None
    raw, revision = entry
    value = decode_value(kind, raw)
    if value is None:
        log.warning("kv_value_unreadable", key=key, kind=kind.__name__)
    return value, revision


async def subscribe_heartbeats(bus: Bus, log: Logger, tracker: HeartbeatTracker, clock: Clock) -> None:
    """Record every heartbeat on `hb.>` (core NATS) in `tracker`, stamped with its arrival time."""

    async def on_heartbeat(msg: Msg) -> None:
        try:
            heartbeat = decode_as(msg.data, Heartbeat)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("heartbeat_invalid", subject=msg.subject, error=str(exc)[:200])
            return
        tracker.record(heartbeat, clock())

    await bus.subscribe_core(subjects.HEARTBEAT_ALL, on_heartbeat)


async def read_alert_conditions(bus: Bus, log: Logger, wanted: Wanted) -> dict[str, Any]:
    """The state of what the open watched alerts are about (`alert_lifecycle.Conditions` fields):
    breakers, strategies and preflights from KV, positions from the ORDERS stream. What cannot be
    read is left out (its alert stays open)."""
    breakers = {}
    for breaker in sorted(wanted.breakers):
        record, _ = await read_kv_value(bus, log, subjects.key_breaker(breaker), BreakerValue)
        if record is not None:
            breakers[breaker] = record.state
    strategies = {}
    for name in sorted(wanted.strategies):
        state, _ = await read_kv_value(bus, log, subjects.key_strategy(name), StrategyStateValue)
        if state is not None:
            strategies[name] = state.state
    api_key_ok_ns = {}
    for venue in sorted(wanted.venues):
        preflight, _ = await read_kv_value(bus, log, subjects.key_preflight(venue), PreflightValue)
        if preflight is not None and any(check.name == "api_key" and check.ok for check in preflight.checks):
            api_key_ok_ns[venue] = preflight.ts_ns
    positions = {}
    for venue, symbol in sorted(wanted.positions):
        subject = subjects.evt_position(venue, symbol)
        last = await bus.last_message(subjects.STREAM_ORDERS.name, subject, PositionChanged)
        if last is not None:
            positions[venue, symbol] = PositionSeen(flat=last.quantity == 0, ts_ns=last.ts_event_ns)
    return {"breakers": breakers, "strategies": strategies, "api_key_ok_ns": api_key_ok_ns, "positions": positions}


# --------------------------------------------------------------------------- resources (§5 health checks, FM-C4)


def measure_resources(disk_path: str) -> ResourceObservation:
    """Disk use of the file system holding `disk_path`, machine memory and CPU, in percent.

    CPU is the average since the previous call (the first call says 0). A path that cannot be
    measured leaves the disk unmeasured rather than failing the whole health check.
    """
    try:
        disk: float | None = psutil.disk_usage(disk_path).percent
    except OSError:
        disk = None
    return ResourceObservation(
        disk_used_pct=disk,
        memory_used_pct=psutil.virtual_memory().percent,
        cpu_pct=psutil.cpu_percent(interval=None),
    )


# --------------------------------------------------------------------------- alert sinks (§9)


@dataclass(frozen=True)
class WebhookSink:
    """One webhook alerts are POSTed to as JSON.

    Attributes:
        name: what the logs call it (never the URL: Slack's and Telegram's carry a secret).
        url: where the POST goes.
        build: the payload of one notice (Slack, PagerDuty, Telegram, generic).
        min_severity: the least severe alert it wants.
        sign: extra headers computed from the exact body (the generic webhook's HMAC signature).
        remember: called with the notice and the response body of an accepted POST (Telegram
            threads a resolution under the message that raised it).
    """

    name: str
    url: str
    build: Callable[[AlertNotice], dict[str, Any]]
    min_severity: str = "P3"
    sign: Callable[[bytes], dict[str, str]] | None = None
    remember: Callable[[AlertNotice, bytes], None] | None = None

    def wants(self, notice: AlertNotice) -> bool:
        """True when the alert is at least as severe as this sink's minimum."""
        return severity_rank(notice.severity) <= severity_rank(self.min_severity)


TELEGRAM_THREADS_MAX = 1_000


class TelegramThreads:
    """Telegram message ids of the open alerts, so a resolution replies to the message that raised
    it (bounded: the oldest is forgotten first; a forgotten one resolves as a plain message)."""

    def __init__(self, chat_id: str, limit: int = TELEGRAM_THREADS_MAX) -> None:
        self.chat_id = chat_id
        self.limit = limit
        self.message_ids: dict[str, int] = {}

    def build(self, notice: AlertNotice) -> dict[str, Any]:
        reply_to = self.message_ids.get(notice.key) if notice.resolved else None
        return telegram_payload(notice, self.chat_id, reply_to)

    def remember(self, notice: AlertNotice, body: bytes) -> None:
        if notice.resolved:
            self.message_ids.pop(notice.key, None)
            return
        try:
            message_id = json.loads(body)["result"]["message_id"]
        except (ValueError, KeyError, TypeError):
            return  # no id to thread under: the resolution is sent as a message of its own
        if isinstance(message_id, int):
            self.message_ids.pop(notice.key, None)
            self.message_ids[notice.key] = message_id
            while len(self.message_ids) > self.limit:
                del self.message_ids[next(iter(self.message_ids))]


def webhook_sinks(settings: Settings) -> list[WebhookSink]:
    """The webhook sinks the settings configure (none by default; the log sink always runs)."""
    sinks: list[WebhookSink] = []
    if settings.alert_slack_webhook_url:
        sinks.append(WebhookSink("slack", settings.alert_slack_webhook_url, slack_payload))
    if settings.alert_pagerduty_url:
        routing_key = settings.alert_pagerduty_routing_key

        def pagerduty(notice: AlertNotice) -> dict[str, Any]:
            return pagerduty_payload(notice, routing_key)

        sinks.append(
            WebhookSink(
                "pagerduty", settings.alert_pagerduty_url, pagerduty, settings.alert_pagerduty_min_severity.upper()
            )
        )
    if settings.alert_telegram_bot_token and settings.alert_telegram_chat_id:
        threads = TelegramThreads(settings.alert_telegram_chat_id)
        url = f"{settings.alert_telegram_api_url.rstrip('/')}/bot{settings.alert_telegram_bot_token}/sendMessage"
        sinks.append(
            WebhookSink(
                "telegram",
                url,
                threads.build,
                settings.alert_telegram_min_severity.upper(),
                remember=threads.remember,
            )
        )
    if settings.alert_webhook_url:
        secret = settings.alert_webhook_secret

        def signature(body: bytes) -> dict[str, str]:
            return {SIGNATURE_HEADER: webhook_signature(secret, body)} if secret else {}

        sinks.append(WebhookSink("webhook", settings.alert_webhook_url, webhook_payload, sign=signature))
    return sinks


SINK_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError)


async def post_alert(session: aiohttp.ClientSession, sink: WebhookSink, notice: AlertNotice, timeout_s: float) -> int:
    """POST one alert to a webhook; returns the HTTP status.

    Raises:
        aiohttp.ClientError, TimeoutError, OSError: the webhook is unreachable or too slow.
    """
    body = json.dumps(sink.build(notice), default=str, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", **(sink.sign(body) if sink.sign is not None else {})}
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with session.post(sink.url, data=body, headers=headers, timeout=timeout) as response:
        answer = await response.read()
        if sink.remember is not None and response.status < 300:
            sink.remember(notice, answer)
        return response.status

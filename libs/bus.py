"""The message bus on NATS JetStream.

Streams and durable consumers are declared idempotently at start. Publishes carry `Nats-Msg-Id`
for de-duplication, the message type and the trace context in headers. Consumers ack only after
their handler (the effect) has returned, `nak` with a growing delay on errors, and move a message
to the dead-letter stream after a bounded number of deliveries (at once for undecodable input).

Bus loss (SPEC FM-C6): `connected` follows the client's disconnect/reconnect callbacks and
listeners are told at once, so services can halt. `publish_buffered` keeps what could not be
published in a bounded outbox (1000, the oldest dropped with an error log and, once the bus is
back, an alert) and flushes it in order on reconnect; nothing is ever reported as stored before
JetStream acknowledged it. `publish_many` pipelines several acknowledged publishes (one round
trip instead of one per message).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import AuthorizationError as NatsAuthorizationError
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from opentelemetry import context as otel_context
from opentelemetry import propagate

from libs.errors import PermanentError
from libs.logging import Logger, get_logger
from libs.metrics import ServiceMetrics
from libs.retry import recoverable_until_reachable
from libs.store_errors import WriteFailure, classify_write_error, describe
from proto import permissions, subjects
from proto.codec import decode, encode
from proto.enums import AlertSeverity
from proto.envelope import Message
from proto.messages import AlertRaised, DeadLettered
from proto.subjects import StreamSpec

M = TypeVar("M", bound=Message)

HEADER_MSG_ID = "Nats-Msg-Id"
HEADER_TYPE = "Bulwark-Type"
DEFAULT_MAX_DELIVER = 5
DEPENDENCY_WAIT_MAX_S = 5.0
"""Longest pause of a consumer waiting for a dependency (it retries the same message after it)."""
OUTBOX_LIMIT = 1000
"""SPEC FM-C6: at most this many outgoing messages are buffered while the bus is down."""
PUBLISH_MANY_TIMEOUT_S = 5.0
DRAIN_BATCH = 256
"""Largest fetch a consumer makes while the server reports a backlog (`drain_size`)."""
REPLAY_INACTIVE_S = 60.0
"""A replay consumer left by a process that died mid-replay is removed by the server after this."""
REPLAY_SLOT_WAIT_S = REPLAY_INACTIVE_S + 30.0
"""Longest wait for a free replay consumer (every one in use: one left by a crash has expired by then)."""
CONSUMER_ALREADY_EXISTS = 10148
"""JetStream's error code for an exclusive create of a consumer whose name is taken."""


class PublishManyError(RuntimeError):
    """Some publishes of a `publish_many` batch were not acknowledged.

    Attributes:
        results: per item, in order: the stream sequence, or the exception of a failed publish.
    """

    def __init__(self, results: list[int | BaseException]) -> None:
        failed = sum(1 for result in results if isinstance(result, BaseException))
        super().__init__(f"{failed} of {len(results)} publishes not acknowledged")
        self.results = results


@dataclass(frozen=True)
class OutboxEntry:
    subject: str
    message: Message
    msg_id: str | None
    trace_context: otel_context.Context = field(default_factory=otel_context.get_current)
    """The publisher's trace context: the flush, later and in another task, sends it on."""


@dataclass(frozen=True)
class Delivery:
    """Metadata of one delivery of a persisted message."""

    subject: str
    stream_sequence: int
    num_delivered: int
    headers: dict[str, str]
    stored_ns: int | None = None
    """When the stream stored the message (the server's clock), None when not known."""


Handler = Callable[[Message, Delivery], Awaitable[None]]
RequestHandler = Callable[[bytes], Awaitable[bytes]]
ConnectionListener = Callable[[bool], Awaitable[None] | None]


class Bus:
    """One service's connection to NATS and JetStream."""

    def __init__(self, component: str, logger: Logger | None = None, *, replicas: int = 1) -> None:
        """A bus of `component`, not connected yet.

        Args:
            component: who connects (the connection's name).
            logger: where the bus logs.
            replicas: replicas of the streams and key-value buckets this bus declares
                (`BULWARK_STREAM_REPLICAS`): 1 on a single node, 3 in a cluster (R3) so that losing one
                node loses neither the event log nor the persisted state.
        """
        self.component = component
        self.replicas = replicas
        self.may_update_streams = True
        """This user may change an existing stream or bucket (`proto.permissions`: the provisioner
        and the admin); others only create what is missing and leave the rest to the provisioner."""
        self.log = logger or get_logger(component)
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._listeners: list[ConnectionListener] = []
        self._kv: dict[str, KeyValue] = {}
        self._replay_locks: dict[str, asyncio.Lock] = {}
        self.connected = False
        self.disconnected_since_ns: int | None = None
        """Wall-clock ns of the current outage's start (None while connected)."""
        self._outbox: deque[OutboxEntry] = deque()
        self.outbox_limit = OUTBOX_LIMIT
        self.outbox_dropped = 0
        """Buffered messages dropped (oldest first) because the outbox was full, since start."""
        self._dropped_unreported = 0
        self._flush_task: asyncio.Task[None] | None = None
        self._credentials = ("", "")
        self.metrics: ServiceMetrics | None = None
        """Where messages in and out, redeliveries, lag and reconnects are counted (set by the runtime)."""

    # ------------------------------------------------------------------ connection

    async def connect(
        self,
        servers: str,
        *,
        connect_timeout_s: float = 2.0,
        initial_connect_timeout_s: float = 300.0,
        user: str = "",
        password: str = "",
    ) -> None:
        """Connect (retrying the first connection for up to `initial_connect_timeout_s`), then
        keep reconnecting forever.

        Args:
            servers: URL(s), comma separated; a URL may carry `user:password@` itself.
            user: the NATS user (`proto.permissions`: one per component); empty: from the URL, or none.
            password: its password.

        Raises:
            PermanentError: the server refused the credentials (or their absence): retrying cannot help.
        """
        self._credentials = (user, password)

        async def on_disconnected() -> None:
            if self.connected:
                self.connected = False
                self.disconnected_since_ns = time.time_ns()
                self.log.warning("bus_disconnected", action_taken="reconnecting; outgoing messages buffered")
                await self._notify(False)

        async def on_reconnected() -> None:
            outage_ms = (time.time_ns() - self.disconnected_since_ns) // 1_000_000 if self.disconnected_since_ns else 0
            self.connected = True
            self.disconnected_since_ns = None
            self.log.info("bus_reconnected", outage_ms=outage_ms, outbox=len(self._outbox))
            if self.metrics is not None:
                self.metrics.reconnected("nats")
            self._schedule_flush()
            await self._notify(True)

        server_list = [s.strip() for s in servers.split(",") if s.strip()]
        connecting = True

        async def on_error(exc: Exception) -> None:
            self.log.warning("bus_error", error=str(exc) or type(exc).__name__)
            if connecting and _refused_credentials(exc):
                # The client would try again forever; credentials do not get better by waiting.
                raise PermanentError(f"NATS refused the connection of user {user or '(none)'!r}") from exc

        async for attempt in recoverable_until_reachable(
            (OSError, NatsError, asyncio.TimeoutError),
            initial_connect_timeout_s,
            on_retry=lambda state: self.log.warning(
                "bus_connect_failed", attempt=state.attempt_number, action_taken="retrying"
            ),
        ):
            with attempt:
                self._nc = await self._connect_once(
                    server_list, connect_timeout_s, on_disconnected, on_reconnected, on_error
                )
        connecting = False
        self._js = self.nc.jetstream(timeout=5.0)
        self.connected = True
        self.log.info("bus_connected", servers=redact_url(servers), user=user or None)

    async def _connect_once(
        self,
        server_list: list[str],
        connect_timeout_s: float,
        on_disconnected: Callable[[], Awaitable[None]],
        on_reconnected: Callable[[], Awaitable[None]],
        on_error: Callable[[Exception], Awaitable[None]],
    ) -> NatsClient:
        user, password = self._credentials
        client = NatsClient()
        try:
            await client.connect(
                servers=server_list,
                name=self.component,
                user=user or None,
                password=password or None,
                # nats-py annotates these as int but takes seconds as float (as `nats.connect` passes them).
                connect_timeout=connect_timeout_s,  # type: ignore[arg-type]
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,  # type: ignore[arg-type]
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                error_cb=on_error,
                pending_size=8 * 1024 * 1024,
            )
        except BaseException:
            # A refused or abandoned attempt must not leave its socket open.
            with contextlib.suppress(Exception):
                await client.close()
            raise
        return client

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        """Call `listener(connected)` whenever the bus connection goes down or comes back."""
        self._listeners.append(listener)

    async def _notify(self, connected: bool) -> None:
        for listener in self._listeners:
            result = listener(connected)
            if result is not None:
                await result

    @property
    def nc(self) -> NatsClient:
        if self._nc is None:
            raise RuntimeError("bus not connected")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("bus not connected")
        return self._js

    async def close(self) -> None:
        self.connected = False  # a deliberate close is not an outage: no disconnect warning
        if self._outbox:
            self.log.warning("bus_closed_with_outbox", outbox=len(self._outbox), action_taken="not published")
        if self._flush_task is not None:
            self._flush_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._flush_task
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        if self._nc is not None and not self._nc.is_closed:
            # Persisted publishes were acknowledged already; flush what core NATS still buffers,
            # then close. (A drain would wait on the pull subscriptions' pending fetches.)
            with contextlib.suppress(Exception):
                await self._nc.flush(timeout=1)
            with contextlib.suppress(Exception):
                await self._nc.close()
        self.connected = False

    # ------------------------------------------------------------------ declaration

    async def ensure_streams(
        self,
        specs: tuple[StreamSpec, ...] = subjects.ALL_STREAMS,
        replicas: int | None = None,
        *,
        update: bool | None = None,
    ) -> None:
        """Create or update every stream so that it matches its spec (idempotent).

        Args:
            specs: The streams to declare.
            replicas: 1 on a single node; 3 in a cluster (R3) so a node loss loses nothing
                (default: the bus's `replicas`).
            update: also bring an existing stream to its spec; False: only create missing ones
                (a user that may not change a stream's configuration, `proto.permissions`);
                default: `may_update_streams`.
        """
        replicas = self.replicas if replicas is None else replicas
        update = self.may_update_streams if update is None else update
        for spec in specs:
            config = StreamConfig(
                name=spec.name,
                subjects=list(spec.subjects),
                storage=StorageType.FILE,
                max_age=spec.max_age_s or None,
                max_bytes=spec.max_bytes,
                max_msgs=spec.max_msgs,
                duplicate_window=spec.duplicate_window_s,
                description=spec.description,
                num_replicas=replicas,
            )
            try:
                await self.js.stream_info(spec.name)
            except NotFoundError:
                await self.js.add_stream(config)
                self.log.info("stream_created", stream=spec.name)
            else:
                if update:
                    await self.js.update_stream(config)

    async def kv(self, bucket: str = subjects.KV_STATE) -> KeyValue:
        """The key-value bucket (created on first use, file storage, 5 revisions of history, the
        bus's `replicas`; an existing bucket with fewer replicas is brought up to them)."""
        if bucket not in self._kv:
            try:
                found = await self.js.key_value(bucket)
            except NotFoundError:
                found = await self.js.create_key_value(
                    KeyValueConfig(bucket=bucket, history=5, storage=StorageType.FILE, replicas=self.replicas)
                )
            else:
                await self._ensure_kv_replicas(bucket)
            self._kv[bucket] = found
        return self._kv[bucket]

    async def _ensure_kv_replicas(self, bucket: str) -> None:
        """A bucket created before the deployment asked for more replicas (e.g. at R1) is scaled up:
        otherwise the persisted trading state would live on one node of the cluster only."""
        stream = f"KV_{bucket}"
        info = await self.js.stream_info(stream)
        current = info.config.num_replicas or 1
        if current < self.replicas and not self.may_update_streams:
            # Not this user's to change (its request would be refused and end its start): the
            # provisioner raises it when it starts; meanwhile the bucket works at its replicas.
            self.log.warning("kv_replicas_low", bucket=bucket, current=current, wanted=self.replicas)
        elif current < self.replicas:
            await self.js.update_stream(info.config.evolve(num_replicas=self.replicas))
            self.log.info("kv_replicas_raised", bucket=bucket, previous=current, current=self.replicas)

    async def last_message(self, stream: str, subject: str, kind: type[M]) -> M | None:
        """The newest message stored on `subject` in `stream`, when it is a `kind` (else None)."""
        try:
            raw = await self.js.get_last_msg(stream, subject)
        except NotFoundError:
            return None
        message = decode(raw.data or b"")
        return message if isinstance(message, kind) else None

    async def kv_keys(self, prefix: str = "", bucket: str = subjects.KV_STATE) -> list[str]:
        """Keys of a bucket starting with `prefix` (deleted keys may be included: read them to know).

        Read from the bucket stream's subject list, not with `KeyValue.keys()`: that creates an
        ordered consumer per call which lingers on the server, and frequent callers (the status
        endpoint) ran into the server's consumer limit.
        """
        await self.kv(bucket)
        stream = f"KV_{bucket}"
        base = f"$KV.{bucket}."
        info = await self.js.stream_info(stream, subjects_filter=f"{base}{prefix}>" if prefix else f"{base}>")
        found = info.state.subjects or {}
        return sorted(subject[len(base) :] for subject in found if subject.startswith(base + prefix))

    async def kv_get(self, key: str, bucket: str = subjects.KV_STATE) -> tuple[bytes, int] | None:
        """(value, revision) of a key, or None when it was never set or deleted."""
        kv = await self.kv(bucket)
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return entry.value, entry.revision or 0

    async def kv_put(self, key: str, value: bytes, bucket: str = subjects.KV_STATE) -> int:
        kv = await self.kv(bucket)
        return await kv.put(key, value)

    async def stream_bounds(self, stream: str) -> tuple[int, int]:
        """(first, last) sequence stored in `stream` (last is 0 for a stream never written)."""
        info = await self.js.stream_info(stream)
        return int(info.state.first_seq or 0), int(info.state.last_seq or 0)

    # ------------------------------------------------------------------ publishing

    def _headers(self, message: Message, msg_id: str | None) -> dict[str, str]:
        headers: dict[str, str] = {
            HEADER_MSG_ID: msg_id or message.message_id,
            HEADER_TYPE: type(message).__name__,
        }
        propagate.inject(headers)
        return headers

    async def publish(self, subject: str, message: Message, *, msg_id: str | None = None) -> int:
        """Persist a message on JetStream; returns its stream sequence once the server stored it.

        `msg_id` overrides the de-duplication id (default: the message id), so that a command
        re-sent after a crash is stored once.
        """
        ack = await self.js.publish(subject, encode(message), headers=self._headers(message, msg_id))
        if self.metrics is not None:
            self.metrics.published(subject)
        if ack.duplicate:
            self.log.debug("publish_deduplicated", subject=subject, msg_id=msg_id or message.message_id)
        return int(ack.seq)

    async def publish_many(
        self, items: Sequence[tuple[str, Message, str | None]], *, timeout_s: float = PUBLISH_MANY_TIMEOUT_S
    ) -> list[int]:
        """Persist several messages with one wait: all are sent in order, then all acks awaited.

        One acknowledged publish costs a round trip plus the server's fsync (~2 ms); here the
        whole batch shares one. The server stores them in the order given.

        Args:
            items: (subject, message, msg_id or None for the message id), in order.
            timeout_s: how long to wait for every acknowledgement.

        Returns:
            The stream sequence of each message, in order.

        Raises:
            PublishManyError: some were not acknowledged (`results` says which). Re-publishing
                the same items is safe within the de-duplication window, but a failed one then
                lands after later ones, so order-sensitive callers resync instead.
        """
        if not items:
            return []
        futures: list[asyncio.Future[Any]] = []
        results: list[int | BaseException] = []
        try:
            for subject, message, msg_id in items:
                futures.append(
                    await self.js.publish_async(subject, encode(message), headers=self._headers(message, msg_id))
                )
        except Exception as exc:  # noqa: BLE001 - what was not sent is reported as failed below
            self.log.warning("publish_many_send_failed", sent=len(futures), total=len(items), error=str(exc)[:300])
            results = [exc] * (len(items) - len(futures))
        done, pending = await asyncio.wait(futures, timeout=timeout_s) if futures else (set(), set())
        for future in pending:
            future.cancel()
        acks: list[int | BaseException] = []
        for future in futures:
            if future in done and future.exception() is None:
                acks.append(int(future.result().seq))
                if self.metrics is not None:
                    self.metrics.published(items[len(acks) - 1][0])
            elif future in done:
                error = future.exception()
                assert error is not None
                acks.append(error)
            else:
                acks.append(NatsTimeoutError())
        all_results = acks + results
        if any(isinstance(result, BaseException) for result in all_results):
            raise PublishManyError(all_results)
        return [int(result) for result in all_results if isinstance(result, int)]

    async def publish_buffered(self, subject: str, message: Message, *, msg_id: str | None = None) -> int | None:
        """Publish, or keep the message for later while the bus is down (SPEC FM-C6).

        For messages whose sender need not wait for them to be stored (events, alerts, market
        data): while disconnected, or when the publish fails for a connection reason, the message
        goes to a bounded outbox (the oldest dropped beyond `outbox_limit`) that is flushed in
        order when the connection returns. Commands whose effect depends on being stored first
        must use `publish` and halt on failure instead.

        Returns:
            The stream sequence when stored now, None when buffered.
        """
        if self.connected and not self._outbox:
            try:
                return await self.publish(subject, message, msg_id=msg_id)
            except (TimeoutError, NatsError, OSError) as exc:
                self.log.warning("publish_failed_buffered", subject=subject, error=f"{type(exc).__name__}: {exc}")
        self._buffer(OutboxEntry(subject, message, msg_id))
        if self.connected:
            self._schedule_flush()
        return None

    @property
    def outbox_size(self) -> int:
        """Messages waiting in the outbox."""
        return len(self._outbox)

    def _buffer(self, entry: OutboxEntry) -> None:
        if len(self._outbox) >= self.outbox_limit:
            dropped = self._outbox.popleft()
            self.outbox_dropped += 1
            self._dropped_unreported += 1
            # Logged every time: a message is lost for good here, operators must see each one.
            self.log.error(
                "bus_outbox_overflow",
                subject=dropped.subject,
                message_id=dropped.message.message_id,
                dropped_total=self.outbox_dropped,
                limit=self.outbox_limit,
                action_taken="oldest buffered message dropped; alert on reconnect",
            )
        self._outbox.append(entry)

    def _schedule_flush(self) -> None:
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.create_task(self._flush_outbox(), name=f"{self.component}-outbox-flush")

    async def _flush_outbox(self) -> None:
        """Publish the outbox in order; stop (keeping the rest) at the first failure."""
        flushed = 0
        while self._outbox and self.connected:
            entry = self._outbox[0]
            token = otel_context.attach(entry.trace_context)
            try:
                await self.publish(entry.subject, entry.message, msg_id=entry.msg_id)
            except (TimeoutError, NatsError, OSError) as exc:
                self.log.warning(
                    "outbox_flush_failed", error=f"{type(exc).__name__}: {exc}", remaining=len(self._outbox)
                )
                return  # retried on the next reconnect or the next buffered publish
            finally:
                otel_context.detach(token)
            # Another task may have buffered (and overflowed) meanwhile: remove exactly this entry.
            if self._outbox and self._outbox[0] is entry:
                self._outbox.popleft()
            flushed += 1
        if flushed:
            self.log.info("outbox_flushed", flushed=flushed, remaining=len(self._outbox))
        if self._dropped_unreported and self.connected:
            dropped, self._dropped_unreported = self._dropped_unreported, 0
            alert = AlertRaised(
                key=f"bus-outbox-overflow.{self.component}",
                severity=AlertSeverity.P1,
                component=self.component,
                title=f"{dropped} outgoing messages dropped while the bus was down (outbox limit {self.outbox_limit})",
                details={"dropped": dropped, "dropped_total": self.outbox_dropped},
            )
            try:
                await self.publish(subjects.EVT_ALERT_RAISED, alert)
            except (TimeoutError, NatsError, OSError) as exc:
                self._dropped_unreported += dropped
                self.log.warning("outbox_alert_failed", error=str(exc)[:300])

    def status(self) -> dict[str, Any]:
        """Connection state for heartbeats and health checks."""
        return {
            "connected": self.connected,
            "outbox": len(self._outbox),
            "outbox_dropped": self.outbox_dropped,
            "disconnected_since_ns": self.disconnected_since_ns,
        }

    async def publish_core(self, subject: str, message: Message) -> None:
        """Fire-and-forget on core NATS (heartbeats): not persisted."""
        await self.nc.publish(subject, encode(message), headers={HEADER_TYPE: type(message).__name__})

    # ------------------------------------------------------------------ consuming

    async def consume(
        self,
        *,
        stream: str,
        durable: str,
        filter_subjects: list[str],
        handler: Handler,
        max_deliver: int = DEFAULT_MAX_DELIVER,
        ack_wait_s: float = 30.0,
        deliver_policy: DeliverPolicy = DeliverPolicy.ALL,
        batch: int = 64,
        start_sequence: int | None = None,
    ) -> None:
        """Start a durable pull consumer `durable` that runs `handler` for every message.

        Args:
            start_sequence: when given, the durable is (re)created to deliver from this stream
                sequence on, whatever position it had: for consumers whose state comes from a
                snapshot that already covers everything before it.
        """
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait_s,
            # The server's own limit is one above ours so that we, not it, dead-letter the message.
            max_deliver=max_deliver + 1,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start_sequence is not None else deliver_policy,
            opt_start_seq=start_sequence,
            filter_subjects=filter_subjects if len(filter_subjects) > 1 else None,
            filter_subject=filter_subjects[0] if len(filter_subjects) == 1 else None,
        )
        if start_sequence is not None:
            with contextlib.suppress(NotFoundError):
                await self.js.delete_consumer(stream, durable)
        await self._ensure_consumer(stream, config)
        sub = await self.js.pull_subscribe_bind(durable=durable, stream=stream)
        self._tasks.append(
            asyncio.create_task(self._consume_loop(sub, durable, handler, max_deliver, batch), name=durable)
        )

    async def _ensure_consumer(self, stream: str, config: ConsumerConfig) -> None:
        """Create the durable, or bring an existing one's filter to `config`'s.

        A durable keeps its position when its filter changes (nats-server >= 2.10 updates a pull
        consumer's filter in place): it goes on after the last message it delivered, now matching
        the new filter; messages delivered and not acknowledged yet are redelivered as before. Only
        the filter is changed; the rest of the existing configuration stays as it was.
        """
        durable = config.durable_name or ""
        try:
            info = await self.js.consumer_info(stream, durable)
        except NotFoundError:
            await self.js.add_consumer(stream, config)
            self.log.info("consumer_created", stream=stream, durable=durable)
            return
        current, wanted = consumer_filters(info.config), consumer_filters(config)
        if current == wanted:
            return
        # The create request (action create-or-update) with the existing configuration and the new
        # filter: only updatable fields differ, so the server updates the durable in place.
        update = info.config.evolve(
            filter_subject=wanted[0] if len(wanted) == 1 else None,
            filter_subjects=list(wanted) if len(wanted) > 1 else None,
        )
        await self.js.add_consumer(stream, update)
        self.log.info(
            "consumer_filter_updated", stream=stream, durable=durable, previous=list(current), current=list(wanted)
        )

    async def _consume_loop(
        self,
        sub: JetStreamContext.PullSubscription,
        durable: str,
        handler: Handler,
        max_deliver: int,
        batch: int,
    ) -> None:
        size = batch
        while True:
            _raise_if_cancelling()
            try:
                msgs = await sub.fetch(size, timeout=1.0)
            except NatsTimeoutError:
                size = batch
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the loop must survive bus outages
                self.log.warning("consume_fetch_failed", durable=durable, error=str(exc), action_taken="retry in 1s")
                await asyncio.sleep(1.0)
                size = batch
                continue
            for index, msg in enumerate(msgs):
                await self._deliver(msg, durable, handler, max_deliver, msgs[index + 1 :])
            size = drain_size(batch, msgs[-1]) if msgs else batch

    async def _deliver(
        self, msg: Msg, durable: str, handler: Handler, max_deliver: int, behind: Sequence[Msg] = ()
    ) -> None:
        """Run `handler` on one message: ack after it; by what a failure means (`libs.store_errors`):
        a bad message is dead-lettered at once, a dependency down is waited for with this message
        retried first (order kept, never dead-lettered for an outage), anything else is naked with
        a delay and dead-lettered after `max_deliver` deliveries. `behind`: the rest of the fetched
        batch, kept from redelivery while this message waits."""
        meta = msg.metadata
        delivery = Delivery(
            subject=msg.subject,
            stream_sequence=meta.sequence.stream,
            num_delivered=meta.num_delivered,
            headers=dict(msg.headers or {}),
            stored_ns=int(meta.timestamp.timestamp() * 1_000_000_000),
        )
        if self.metrics is not None:
            self.metrics.received(msg.subject, durable, meta.num_delivered, meta.num_pending)
        try:
            message = decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self._dead_letter(msg, durable, f"undecodable: {exc}", delivery)
            return
        token = otel_context.attach(propagate.extract(delivery.headers))
        waits = 0
        try:
            while True:
                try:
                    await handler(message, delivery)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failure = classify_write_error(exc)
                    if failure is WriteFailure.DEPENDENCY_DOWN:
                        waits += 1
                        await self._wait_for_dependency(msg, behind, durable, exc, waits)
                        continue
                    if failure is WriteFailure.BAD_ROW:
                        self.log.error(
                            "handler_permanent_error", durable=durable, subject=msg.subject, error=describe(exc, 500)
                        )
                        await self._dead_letter(msg, durable, f"permanent: {describe(exc)}", delivery)
                        return
                    if delivery.num_delivered >= max_deliver:
                        self.log.exception("handler_failed_final", exc, durable=durable, subject=msg.subject)
                        await self._dead_letter(msg, durable, describe(exc), delivery)
                    else:
                        delay = min(0.2 * 2 ** (delivery.num_delivered - 1), 5.0)
                        self.log.warning(
                            "handler_failed",
                            durable=durable,
                            subject=msg.subject,
                            error=f"{type(exc).__name__}: {exc}",
                            deliveries=delivery.num_delivered,
                            action_taken=f"nak delay {delay:.1f}s",
                        )
                        with contextlib.suppress(Exception):
                            await msg.nak(delay=delay)
                    return
        finally:
            otel_context.detach(token)
        if waits:
            self.log.info("consumer_dependency_back", durable=durable, subject=msg.subject, waited_rounds=waits)
        with contextlib.suppress(Exception):
            await msg.ack()

    async def _wait_for_dependency(
        self, msg: Msg, behind: Sequence[Msg], durable: str, exc: BaseException, waits: int
    ) -> None:
        """One wait of a consumer whose handler found a dependency down: the message and the rest of
        its batch stay ours (in progress), then the same message is tried again."""
        delay = min(0.2 * 2 ** min(waits - 1, 10), DEPENDENCY_WAIT_MAX_S)
        if waits == 1 or waits % 20 == 0:
            self.log.warning(
                "consumer_waiting_for_dependency",
                durable=durable,
                subject=msg.subject,
                error=describe(exc, 300),
                waits=waits,
                action_taken=f"same message again in {delay:.1f}s; the ones behind it wait (order kept)",
            )
        for pending in (msg, *behind):
            with contextlib.suppress(Exception):
                await pending.in_progress()
        await asyncio.sleep(delay)

    async def _dead_letter(self, msg: Msg, durable: str, reason: str, delivery: Delivery) -> None:
        letter = DeadLettered(
            consumer=durable,
            subject=msg.subject,
            reason=reason[:1000],
            deliveries=delivery.num_delivered,
            payload=msg.data.decode("utf-8", errors="replace")[:65536],
            original_message_id=delivery.headers.get(HEADER_MSG_ID),
        )
        try:
            await self.publish(subjects.dlq(durable), letter)
        except Exception as exc:  # noqa: BLE001 - keep the original for redelivery rather than lose it
            self.log.error("dead_letter_failed", durable=durable, error=str(exc), action_taken="nak")
            with contextlib.suppress(Exception):
                await msg.nak(delay=5.0)
            return
        self.log.error("dead_lettered", durable=durable, subject=msg.subject, reason=reason[:300])
        if self.metrics is not None:
            self.metrics.dead_letter(durable)
        with contextlib.suppress(Exception):
            await msg.term()

    async def replay(
        self,
        stream: str,
        start_seq: int,
        end_seq: int,
        handler: Callable[[Message, Delivery], None],
        *,
        filter_subject: str | None = None,
        batch: int = 512,
        fetch_timeout_s: float = 2.0,
    ) -> int:
        """Read `stream` from `start_seq` through `end_seq` into `handler`, as fast as possible.

        An ephemeral, unacknowledged consumer fetching large batches: for rebuilding state from
        the log (snapshot tail, projections), not for effects that must be acknowledged.
        Undecodable messages are logged and skipped.

        Returns:
            How many messages were handed to `handler`.
        """
        if end_seq < start_seq:
            return 0
        # A process's replays of one stream take turns; processes of one user take different
        # replay consumers (`proto.permissions.replay_consumers`, `_claim_replay_consumer`).
        async with self._replay_locks.setdefault(stream, asyncio.Lock()):
            return await self._replay(stream, start_seq, end_seq, handler, filter_subject, batch, fetch_timeout_s)

    async def _replay(
        self,
        stream: str,
        start_seq: int,
        end_seq: int,
        handler: Callable[[Message, Delivery], None],
        filter_subject: str | None,
        batch: int,
        fetch_timeout_s: float,
    ) -> int:
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start_seq,
            filter_subject=filter_subject,
            inactive_threshold=REPLAY_INACTIVE_S,
            max_ack_pending=-1,
        )
        user = self._credentials[0]
        if user and user != permissions.ADMIN:
            name = await self._claim_replay_consumer(stream, config, permissions.replay_consumers(user))
        else:
            # The admin (tools, several at once) or a server without users: a name of its own.
            name = f"{self.component}-replay-{uuid.uuid4().hex[:8]}"
            await self.js.add_consumer(stream, config.evolve(name=name))
        sub = await self.js.pull_subscribe_bind(durable=name, stream=stream)
        count = 0
        try:
            while True:
                _raise_if_cancelling()
                try:
                    msgs = await sub.fetch(batch, timeout=fetch_timeout_s)
                except NatsTimeoutError:
                    info = await self.js.consumer_info(stream, name)
                    if not info.num_pending:
                        return count  # nothing left (the rest of the range was filtered out)
                    continue
                for msg in msgs:
                    seq = msg.metadata.sequence.stream
                    if seq > end_seq:
                        return count
                    delivery = Delivery(msg.subject, seq, 1, {})
                    try:
                        message = decode(msg.data)
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        self.log.warning("replay_undecodable", stream=stream, seq=seq, error=str(exc)[:300])
                    else:
                        handler(message, delivery)
                        count += 1
                    if seq >= end_seq:
                        return count
                    if msg.metadata.num_pending == 0:
                        return count
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(stream, name)

    async def _claim_replay_consumer(self, stream: str, config: ConsumerConfig, names: Sequence[str]) -> str:
        """Create the first free of the user's replay consumers on `stream` and return its name.

        Each is created with the server's exclusive create, so two processes of one user (an active
        and a standby starting together) never share one: one in use answers "already exists" and
        the next is tried. A process that died mid-replay leaves its consumer until
        `REPLAY_INACTIVE_S`; when every one is taken the claim waits that long for one to free.

        Raises:
            PermanentError: none came free within `REPLAY_SLOT_WAIT_S`.
        """
        deadline = time.monotonic() + REPLAY_SLOT_WAIT_S
        warned = False
        while True:
            for name in names:
                if await self._create_consumer_exclusive(stream, config.evolve(name=name)):
                    return name
            if time.monotonic() >= deadline:
                raise PermanentError(f"replay of {stream}: every replay consumer ({', '.join(names)}) stayed in use")
            if not warned:
                warned = True
                self.log.warning(
                    "replay_consumers_busy",
                    stream=stream,
                    consumers=list(names),
                    action_taken=f"waiting up to {REPLAY_SLOT_WAIT_S:.0f} s for one to end or expire",
                )
            await asyncio.sleep(1.0)

    async def _create_consumer_exclusive(self, stream: str, config: ConsumerConfig) -> bool:
        """Create a named consumer only if no consumer of that name exists (the server's
        `action: create`, which the client library does not send); False when one does."""
        tokens = ["CONSUMER", "CREATE", stream, str(config.name)]
        if config.filter_subject and config.filter_subject != ">":
            tokens.append(config.filter_subject)
        body = msgspec.json.encode({"stream_name": stream, "config": config.as_dict(), "action": "create"})
        reply = await self.nc.request(".".join((permissions.JETSTREAM_API_PREFIX, *tokens)), body, timeout=5.0)
        error = msgspec.json.decode(reply.data).get("error")
        if error is None:
            return True
        if error.get("err_code") == CONSUMER_ALREADY_EXISTS:
            return False
        raise APIError.from_error(error)

    async def subscribe_core(self, subject: str, callback: Callable[[Msg], Awaitable[None]]) -> Any:
        """Core NATS subscription (live only: heartbeats, fan-out of events).

        Returns once the server has the subscription (a flush), so nothing published after the call
        is missed: a core message sent before the server knows the interest is simply dropped.
        """
        subscription = await self.nc.subscribe(subject, cb=callback)
        await self.nc.flush()
        return subscription

    # ------------------------------------------------------------------ request / reply

    async def serve(self, subject: str, handler: RequestHandler) -> None:
        """Answer requests on `subject` with `handler(payload) -> reply` (errors become JSON errors)."""

        async def on_request(msg: Msg) -> None:
            try:
                reply = await handler(msg.data)
            except Exception as exc:  # noqa: BLE001 - a bad request must never kill the responder
                self.log.warning("request_failed", subject=subject, error=str(exc))
                reply = msgspec.json.encode({"error": {"code": "internal", "message": str(exc)[:500]}})
            if msg.reply:
                await msg.respond(reply)

        await self.nc.subscribe(subject, cb=on_request)
        await self.nc.flush()  # answering from the return on: a request sent before would find no responder

    async def request(self, subject: str, payload: bytes = b"{}", *, timeout_s: float = 3.0) -> bytes:
        """Send a request and wait for its reply (raises TimeoutError / NoRespondersError)."""
        msg = await self.nc.request(subject, payload, timeout=timeout_s)
        return msg.data


def redact_url(urls: str) -> str:
    """`urls` with every password replaced by `***` (for logs)."""
    return ",".join(_redact_one(url.strip()) for url in urls.split(","))


def _redact_one(url: str) -> str:
    scheme, separator, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not separator or not at:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}:***@{host}"


def _refused_credentials(exc: BaseException) -> bool:
    """The server refused who we are (no, wrong or unknown credentials), not a network error."""
    return isinstance(exc, NatsAuthorizationError) or "authorization violation" in str(exc).lower()


def consumer_filters(config: ConsumerConfig) -> tuple[str, ...]:
    """The subjects a consumer configuration filters on (sorted; empty: the whole stream)."""
    return tuple(sorted(config.filter_subjects or ([config.filter_subject] if config.filter_subject else [])))


def drain_size(batch: int, last: Msg) -> int:
    """How many messages the next fetch asks for, after `last` was delivered.

    A fetch that asks for more than the server has lingers until its timeout waiting for the rest,
    which is why live consumers fetch small batches (1 for state-builder and risk). But one fetch
    round trip per message caps a consumer at a few hundred messages a second: a backlog (a burst,
    a restart after downtime) would take minutes to work off, with every message old when handled.
    The server tells with each message how many more are pending for the consumer, so the next
    fetch asks for exactly those (at most `DRAIN_BATCH`): they are there, nothing lingers. Messages
    are still handled one by one, in order, each acknowledged after its handler.
    """
    try:
        pending = int(last.metadata.num_pending or 0)
    except Exception:  # noqa: BLE001 - not a JetStream delivery (no metadata): no drain
        return batch
    return max(batch, min(pending, DRAIN_BATCH))


def _raise_if_cancelling() -> None:
    """Honour a cancellation that an inner `asyncio.wait_for` swallowed.

    On Python 3.11 a cancel that lands just as nats-py's `wait_for` completes is lost (the
    result wins), so a fetch loop would run on forever after `cancel()`. `Task.cancelling()`
    still counts the request, so the loop checks it on every turn.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], rounds: int = 10, timeout_s: float = 0.5) -> None:
    """Cancel `tasks` and wait until they end, cancelling again while any is still running."""
    pending = [task for task in tasks if not task.done()]
    for _ in range(rounds):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, still = await asyncio.wait(pending, timeout=timeout_s)
        pending = list(still)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved, so asyncio does not warn about it later

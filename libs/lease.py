"""Single-writer leases with fencing tokens on JetStream KV (SPEC §8).

A singleton writer (the position service, each strategy) holds the lease `lease.<name>` in the KV
bucket `bulwark-leases` before it writes. Every write to the key is a compare-and-set on its
revision (`create`, or `update` with the expected last revision), so two candidates can never
both succeed. The value records the holder and when the lease expires; a holder renews it every
`ttl/3`, and another candidate may take it over once it has expired.

The **fencing token** is the KV revision of the holder's latest successful write of the key.
Revisions only grow, so a holder that lost the lease (paused, partitioned) carries a token lower
than its successor's: `Fence` refuses its writes, and `Lease.ensure_held()` (which re-reads the
key) tells the holder itself before it writes. Without a quorum, KV writes fail, renewals fail,
and the holder stops being `held` once its last renewal expires: no split brain.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
from nats.errors import Error as NatsError
from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from libs.clock import Clock, wall_clock
from libs.logging import Logger, get_logger

LEASE_BUCKET = "bulwark-leases"
DEFAULT_TTL_S = 10.0


def lease_key(name: str) -> str:
    """KV key of the lease named `name` (e.g. `position`, `strategy-imbalance`)."""
    return f"lease.{name}"


class LeaseLost(RuntimeError):
    """This process does not hold the lease (any more): it must not write."""


class StaleFencingToken(RuntimeError):
    """A write carried a fencing token older than one already seen: its holder lost the lease."""


class LeaseRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The value of a lease key."""

    holder: str
    expires_ns: int
    acquired_ns: int


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(LeaseRecord)


@dataclass(frozen=True)
class LeaseView:
    """What the KV currently says about a lease."""

    record: LeaseRecord | None
    revision: int


class Lease:
    """One candidate for a single-writer lease.

    Args:
        kv: the lease bucket (`await bus.kv(LEASE_BUCKET)`).
        name: the lease's name (one per singleton writer).
        holder: this candidate's unique id (e.g. `host-pid`).
        ttl_s: how long an acquisition or renewal is good for.
        clock: integer ns wall clock (shared notion of time across candidates; keep the TTL
            well above any clock skew between hosts).
        log: logger.
    """

    def __init__(
        self,
        kv: KeyValue,
        name: str,
        holder: str,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Clock = wall_clock,
        log: Logger | None = None,
    ) -> None:
        self.kv = kv
        self.name = name
        self.key = lease_key(name)
        self.holder = holder
        self.ttl_ns = int(ttl_s * 1e9)
        self._clock = clock
        self.log = log or get_logger("lease")
        self.token: int | None = None
        """Fencing token: the revision of our latest successful write of the key (None: not held)."""
        self._valid_until_ns = 0
        self._acquired_ns = 0

    @property
    def held(self) -> bool:
        """True while we hold the lease by our own clock (acquired/renewed and not yet expired)."""
        return self.token is not None and self._clock() < self._valid_until_ns

    async def read(self) -> LeaseView:
        """The lease's current record and revision (record None: free)."""
        try:
            entry = await self.kv.get(self.key)
        except KeyDeletedError as exc:
            return LeaseView(None, exc.entry.revision or 0 if exc.entry is not None else 0)
        except KeyNotFoundError:
            return LeaseView(None, 0)
        if entry.value is None:
            return LeaseView(None, entry.revision or 0)
        try:
            record = _decoder.decode(entry.value)
        except msgspec.DecodeError as exc:  # a garbled value must not block the lease forever
            self.log.error("lease_value_corrupt", lease=self.name, error=str(exc)[:200], action_taken="treated as free")
            return LeaseView(None, entry.revision or 0)
        return LeaseView(record, entry.revision or 0)

    def _value(self, now: int) -> bytes:
        return _encoder.encode(LeaseRecord(holder=self.holder, expires_ns=now + self.ttl_ns, acquired_ns=now))

    async def try_acquire(self) -> int | None:
        """Take the lease if it is free, expired, or already ours.

        Returns:
            The fencing token, or None when another holder has it.
        """
        view = await self.read()
        now = self._clock()
        record = view.record
        if record is not None and record.holder != self.holder and now < record.expires_ns:
            return None
        try:
            if view.revision == 0:
                revision = await self.kv.create(self.key, self._value(now))
            else:
                revision = await self.kv.update(self.key, self._value(now), last=view.revision)
        except KeyWrongLastSequenceError:
            return None  # someone else wrote it between our read and our write: they won
        previous = record.holder if record is not None else None
        self._set(revision, now)
        self._acquired_ns = now
        self.log.info("lease_acquired", lease=self.name, holder=self.holder, token=revision, previous=previous)
        return revision

    def _set(self, revision: int, now: int) -> None:
        self.token = revision
        self._valid_until_ns = now + self.ttl_ns

    async def renew(self) -> int:
        """Extend the lease; returns the new fencing token.

        Raises:
            LeaseLost: not held, or another holder wrote the key since our last write.
        """
        if self.token is None:
            raise LeaseLost(f"lease {self.name} not held")
        now = self._clock()
        try:
            revision = await self.kv.update(self.key, self._value(now), last=self.token)
        except KeyWrongLastSequenceError as exc:
            self._lose("taken over by another holder")
            raise LeaseLost(f"lease {self.name} taken over") from exc
        self._set(revision, now)
        return revision

    async def ensure_held(self) -> int:
        """Check against the KV, right before a write, that we still hold the lease.

        Returns:
            The current fencing token, to attach to the write.

        Raises:
            LeaseLost: expired by our clock, or the key's revision is no longer ours.
        """
        if self.token is None or not self.held:
            raise LeaseLost(f"lease {self.name} not held (expired or never acquired)")
        view = await self.read()
        if view.revision != self.token or view.record is None or view.record.holder != self.holder:
            self._lose("key written by another holder")
            raise LeaseLost(f"lease {self.name} held by another holder")
        return self.token

    async def release(self) -> None:
        """Give the lease up (graceful stop) so a successor need not wait for the expiry."""
        if self.token is None:
            return
        token, self.token = self.token, None
        try:
            await self.kv.delete(self.key, last=token)
        except (KeyWrongLastSequenceError, NatsError, TimeoutError) as exc:
            self.log.warning("lease_release_failed", lease=self.name, error=str(exc)[:200])
            return
        self.log.info("lease_released", lease=self.name, holder=self.holder)

    def _lose(self, reason: str) -> None:
        if self.token is not None:
            self.log.warning(
                "lease_lost", lease=self.name, holder=self.holder, reason=reason, action_taken="stop writing"
            )
        self.token = None
        self._valid_until_ns = 0

    async def keep(
        self,
        *,
        on_acquired: Callable[[int], Awaitable[None] | None] | None = None,
        on_lost: Callable[[], Awaitable[None] | None] | None = None,
        interval_s: float | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Forever: acquire when possible, renew every `ttl/3`, report gains and losses.

        A failed renewal that is not a takeover (bus down, no quorum) is retried; the lease
        still stops being `held` when its last renewal expires.
        """
        interval = interval_s if interval_s is not None else self.ttl_ns / 3e9
        while True:
            was_held = self.held
            try:
                if self.token is None:
                    if await self.try_acquire() is not None and on_acquired is not None:
                        await _maybe_await(on_acquired(self.token or 0))
                else:
                    await self.renew()
            except LeaseLost:
                pass
            except (NatsError, TimeoutError, OSError) as exc:
                self.log.warning("lease_renew_failed", lease=self.name, error=f"{type(exc).__name__}: {exc}")
            if was_held and not self.held:
                if self.token is not None:
                    self._lose("renewals failed until expiry")
                if on_lost is not None:
                    await _maybe_await(on_lost())
            await sleep(interval)


async def _maybe_await(result: Awaitable[None] | None) -> None:
    if result is not None:
        await result


class Fence:
    """The resource side of fencing: refuse writes whose token is older than one already seen.

    Pure: keep one per guarded resource (or persist `highest` beside it) and call `admit` with
    the token each write carries.
    """

    def __init__(self, highest: int = 0) -> None:
        self.highest = highest

    def admit(self, token: int) -> None:
        """Accept a write fenced by `token`.

        Raises:
            StaleFencingToken: a newer holder has written already.
        """
        if token < self.highest:
            raise StaleFencingToken(f"token {token} < {self.highest}: writer lost its lease")
        self.highest = token

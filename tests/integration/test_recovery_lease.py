"""Single-writer lease on a real nats-server KV: one holder at a time, takeover after expiry,
the stale holder's renewals and fenced writes refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from nats.js.kv import KeyValue

from libs.bus import Bus
from libs.clock import ManualClock
from libs.lease import LEASE_BUCKET, Fence, Lease, LeaseLost, StaleFencingToken

S = 1_000_000_000


@pytest_asyncio.fixture
async def kv(nats_url: str) -> AsyncIterator[KeyValue]:
    bus = Bus("lease-test")
    await bus.connect(nats_url)
    try:
        yield await bus.kv(LEASE_BUCKET)
    finally:
        await bus.close()


async def test_acquire_when_two_candidates_then_only_one_holds(kv: KeyValue) -> None:
    clock = ManualClock(1_700_000_000 * S)
    first = Lease(kv, "position", "a", ttl_s=10, clock=clock)
    second = Lease(kv, "position", "b", ttl_s=10, clock=clock)
    token = await first.try_acquire()
    assert token is not None and first.held
    assert await second.try_acquire() is None
    assert not second.held
    assert await first.ensure_held() == token
    renewed = await first.renew()
    assert renewed > token
    assert await second.try_acquire() is None


async def test_acquire_when_holder_expired_then_taken_over_and_stale_holder_refused(kv: KeyValue) -> None:
    clock = ManualClock(1_700_000_000 * S)
    first = Lease(kv, "position", "a", ttl_s=10, clock=clock)
    second = Lease(kv, "position", "b", ttl_s=10, clock=clock)
    fence = Fence()
    old_token = await first.try_acquire()
    assert old_token is not None
    fence.admit(old_token)

    clock.now += 11 * S  # `a` paused past its TTL without renewing
    assert not first.held
    new_token = await second.try_acquire()
    assert new_token is not None and new_token > old_token
    fence.admit(new_token)

    with pytest.raises(LeaseLost):
        await first.renew()  # its expected revision is gone: the takeover wins
    with pytest.raises(LeaseLost):
        await first.ensure_held()
    with pytest.raises(StaleFencingToken):
        fence.admit(old_token)  # a write `a` had in flight with its old token
    assert await second.ensure_held() == new_token


async def test_acquire_when_both_race_on_expired_lease_then_exactly_one_wins(kv: KeyValue) -> None:
    clock = ManualClock(1_700_000_000 * S)
    holder = Lease(kv, "strategy-x", "old", ttl_s=1, clock=clock)
    assert await holder.try_acquire() is not None
    clock.now += 2 * S
    a = Lease(kv, "strategy-x", "a", ttl_s=10, clock=clock)
    b = Lease(kv, "strategy-x", "b", ttl_s=10, clock=clock)
    # Concurrently: both may read the expired record before either writes; the compare-and-set
    # on the revision lets exactly one through.
    results = await asyncio.gather(a.try_acquire(), b.try_acquire())
    assert sum(result is not None for result in results) == 1


async def test_release_when_graceful_then_successor_acquires_at_once(kv: KeyValue) -> None:
    clock = ManualClock(1_700_000_000 * S)
    first = Lease(kv, "position", "a", ttl_s=60, clock=clock)
    second = Lease(kv, "position", "b", ttl_s=60, clock=clock)
    assert await first.try_acquire() is not None
    await first.release()
    assert not first.held
    assert await second.try_acquire() is not None


async def test_acquire_when_same_id_restarted_then_taken_back_at_once_and_old_process_fenced(kv: KeyValue) -> None:
    # `bulwark up` restarts a killed program under the same instance id: no wait for its own lease.
    clock = ManualClock(1_700_000_000 * S)
    before_kill = Lease(kv, "position", "position@host", ttl_s=60, clock=clock)
    old_token = await before_kill.try_acquire()
    assert old_token is not None
    clock.now += 1 * S  # far inside the TTL
    restarted = Lease(kv, "position", "position@host", ttl_s=60, clock=clock)
    new_token = await restarted.try_acquire()
    assert new_token is not None and new_token > old_token
    # Had the old process survived (hung, not dead), its next write or renewal is refused.
    with pytest.raises(LeaseLost):
        await before_kill.ensure_held()
    with pytest.raises(LeaseLost):
        await before_kill.renew()
    assert await restarted.ensure_held() == new_token
    # Another id still waits for the TTL.
    assert await Lease(kv, "position", "position@other", ttl_s=60, clock=clock).try_acquire() is None

"""The user-data stream's listen key: a `listenKeyExpired` event and a keep-alive the venue refuses
(-1125) both get a new key and a new connection (whose reconciliation queries every live order),
and the keep-alive runs well inside the key's 60 minutes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from libs.binance.errors import VenueError
from services.position.venue_sync import LISTEN_KEY_KEEPALIVE_NS
from tests.unit.test_position_venue_link import FakeBus, FakeVenue, service

MINUTE_NS = 60 * 1_000_000_000


class KeyedVenue(FakeVenue):
    def __init__(self, keepalive: list[BaseException | None]) -> None:
        super().__init__()
        self.keys = 0
        self.keepalive_answers = keepalive

    async def new_listen_key(self) -> str:
        self.keys += 1
        return f"key-{self.keys}"

    async def keepalive_listen_key(self) -> None:
        self.calls.append("keepalive")
        answer = self.keepalive_answers.pop(0) if self.keepalive_answers else None
        if answer is not None:
            raise answer


async def _run_until(task_coro: Any, done: asyncio.Event) -> None:
    task = asyncio.create_task(task_coro)
    try:
        await asyncio.wait_for(done.wait(), 10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_keepalive_period_when_read_then_well_inside_the_keys_60_minutes() -> None:
    assert LISTEN_KEY_KEEPALIVE_NS <= 30 * MINUTE_NS


async def test_user_stream_when_listen_key_expired_event_then_new_key_and_a_reconciling_reconnect() -> None:
    venue = KeyedVenue([])
    svc = service(venue, FakeBus())
    keys: list[str] = []
    second = asyncio.Event()

    async def stream(ws_base: str, listen_key: str, on_open: Callable[[], Any]) -> Any:
        keys.append(listen_key)
        await on_open()
        if len(keys) == 1:
            svc.core.reconciled = True  # as the reconciliation after opening makes it
            yield {"e": "listenKeyExpired", "E": 1, "listenKey": listen_key}
            await asyncio.Event().wait()  # the connection stays open, but delivers nothing more
        second.set()
        await asyncio.Event().wait()
        yield {}

    await _run_until(svc.venue_sync.user_stream_forever(["ws://main"], stream), second)
    assert keys == ["key-1", "key-2"], "the expired key must be replaced, not reused"
    assert not svc.core.reconciled, "the new connection must reconcile (query every live order)"
    assert svc.venue_sync.keys_renewed == 1


async def test_keepalive_when_venue_refuses_the_key_then_stream_reconnected_with_a_new_key() -> None:
    venue = KeyedVenue([VenueError(400, -1125, "This listenKey does not exist.")])
    svc = service(venue, FakeBus())
    keys: list[str] = []
    first_up, second = asyncio.Event(), asyncio.Event()

    async def stream(ws_base: str, listen_key: str, on_open: Callable[[], Any]) -> Any:
        keys.append(listen_key)
        await on_open()
        (first_up if len(keys) == 1 else second).set()
        await asyncio.Event().wait()  # up and silent
        yield {}

    task = asyncio.create_task(svc.venue_sync.user_stream_forever(["ws://main"], stream))
    try:
        await asyncio.wait_for(first_up.wait(), 10)
        now = svc.venue_sync.last_keepalive_ns
        await svc.venue_sync.keep_listen_key(now + LISTEN_KEY_KEEPALIVE_NS - 1)
        assert venue.calls.count("keepalive") == 0, "not due yet"
        await svc.venue_sync.keep_listen_key(now + LISTEN_KEY_KEEPALIVE_NS)
        await asyncio.wait_for(second.wait(), 10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert venue.calls.count("keepalive") == 1
    assert keys == ["key-1", "key-2"]


async def test_keepalive_when_venue_fails_otherwise_then_error_raised_and_stream_kept() -> None:
    venue = KeyedVenue([VenueError(503, -1001, "down")])
    svc = service(venue, FakeBus())
    svc.core.user_stream_up = True
    try:
        await svc.venue_sync.keep_listen_key(LISTEN_KEY_KEEPALIVE_NS)
    except VenueError as exc:
        assert exc.code == -1001
    else:
        raise AssertionError("a failed keep-alive must be reported (the next round tries again)")
    assert not svc.venue_sync.renew_key.is_set()

"""market-data's stream link against the venue simulator: FM-D1 sees every silence of the venue,
also one hidden behind a backlog of older frames (SPEC FM-D1, FM-N1).

Real processes and servers as in `test_md_faults`: the simulator is a subprocess, nats-server is
fresh per test, market-data and state-builder run in-process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from entrypoints.harness.venue import running_venue_sim
from libs.binance.stream import CombinedStream, StreamFrame
from proto import subjects
from proto.codec import decode
from services.market_data import adapters
from tests.integration.test_md_faults import SYMBOL, Harness, _settings, _start

pytestmark = pytest.mark.timeout(180)


class SlowStream:
    """A real combined stream whose trade frames each take market-data `delay_s` more: a
    market-data that cannot keep up with a burst of trades (CPU starved), so unread frames pile
    up in front of it while the depth diffs between them still come several times a second."""

    delay_s = 0.0

    def __init__(self, inner: CombinedStream) -> None:
        self.inner = inner

    async def connect(self) -> None:
        await self.inner.connect()

    async def close(self) -> None:
        await self.inner.close()

    def __aiter__(self) -> AsyncIterator[StreamFrame]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[StreamFrame]:
        async for frame in self.inner:
            if SlowStream.delay_s and frame.stream is not None and "@aggTrade" in frame.stream:
                await asyncio.sleep(SlowStream.delay_s)
            yield frame


@pytest.fixture
def venue_url(tmp_path: Path) -> Iterator[str]:
    # The default recordings at 5x, as `make run ARGS="--venue-speed 5"`: about 175 frames a second.
    with running_venue_sim(tmp_path, "--speed", "5") as url:
        yield url


@pytest.fixture
def unrouted_venue_url(tmp_path: Path) -> Iterator[str]:
    # Every stream on one connection (`any` routing): a backlog of trades delays the diffs behind it.
    with running_venue_sim(tmp_path, "--speed", "5", "--stream-routing", "any") as url:
        yield url


@pytest_asyncio.fixture
async def slow_harness(
    nats_url: str, unrouted_venue_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Harness]:
    """market-data on one un-routed connection (`BULWARK_VENUE_WS_ROUTED=false`), so that slow
    trade frames hold back the depth diffs queued behind them on the same socket."""
    real = adapters.market_stream
    SlowStream.delay_s = 0.0
    monkeypatch.setattr(adapters, "market_stream", lambda *args, **kwargs: SlowStream(real(*args, **kwargs)))
    venue_url = unrouted_venue_url
    settings = replace(_settings(nats_url, venue_url), venue_ws_routed=False)
    async for harness in _start(nats_url, settings, venue_url):
        yield harness
    SlowStream.delay_s = 0.0


reasons: list[str] = []
"""Every hot-state transition's reason, for the failure messages."""


async def _hot_states(harness: Harness) -> list[tuple[float, str, str]]:
    seen: list[tuple[float, str, str]] = []

    async def record(msg: Any) -> None:
        message = decode(msg.data)
        seen.append((time.monotonic(), message.symbol, message.current.value))
        reasons.append(f"{message.symbol} {message.current.value}: {message.reason}")

    await harness.bus.subscribe_core(subjects.EVT_HOT_STATE_ALL, record)
    return seen


async def test_ws_stall_when_market_data_works_through_a_backlog_then_still_not_valid_within_5s(
    slow_harness: Harness,
) -> None:
    harness = slow_harness
    hot = await _hot_states(harness)
    await harness.wait_valid(30)
    # market-data falls behind the venue: each trade frame now takes 15 ms (the venue sends about
    # 150 a second), so a backlog of older frames builds up in front of it: after 8 s, more than
    # the 5 s below can work through. Each symbol's diffs are still handled several times a second.
    SlowStream.delay_s = 0.015
    await asyncio.sleep(8.0)
    stalled = time.monotonic()
    await harness.fault(kind="ws_stall", duration_s=3)
    # The venue is silent for 3 s, but market-data keeps handing over frames from its backlog:
    # each is stored on the stream just now, yet its data is from before the silence.
    await asyncio.sleep(5.0)
    mine = [(at, state) for at, symbol, state in hot if symbol == SYMBOL]
    at_stall = [state for at, state in mine if at <= stalled][-1:] or ["VALID"]
    during = [state for at, state in mine if stalled < at <= stalled + 5.0]
    assert at_stall != ["VALID"] or any(state != "VALID" for state in during), f"{SYMBOL} VALID all through: {during}"
    # Caught up again, the symbol is VALID on fresh data, and the book is the venue's.
    SlowStream.delay_s = 0.0
    await harness.wait_valid(60)


@pytest_asyncio.fixture
async def aging_harness(nats_url: str, venue_url: str) -> AsyncIterator[Harness]:
    """market-data whose stream connections are replaced at 3 s of age instead of 23 h."""
    settings = replace(_settings(nats_url, venue_url), md_ws_max_age_s=3.0)
    async for harness in _start(nats_url, settings, venue_url):
        yield harness


async def test_connection_when_older_than_its_max_age_then_replaced_without_stale_resync_or_gap(
    aging_harness: Harness,
) -> None:
    """Binance closes a stream connection after 24 h; market-data replaces it before, make before
    break. With a max age of 3 s the connection is replaced several times within 14 s, and every
    time the books go on: no symbol leaves VALID, no resync, the link stays CONNECTED, and the
    served book is the venue's."""
    harness = aging_harness
    hot = await _hot_states(harness)
    handovers: list[int] = []

    async def heartbeat(msg: Any) -> None:
        handovers.append(int(decode(msg.data).details.get("ws_handovers", 0)))

    await harness.bus.subscribe_core(subjects.heartbeat(subjects.MARKET_DATA), heartbeat)
    await harness.wait_valid(30)
    await harness.until(lambda: harness.links()[-1:] == ["CONNECTED"], timeout_s=20)
    await harness.until(lambda: _last_state(hot, SYMBOL) == _last_state(hot, "ETHUSDT") == "VALID", timeout_s=20)
    settled = time.monotonic()
    harness.events.clear()
    first = max(handovers, default=0)
    while time.monotonic() - settled < 14.0:
        await harness.assert_valid_book_is_true()
        await asyncio.sleep(0.2)
    assert max(handovers, default=0) - first >= 2, f"handovers seen: {sorted(set(handovers))}"
    assert [(round(at - settled, 2), symbol, state) for at, symbol, state in hot if at >= settled] == [], reasons
    assert not [subject for subject, _ in harness.events if subject.startswith("md.resync.")]
    assert harness.links() == [] and harness.links("market-rest") == []
    assert await harness.assert_valid_book_is_true()


def _last_state(hot: list[tuple[float, str, str]], symbol: str) -> str | None:
    states = [state for _, name, state in hot if name == symbol]
    return states[-1] if states else None

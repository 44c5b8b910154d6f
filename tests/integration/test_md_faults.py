"""market-data under the venue simulator's injected faults (SPEC FM-N1..N5, FM-D2..D5).

Real processes and servers: the simulator is a subprocess (stopped by pid), nats-server is fresh
per test, market-data and state-builder run in-process. Every test injects faults through
`POST /_sim/faults`, then asserts detection (events, link states, flags, alerts), the response and
recovery, and that a book served as VALID always equals the venue's true book at its update id.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec
import pytest
import pytest_asyncio
from aiohttp.abc import AbstractResolver, ResolveResult
from nats import errors as nats_errors

from entrypoints.harness.venue import running_venue_sim
from entrypoints.infra import free_port
from libs.binance.client import BinanceRestClient, CachingResolver
from libs.binance.errors import VenueUnreachable
from libs.bus import Bus
from libs.recordings import RECORDINGS_DIR
from libs.settings import Settings
from proto import subjects
from proto.codec import decode
from services.market_data import main as market_data_main
from services.state_builder import main as state_builder_main
from tests.support.polling import eventually

SYMBOL = "BTCUSDT"
VENUE = "binance-usdm"
REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


@dataclass
class Harness:
    bus: Bus
    http: aiohttp.ClientSession
    venue: str
    events: list[tuple[str, Any]] = field(default_factory=list)

    def seen(self, predicate: Callable[[str, Any], bool]) -> list[Any]:
        return [message for subject, message in self.events if predicate(subject, message)]

    def links(self, link: str = "market-ws") -> list[str]:
        return [m.current.value for s, m in self.events if s == f"evt.link.{VENUE}.{link}"]

    def flags(self) -> set[tuple[str, str]]:
        return {(m.check, m.verdict) for s, m in self.events if s.startswith("md.flag.")}

    def alerts(self) -> set[str]:
        return {m.key for s, m in self.events if s == subjects.EVT_ALERT_RAISED}

    async def fault(self, **spec: Any) -> str:
        async with self.http.post(f"{self.venue}/_sim/faults", json=spec) as response:
            assert response.status == 200, await response.text()
            return str((await response.json())["id"])

    async def fault_view(self, fault_id: str) -> dict:
        async with self.http.get(f"{self.venue}/_sim/faults") as response:
            return next(f for f in (await response.json())["faults"] if f["id"] == fault_id)

    async def clear(self) -> None:
        async with self.http.delete(f"{self.venue}/_sim/faults") as response:
            assert response.status == 200

    async def resync(self) -> None:
        await self.bus.request(subjects.SVC_MARKET_DATA_RESYNC, b'{"symbol": "BTCUSDT"}')

    async def book(self, symbol: str = SYMBOL) -> dict:
        reply = await self.bus.request(
            subjects.SVC_STATE_BUILDER_BOOK, msgspec.json.encode({"symbol": symbol, "depth": 20})
        )
        return msgspec.json.decode(reply)

    async def assert_valid_book_is_true(self, symbol: str = SYMBOL) -> bool:
        """When the served book is VALID it equals the venue's book at the same update id."""
        served = await self.book(symbol)
        if served.get("status") != "VALID":
            return False
        params = {"depth": "20", "update_id": str(served["last_update_id"])}
        async with self.http.get(f"{self.venue}/_sim/book/{symbol}", params=params) as response:
            if response.status == 404:  # older than the simulator's history: nothing to compare
                return True
            truth = await response.json()
        assert served["bids"] == truth["bids"] and served["asks"] == truth["asks"], "VALID book differs from venue"
        return True

    async def wait_valid(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            # Bus hiccups are retried; a VALID book that differs from the venue fails at once.
            with contextlib.suppress(TimeoutError, nats_errors.Error, aiohttp.ClientError):
                if await self.assert_valid_book_is_true():
                    return
            await asyncio.sleep(0.1)
        served = {}
        with contextlib.suppress(TimeoutError, nats_errors.Error):
            served = await self.book()
        served.pop("bids", None), served.pop("asks", None)
        raise AssertionError(f"not VALID within {timeout_s}s; links {self.links()}; served {served}")

    async def until(self, condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
        def seen() -> str:
            return f"condition not met; links {self.links()} rest {self.links('market-rest')}"

        await eventually(condition, timeout_s, seen, interval_s=0.05)


@pytest.fixture
def venue_url(tmp_path: Path) -> Iterator[str]:
    with running_venue_sim(tmp_path) as url:
        yield url


async def _start(nats_url: str, settings: Settings, venue_url: str) -> AsyncIterator[Harness]:
    tasks = [
        asyncio.create_task(market_data_main.run(settings), name="market-data"),
        asyncio.create_task(state_builder_main.run(settings), name="state-builder"),
    ]
    bus = Bus("md-faults-test")
    await bus.connect(nats_url)
    async with aiohttp.ClientSession() as http:
        harness = Harness(bus, http, venue_url)

        async def record(msg: Any) -> None:
            with contextlib.suppress(Exception):
                harness.events.append((msg.subject, decode(msg.data)))

        for subject in ("evt.link.>", "evt.breaker.>", "evt.alert.>", "md.flag.>", "md.resync.>"):
            await bus.subscribe_core(subject, record)
        try:
            yield harness
        finally:
            await bus.close()
            pending = set(tasks)
            for _ in range(10):
                # Python 3.11's wait_for can swallow a cancellation (seen in the bus consume loop),
                # so a task still running after a cancel is cancelled again.
                for task in pending:
                    task.cancel()
                done, pending = await asyncio.wait(pending, timeout=2)
                if not pending:
                    break
            done = set(tasks) - pending
            if pending:  # pragma: no cover - diagnostics of a stuck shutdown
                import sys

                for other in asyncio.all_tasks():
                    other.print_stack(file=sys.stderr)
            for task in done:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            assert not pending, f"services did not stop: {pending}"


def _settings(nats_url: str, venue_url: str) -> Settings:
    return Settings(
        nats_url=nats_url,
        venue_rest_url=venue_url,
        venue_ws_url=venue_url.replace("http://", "ws://"),
        symbols=(SYMBOL, "ETHUSDT"),
        log_level="WARNING",
    )


@pytest_asyncio.fixture
async def harness(nats_url: str, venue_url: str) -> AsyncIterator[Harness]:
    async for value in _start(nats_url, _settings(nats_url, venue_url), venue_url):
        yield value


async def test_stream_faults_when_depth_dropped_duplicated_reordered_or_mistimed_then_never_a_wrong_valid_book(
    harness: Harness,
) -> None:
    await harness.wait_valid(30)
    for spec in (
        {"kind": "duplicate_depth", "symbol": SYMBOL, "count": 3},
        {"kind": "reorder_depth", "symbol": SYMBOL},
        {"kind": "drop_depth", "symbol": SYMBOL},
        {"kind": "future_ts", "symbol": SYMBOL, "count": 3},
        {"kind": "backward_ts", "symbol": SYMBOL},
        {"kind": "corrupt", "symbol": SYMBOL, "params": {"mode": "random"}},
    ):
        await harness.fault(**spec)
        for _ in range(10):  # sample while the fault plays out: VALID must always be the truth
            await harness.assert_valid_book_is_true()
            await asyncio.sleep(0.1)
        await harness.wait_valid()
    await harness.until(lambda: {("future_ts", "rejected"), ("backward_ts", "suspect")} <= harness.flags())
    assert f"md.future_ts.{SYMBOL}" in harness.alerts()
    assert any(s == f"md.resync.{VENUE}.{SYMBOL}" for s, _ in harness.events)  # drop/reorder caught


async def test_corrupt_when_persistent_then_link_degraded_alert_and_service_survives(harness: Harness) -> None:
    await harness.wait_valid(30)
    await harness.fault(kind="corrupt", duration_s=6, params={"mode": "random", "channel": "any"})
    await harness.until(lambda: "DEGRADED" in harness.links(), timeout_s=20)
    # The link event and the alert are separate publishes: wait for both, not for their order.
    await harness.until(lambda: f"md.corruption.{VENUE}" in harness.alerts(), timeout_s=10)
    await harness.clear()
    # The link stays degraded until the rolling rate falls, but the book is rebuilt and exact.
    await harness.wait_valid()


async def test_price_spike_when_rest_mark_disagrees_then_rejected_and_flagged(harness: Harness) -> None:
    await harness.wait_valid(30)
    await asyncio.sleep(1.5)  # a few marks for the reference
    await harness.fault(kind="price_spike", symbol=SYMBOL, params={"pct": 30, "direction": "up"})
    await harness.until(lambda: ("price_jump", "rejected") in harness.flags(), timeout_s=10)
    assert ("price_jump", "confirmed") not in harness.flags()


async def test_rate_limits_when_429_then_throttled_and_recovers_and_418_sends_nothing_during_ban(
    harness: Harness,
) -> None:
    await harness.wait_valid(30)
    await harness.fault(kind="http_429", count=3, params={"retry_after_s": 1})
    await harness.resync()
    await harness.until(lambda: "SUSPECT" in harness.links("market-rest") or "DEGRADED" in harness.links("market-rest"))
    await harness.wait_valid()

    ban = await harness.fault(kind="http_418", count=5, params={"retry_after_s": 4})
    await harness.resync()
    await harness.until(lambda: f"md.ip_banned.{VENUE}" in harness.alerts(), timeout_s=10)
    await asyncio.sleep(2.0)
    assert (await harness.fault_view(ban))["used"] == 1  # nothing reached the venue during the ban
    assert "DEGRADED" in harness.links("market-rest")
    entry = await harness.bus.kv_get(subjects.key_ratelimit_ban(VENUE))  # shared with every process
    assert entry is not None and msgspec.json.decode(entry[0])["status"] == 418
    await harness.clear()
    await harness.wait_valid(20)


async def test_http_5xx_when_repeated_then_venue_breaker_opens(harness: Harness) -> None:
    await harness.wait_valid(30)
    await harness.fault(kind="http_5xx", count=8)
    await harness.resync()
    await harness.until(
        lambda: any(s == f"evt.breaker.venue.{VENUE}" and m.current == "OPEN" for s, m in harness.events)
    )
    # The alert and the link's state are separate messages that may arrive after the breaker event.
    await harness.until(lambda: f"md.breaker.venue.{VENUE}" in harness.alerts())
    await harness.until(lambda: "DISCONNECTED" in harness.links("market-rest"))
    entry = await harness.bus.kv_get(subjects.key_breaker(f"venue.{VENUE}"))
    assert entry is not None and msgspec.json.decode(entry[0])["state"] == "OPEN"


async def _disconnect_and_recover(harness: Harness, *specs: dict[str, Any]) -> None:
    await harness.wait_valid(30)
    await harness.until(lambda: "CONNECTED" in harness.links())
    for spec in specs:
        harness.events.clear()
        await harness.fault(**spec)
        if spec["kind"] == "refuse_connections":
            await harness.fault(kind="ws_close")  # the open socket goes too; reconnects are refused
        await harness.until(lambda: "DISCONNECTED" in harness.links(), timeout_s=12)
        await harness.until(lambda: harness.links()[-1:] == ["CONNECTED"], timeout_s=20)
        await harness.wait_valid()


@pytest.mark.parametrize(
    "spec",
    [
        # The running system's e2e tests cover a closed stream and an outage in CI; here they are slow.
        pytest.param({"kind": "ws_close", "params": {"abrupt": True}}, id="ws_close", marks=pytest.mark.slow),
        pytest.param({"kind": "outage", "duration_s": 1.5}, id="outage", marks=pytest.mark.slow),
        pytest.param({"kind": "refuse_connections", "duration_s": 1.5}, id="refuse_connections"),
    ],
)
async def test_connection_faults_when_closed_refused_or_outage_then_disconnected_and_recovered(
    harness: Harness, spec: dict[str, Any]
) -> None:
    await _disconnect_and_recover(harness, spec)


async def test_outage_when_lifted_then_stream_reconnects_at_once_not_at_next_scheduled_attempt(
    harness: Harness,
) -> None:
    await harness.wait_valid(30)
    await harness.until(lambda: "CONNECTED" in harness.links())
    harness.events.clear()
    await harness.fault(kind="outage")
    await harness.until(lambda: "DISCONNECTED" in harness.links(), timeout_s=12)
    # Attempts at 0, 1 and 3 s fail; on the SPEC schedule alone the next one is at about 7 s.
    await asyncio.sleep(3.5)
    harness.events.clear()
    lifted_ns = time.time_ns()
    await harness.clear()
    await harness.until(lambda: "SUSPECT" in harness.links(), timeout_s=10)
    reconnected_ns = min(
        m.ts_event_ns for s, m in harness.events if s == f"evt.link.{VENUE}.market-ws" and m.current.value == "SUSPECT"
    )
    # Generous bound (probe every 0.3 s + connect); the next scheduled attempt would be ~3.5 s away.
    assert (reconnected_ns - lifted_ns) / 1e9 <= 1.5, f"reconnected {(reconnected_ns - lifted_ns) / 1e9:.2f}s after"
    await harness.until(lambda: harness.links()[-1:] == ["CONNECTED"], timeout_s=20)
    await harness.wait_valid()


@pytest.mark.slow  # the running system's e2e stall test covers it in CI
async def test_ws_stall_when_silent_then_disconnected_and_recovered_after_stall(harness: Harness) -> None:
    await _disconnect_and_recover(harness, {"kind": "ws_stall", "duration_s": 6})


async def test_alternate_endpoints_when_main_urls_dead_then_alternates_used(nats_url: str, venue_url: str) -> None:
    dead = f"127.0.0.1:{free_port()}"
    settings = replace(
        _settings(nats_url, venue_url),
        venue_rest_url=f"http://{dead}",
        venue_ws_url=f"ws://{dead}",
        venue_rest_alternates=(venue_url,),
        venue_ws_alternates=(venue_url.replace("http://", "ws://"),),
    )
    async for harness in _start(nats_url, settings, venue_url):
        await harness.wait_valid(30)
        assert f"md.ws_endpoints_failed.{VENUE}" not in harness.alerts()


_BAN_WRITER = """
import asyncio, sys, time
from libs.bus import Bus
from libs.recordings import RECORDINGS_DIR
from libs.ratelimit import RateBudget, SharedBans

async def main() -> None:
    bus = Bus("ban-writer")
    await bus.connect(sys.argv[1])
    budget = RateBudget("binance-usdm", time.time_ns)
    shared = SharedBans(bus, budget, origin="ban-writer", clock_ns=time.time_ns)
    await shared.start()
    budget.on_banned(float(sys.argv[2]))  # what BinanceRestClient does with a 418 answer
    await shared.close()
    await bus.close()

asyncio.run(main())
"""


async def test_shared_ban_when_another_process_gets_418_then_budget_refuses_until_it_expires(nats_url: str) -> None:
    from libs.ratelimit import BudgetState, Priority, RateBudget, SharedBans

    bus = Bus("ban-reader")
    await bus.connect(nats_url)
    watching = RateBudget(VENUE, time.time_ns)
    shared = SharedBans(bus, watching, origin="reader", clock_ns=time.time_ns)
    try:
        await shared.start()
        assert watching.admit(Priority.ORDER).allowed
        writer = await asyncio.create_subprocess_exec(sys.executable, "-c", _BAN_WRITER, nats_url, "4", cwd=str(REPO))
        assert await asyncio.wait_for(writer.wait(), 60) == 0
        # Process A's ban reaches this budget live: nothing may be sent, orders included.
        await eventually(async_value(lambda: not watching.admit(Priority.ORDER).allowed), timeout_s=10)
        refused = watching.admit(Priority.ORDER)
        assert refused.reason.startswith("IP banned") and watching.state == BudgetState.BANNED
        # A process started during the ban reads it from the key at start.
        late = RateBudget(VENUE, time.time_ns)
        late_shared = SharedBans(bus, late, origin="late", clock_ns=time.time_ns)
        await late_shared.start()
        try:
            assert not late.admit(Priority.ORDER).allowed
            entry = await bus.kv_get(subjects.key_ratelimit_ban(VENUE))
            assert entry is not None and msgspec.json.decode(entry[0])["status"] == 418
            # ... and both send again once it has expired.
            await eventually(async_value(lambda: watching.admit(Priority.ORDER).allowed), timeout_s=15)
            assert late.admit(Priority.ORDER).allowed
        finally:
            await late_shared.close()
    finally:
        await shared.close()
        await bus.close()


def async_value(check: Callable[[], Any]) -> Callable[[], Any]:
    async def run() -> Any:
        return check()

    return run


SPOT_VENUE = "binance-spot"
SPOT_PATHS = [RECORDINGS_DIR / name for name in ("spot_btcusdt_20240808.gz", "spot_btcusdt_20240809.gz")]


async def _spot_stream_faults(harness: Harness) -> None:
    await harness.wait_valid(30)
    await asyncio.sleep(1.5)  # some trades for the price reference
    for spec in (
        {"kind": "duplicate_depth", "symbol": SYMBOL, "count": 3},
        {"kind": "reorder_depth", "symbol": SYMBOL},
        {"kind": "drop_depth", "symbol": SYMBOL},
        {"kind": "future_ts", "symbol": SYMBOL, "count": 3},
        {"kind": "backward_ts", "symbol": SYMBOL},
        {"kind": "corrupt", "symbol": SYMBOL, "params": {"mode": "random"}},
        {"kind": "price_spike", "symbol": SYMBOL, "params": {"pct": 30, "direction": "up"}},
    ):
        await harness.fault(**spec)
        for _ in range(10):  # sample while the fault plays out: VALID must always be the truth
            await harness.assert_valid_book_is_true()
            await asyncio.sleep(0.1)
        await harness.wait_valid()
    await harness.until(lambda: {("future_ts", "rejected"), ("backward_ts", "suspect")} <= harness.flags())
    # The spiked print disagrees with the REST last price (spot's second source): rejected.
    await harness.until(lambda: ("price_jump", "rejected") in harness.flags(), timeout_s=10)
    assert ("price_jump", "confirmed") not in harness.flags()
    jumps = [m.detail for s, m in harness.events if s.startswith("md.flag.") and m.check == "price_jump"]
    assert any("REST price" in detail and "disagrees" in detail for detail in jumps), jumps
    resyncs = {s for s, _ in harness.events if s.startswith("md.resync.")}
    assert resyncs == {f"md.resync.{SPOT_VENUE}.{SYMBOL}"}  # drop/reorder caught, under the spot name
    links = {s for s, _ in harness.events if s.startswith("evt.link.")}
    assert links <= {f"evt.link.{SPOT_VENUE}.market-ws", f"evt.link.{SPOT_VENUE}.market-rest"}
    # Spot has no mark price or open interest: nothing is compared or alerted about them.
    assert not any(key.startswith(("md.data_gap", "md.missed_liquidations")) for key in harness.alerts())


async def test_spot_faults_when_depth_dropped_reordered_mistimed_corrupt_or_spiked_then_detected_and_exact(
    nats_url: str, tmp_path: Path
) -> None:
    source = "replay:" + ",".join(str(path) for path in SPOT_PATHS)
    with running_venue_sim(tmp_path, "--source", source) as venue_url:
        settings = replace(_settings(nats_url, venue_url), symbols=(SYMBOL,), venue_market="spot")
        async for harness in _start(nats_url, settings, venue_url):
            await _spot_stream_faults(harness)


class _NameServer(AbstractResolver):
    """The name server of one made-up venue host, which can go down (FM-N3 injected below the HTTP
    client: the simulator cannot fail a lookup the client makes before it ever connects)."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.down = False
        self.lookups = 0

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups += 1
        if self.down or host != self.host:
            raise OSError(f"DNS: cannot resolve {host}")
        return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": socket.AF_INET, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        return None


async def test_dns_when_name_server_fails_then_last_good_address_then_alternates_else_unreachable(
    venue_url: str,
) -> None:
    """FM-N3 with the resolver market-data shares across its sessions: after one good lookup, a new
    session still reaches the venue by the cached address while DNS is down; a host never resolved
    falls back to the configured alternate endpoint, and without one it is unreachable (nothing sent)."""
    port = urlsplit(venue_url).port
    dns = _NameServer("venue.bulwark.test")
    resolver = CachingResolver(dns)
    async with BinanceRestClient(f"http://venue.bulwark.test:{port}", resolver=resolver) as client:
        assert await client.ping() == {}
    dns.down = True
    async with BinanceRestClient(f"http://venue.bulwark.test:{port}", resolver=resolver) as client:
        assert await client.ping() == {}, "the last good address must serve while DNS is down"
    assert resolver.fallbacks == 1 and dns.lookups == 2
    async with BinanceRestClient(
        f"http://other.bulwark.test:{port}", alternate_urls=[venue_url], resolver=resolver
    ) as client:
        assert await client.ping() == {}
        assert client.base_url == venue_url, "the alternate endpoint must have answered"
    async with BinanceRestClient(f"http://other.bulwark.test:{port}", resolver=resolver) as client:
        with pytest.raises(VenueUnreachable):
            await client.ping()

"""market-data's data-quality and link rules (SPEC FM-N1, FM-N3/N4, FM-D2..D5), pure and through
the service with fakes, plus a fuzz test of frame and REST parsing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.binance.endpoints import EndpointRotation
from libs.binance.errors import VenueError
from libs.binance.stream import StreamClosed, StreamFrame, parse_frame
from libs.breaker import CircuitBreaker
from libs.clock import ManualClock
from libs.logging import get_logger
from proto.enums import ConnectionState
from proto.messages import AlertRaised, BreakerStateChanged, LinkStateChanged, MarketDataFlagged, MarkPrice, Trade
from services.market_data import clock_offset, frames, link, quality, return_probe
from services.market_data.handlers import STREAM_LATENCY_SAMPLES, MarketDataService

S = 1_000_000_000
VENUE = "binance-usdm"


# --------------------------------------------------------------------------- pure rules


def test_market_link_state_when_conditions_combine_then_precedence_holds() -> None:
    state = link.market_link_state
    assert state(connected=False, failed_attempts=4, clean=False, degraded_reasons=()) == ConnectionState.DISCONNECTED
    assert state(connected=False, failed_attempts=5, clean=False, degraded_reasons=()) == ConnectionState.DEGRADED
    assert state(connected=True, failed_attempts=0, clean=False, degraded_reasons=()) == ConnectionState.SUSPECT
    assert state(connected=True, failed_attempts=0, clean=True, degraded_reasons=()) == ConnectionState.CONNECTED
    assert state(connected=True, failed_attempts=0, clean=True, degraded_reasons=("x",)) == ConnectionState.DEGRADED


def test_clean_window_when_3s_and_3_fresh_updates_per_symbol_then_clean() -> None:
    window = link.CleanWindow(("A", "B"))
    window.start(0)
    for i in range(3):
        window.on_update("A", i * S // 2)
        window.on_update("B", i * S // 2)
    assert not window.is_clean(2 * S)  # too early
    window.on_break("B")
    assert not window.is_clean(3 * S)
    for t in (4, 4.5, 6):  # 1.5 s apart: the run restarts
        window.on_update("B", int(t * S))
    assert not window.is_clean(6 * S)
    window.on_update("B", int(6.5 * S))
    window.on_update("B", int(7 * S))
    assert window.is_clean(7 * S)
    window.on_break("A")  # latched: a later resync does not make the link suspect
    assert window.is_clean(7.5 * S)
    window.start(8 * S)
    assert not window.is_clean(12 * S)


def test_endpoint_rotation_when_every_endpoint_fails_then_reported_and_last_good_kept() -> None:
    rotation = EndpointRotation(["a", "b"])
    assert rotation.on_failure() is False and rotation.current == "b"
    rotation.on_success()
    assert rotation.current == "b"
    assert rotation.on_failure() is False
    assert rotation.on_failure() is True


def test_corruption_monitor_when_rate_above_5_percent_then_degraded_and_recovers_below_half() -> None:
    monitor = quality.CorruptionMonitor(window_s=10, min_frames=40)
    results = [monitor.record(i * S // 100, bad=(i % 10 == 0)) for i in range(100)]  # 10 % bad
    assert True in results and monitor.degraded
    later = [monitor.record(20 * S + i * S // 100, bad=False) for i in range(100)]
    assert False in later and not monitor.degraded


def test_corruption_monitor_when_single_bad_frame_then_not_degraded() -> None:
    monitor = quality.CorruptionMonitor()
    assert all(monitor.record(i * S // 50, bad=(i == 5)) is None for i in range(200))


def test_timestamp_guard_when_future_or_backward_then_rejected_or_receive_time() -> None:
    guard = quality.TimestampGuard()
    now = 1_000_000 * S
    ok = guard.check("X@depth", now // 1_000_000, now)
    assert ok.verdict == quality.TimestampVerdict.OK
    future = guard.check("X@depth", now // 1_000_000 + 5_001, now)
    assert future.verdict == quality.TimestampVerdict.FUTURE and not future.repeated
    assert guard.check("X@depth", now // 1_000_000 + 9_000, now).repeated is False
    assert guard.check("X@depth", now // 1_000_000 + 9_000, now).repeated is True
    back = guard.check("X@depth", now // 1_000_000 - 1000, now + S)
    assert back.verdict == quality.TimestampVerdict.BACKWARD and back.ts_ns == now + S
    assert guard.check("X@depth", now // 1_000_000 + 4_000, now).verdict == quality.TimestampVerdict.OK


def test_clock_offset_when_above_1s_then_alert_above_5s_then_halt() -> None:
    monitor = clock_offset.ClockOffsetMonitor()
    base = 1_700_000_000_000
    assert monitor.on_sample(base * 1_000_000, base * 1_000_000 + 20_000_000, base + 10) is None
    assert monitor.on_sample(base * 1_000_000, base * 1_000_000, base + 1_500) == clock_offset.ClockLevel.ALERT
    assert monitor.on_sample(base * 1_000_000, base * 1_000_000, base - 6_000) == clock_offset.ClockLevel.HALT
    assert monitor.offset_ms == -6_000
    assert monitor.on_sample(base * 1_000_000, base * 1_000_000, base) == clock_offset.ClockLevel.OK


def test_price_sanity_when_jump_floor_or_zscore_then_warning_rejected_or_flag() -> None:
    checks = quality.PriceSanity(min_samples=10)
    for i in range(40):
        price = Decimal(100) + Decimal(i % 3) / 10
        assert checks.check(price) == []
        checks.accept(price)
    assert [f.check for f in checks.check(Decimal(125))] == ["price_jump"]
    assert checks.check(Decimal(125))[0].verdict == quality.Verdict.WARNING
    assert checks.check(Decimal(49))[0].verdict == quality.Verdict.REJECTED
    z = checks.check(Decimal("103"))
    assert [f.verdict for f in z] == [quality.Verdict.FLAG]
    checks.rebase(Decimal(125))
    assert checks.check(Decimal(126)) == []


def test_volume_and_oi_sanity_when_outsized_then_warnings_and_negative_oi_rejected() -> None:
    volume = quality.VolumeSanity(min_samples=5)
    for _ in range(5):
        assert volume.check(Decimal(1)) == []
    assert volume.check(Decimal(11))[0].check == "volume"
    oi = quality.OpenInterestSanity()
    assert oi.check(Decimal(100)) == []
    assert oi.check(Decimal(151))[0].check == "oi_change"
    assert oi.check(Decimal(-1))[0].verdict == quality.Verdict.REJECTED


def test_trade_sequence_when_gaps_then_backfill_below_10_and_resync_from_10() -> None:
    seq = quality.TradeSequence()
    assert seq.on_trade(100).action == quality.TradeAction.APPLY
    assert seq.on_trade(101).action == quality.TradeAction.APPLY
    assert seq.on_trade(101).action == quality.TradeAction.DUPLICATE
    small = seq.on_trade(111)  # 9 missing
    assert (small.action, small.missing_from, small.missing_to) == (quality.TradeAction.BACKFILL, 102, 110)
    assert seq.on_trade(122).action == quality.TradeAction.RESYNC  # 10 missing


def test_rest_parsers_when_answer_has_no_time_then_receive_time_used() -> None:
    received = 1_700_000_000 * S
    mark = frames.mark_from_premium_index(VENUE, "BTCUSDT", {"markPrice": "100"}, received)
    oi = frames.open_interest_from_rest(VENUE, "BTCUSDT", {"openInterest": "5"}, received)
    timed = frames.open_interest_from_rest(VENUE, "BTCUSDT", {"openInterest": "5", "time": 7}, received)
    assert (mark.ts_event_ns, oi.ts_event_ns, timed.ts_event_ns) == (received, received, 7_000_000)


def test_reconnect_findings_when_price_and_oi_moved_then_data_gap_and_missed_liquidations() -> None:
    found = quality.reconnect_findings(Decimal(100), Decimal(106), Decimal(1000), Decimal(1300))
    assert [check for check, _ in found] == ["data_gap", "missed_liquidations"]
    assert quality.reconnect_findings(Decimal(100), Decimal(104), Decimal(1000), Decimal(1100)) == []
    assert quality.reconnect_findings(None, Decimal(1), None, Decimal(1)) == []


# --------------------------------------------------------------------------- service with fakes


def start_clock() -> ManualClock:
    return ManualClock(1_700_000_000 * S)


class FakeRest:
    def __init__(self) -> None:
        self.mark = "100"
        self.depth_error: Exception | None = None
        self.agg_rows: list[dict] = []
        self.server_ms: int | None = None
        self.clock: ManualClock | None = None
        self.ping_down_until_ns = 0
        self.pings: list[int] = []

    async def depth(self, symbol: str, limit: int = 1000) -> dict:
        if self.depth_error is not None:
            raise self.depth_error
        return {"lastUpdateId": 10, "bids": [["100", "1"]], "asks": [["101", "1"]]}

    async def open_interest(self, symbol: str) -> dict:
        return {"symbol": symbol, "openInterest": "1000", "time": 1}

    async def premium_index(self, symbol: str) -> dict:
        return {"symbol": symbol, "markPrice": self.mark, "indexPrice": self.mark, "lastFundingRate": "0.0001"}

    async def server_time_ms(self) -> int:
        assert self.clock is not None
        return self.server_ms if self.server_ms is not None else self.clock.now // 1_000_000

    async def aggregate_trades(self, symbol: str, *, from_id: int, limit: int = 500) -> list[dict]:
        return self.agg_rows

    async def ping(self) -> dict:
        assert self.clock is not None
        self.pings.append(self.clock.now)
        if self.clock.now < self.ping_down_until_ns:
            raise VenueError(503, -1001, "Service unavailable")
        return {}


def make(
    breaker: CircuitBreaker | None = None, clock: ManualClock | None = None
) -> tuple[MarketDataService, list[tuple[str, Any]], FakeRest, ManualClock]:
    published: list[tuple[str, Any]] = []
    requests: list[tuple[str, bytes]] = []
    clock = start_clock() if clock is None else clock
    rest = FakeRest()
    rest.clock = clock

    async def publish(subject: str, message: Any, msg_id: str | None) -> int:
        published.append((subject, message))
        return len(published)

    async def kv_put(key: str, value: bytes) -> int:
        return 1

    async def request(subject: str, payload: bytes) -> bytes:
        requests.append((subject, payload))
        return b'{"trading_state": "HALTED"}'

    service = MarketDataService(
        venue=VENUE,
        symbols=("BTCUSDT",),
        publish=publish,
        kv_put=kv_put,
        rest=rest,  # type: ignore[arg-type]
        open_stream=lambda url: None,  # type: ignore[arg-type,return-value]
        log=get_logger("test"),
        request=request,
        breaker=breaker,
        clock=clock,
        new_id=lambda: "0000feed" * 4,
    )
    service.requests = requests  # type: ignore[attr-defined]
    return service, published, rest, clock


def frame(stream: str, data: dict) -> StreamFrame:
    return parse_frame(msgspec.json.encode({"stream": stream, "data": data}).decode())


def agg(trade_id: int, price: str, event_ms: int, qty: str = "0.1") -> StreamFrame:
    data = {"e": "aggTrade", "E": event_ms, "s": "BTCUSDT", "a": trade_id, "p": price, "q": qty, "T": event_ms}
    return frame("btcusdt@aggTrade", data)


def of(published: list[tuple[str, Any]], kind: type) -> list[Any]:
    return [message for _, message in published if isinstance(message, kind)]


async def test_handle_frame_when_corruption_above_5_percent_then_link_degraded_and_alert() -> None:
    service, published, _, clock = make()
    service.links.connected = True
    for i in range(60):
        clock.now += S // 50
        if i % 5 == 0:
            await service.handle_frame(parse_frame('{"stream": "btcusdt@aggTrade", "data": {"a": "x"'))
        else:
            await service.handle_frame(agg(1000 + i, "100", clock.now // 1_000_000))
    assert service.links.link_state == ConnectionState.DEGRADED
    assert any(alert.key.startswith("md.corruption") for alert in of(published, AlertRaised))
    links = of(published, LinkStateChanged)
    assert links[-1].current == ConnectionState.DEGRADED and "corrupt" in links[-1].reason


async def test_handle_frame_when_future_timestamp_then_rejected_and_backward_uses_receive_time() -> None:
    service, published, _, clock = make()
    now_ms = clock.now // 1_000_000
    await service.handle_frame(agg(1, "100", now_ms))
    await service.handle_frame(agg(2, "100", now_ms + 60_000))
    await service.handle_frame(agg(3, "100", now_ms - 5_000))
    trades = of(published, Trade)
    assert [t.trade_id for t in trades] == [1, 3]
    assert trades[1].ts_event_ns == clock.now
    flags = {(f.check, f.verdict) for f in of(published, MarketDataFlagged)}
    assert {("future_ts", "rejected"), ("backward_ts", "suspect")} <= flags


async def test_handle_frame_when_price_jump_not_confirmed_by_rest_then_rejected() -> None:
    service, published, rest, clock = make()
    for i in range(5):
        clock.now += S
        await service.handle_frame(agg(i + 1, "100", clock.now // 1_000_000))
    rest.mark = "100"
    await service.handle_frame(agg(6, "125", clock.now // 1_000_000))
    await asyncio.sleep(0.05)
    assert 6 not in [t.trade_id for t in of(published, Trade)]
    assert ("price_jump", "rejected") in {(f.check, f.verdict) for f in of(published, MarketDataFlagged)}
    rest.mark = "124"
    await service.handle_frame(agg(7, "125", clock.now // 1_000_000))
    await asyncio.sleep(0.05)
    assert 7 in [t.trade_id for t in of(published, Trade)]
    await service.close()


async def test_handle_frame_when_small_trade_gap_then_backfilled_over_rest() -> None:
    service, published, rest, clock = make()
    now_ms = clock.now // 1_000_000
    rest.agg_rows = [{"a": i, "p": "100", "q": "0.1", "f": 1, "l": 1, "T": now_ms, "m": False} for i in (2, 3)]
    await service.handle_frame(agg(1, "100", now_ms))
    await service.handle_frame(agg(4, "100", now_ms))
    await asyncio.sleep(0.05)
    assert sorted(t.trade_id for t in of(published, Trade)) == [1, 2, 3, 4]
    await service.close()


async def test_check_clock_when_offset_above_5s_then_halt_requested_and_link_degraded() -> None:
    service, published, rest, clock = make()
    service.links.connected = True
    rest.server_ms = clock.now // 1_000_000 + 6_000
    await service.check_clock()
    assert service.links.link_state == ConnectionState.DEGRADED
    assert [subject for subject, _ in service.requests] == ["svc.risk.halt"]  # type: ignore[attr-defined]
    assert {a.severity.value for a in of(published, AlertRaised)} >= {"P0", "P2"}
    rest.server_ms = clock.now // 1_000_000
    await service.check_clock()
    assert service.links.link_state != ConnectionState.DEGRADED


async def test_degraded_link_when_its_causes_change_then_published_again_with_all_causes() -> None:
    """The watchdog weighs a DEGRADED stream link by its causes (the clock alone: REDUCED; with
    corruption: EMERGENCY), so a cause added or removed while it stays DEGRADED is published."""
    service, published, rest, clock = make()
    service.links.connected = True
    rest.server_ms = clock.now // 1_000_000 + 6_000
    await service.check_clock()
    await service.links.degrade(link.DEGRADE_REASON_CORRUPTION, "6.0 %")
    await service.links.degrade(link.DEGRADE_REASON_CORRUPTION, "7.0 %")  # same causes: nothing new
    rest.server_ms = clock.now // 1_000_000
    await service.check_clock()
    links = [(e.previous, e.current, e.reason) for e in of(published, LinkStateChanged) if e.link == "market-ws"]
    assert links == [
        (None, ConnectionState.DEGRADED, "clock offset: 6000 ms"),
        (ConnectionState.DEGRADED, ConnectionState.DEGRADED, "clock offset: 6000 ms; corrupt messages: 6.0 %"),
        (ConnectionState.DEGRADED, ConnectionState.DEGRADED, "corrupt messages: 7.0 %"),
    ]
    causes = [e.causes for e in of(published, LinkStateChanged) if e.link == "market-ws"]
    assert causes == [["clock offset"], ["clock offset", "corrupt messages"], ["corrupt messages"]]


async def test_fetch_snapshot_when_venue_5xx_repeats_then_breaker_opens_and_fails_fast() -> None:
    clock = start_clock()
    breaker = CircuitBreaker("venue.binance-usdm", clock)
    service, published, rest, _ = make(breaker, clock)
    rest.depth_error = VenueError(503, -1001, "down")
    calls = 0

    async def counting_depth(symbol: str, limit: int = 1000) -> dict:
        nonlocal calls
        calls += 1
        raise VenueError(503, -1001, "down")

    rest.depth = counting_depth  # type: ignore[method-assign]
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if breaker.state.value == "OPEN" and len(sleeps) > 6:
            service.runtime.closed = True
        clock.now += int(min(seconds, 10) * S)  # less than the 30 s cool-down: still open

    service.runtime.sleep = fake_sleep
    service.links.connected = True
    await service.books.fetch_snapshot("BTCUSDT")
    assert calls == 5  # then the breaker answers without calling the venue
    assert sleeps[-1] > 5  # the fetch waits for the breaker's cool-down
    events = of(published, BreakerStateChanged)
    assert events and events[0].current == "OPEN" and events[0].breaker == "venue.binance-usdm"
    assert service.links.rest_link_state == ConnectionState.DISCONNECTED


async def test_resync_market_state_when_price_moved_after_reconnect_then_data_gap_alert() -> None:
    service, published, rest, _ = make()
    service.series.last_mark["BTCUSDT"] = Decimal(100)
    service.series.last_oi["BTCUSDT"] = Decimal(500)
    rest.mark = "110"
    await service.series.resync_market_state()
    keys = {alert.key for alert in of(published, AlertRaised)}
    assert keys == {"md.data_gap.BTCUSDT", "md.missed_liquidations.BTCUSDT"}
    assert of(published, MarkPrice)[0].mark_price == Decimal(110)


async def test_run_stream_when_connects_keep_failing_then_degraded_after_5_and_alternate_tried() -> None:
    service, published, _, _ = make()
    service.stream.ws_endpoints = EndpointRotation(["ws://a", "ws://b"])
    tried: list[str] = []

    class DeadStream:
        def __init__(self, url: str) -> None:
            self.url = url

        async def connect(self) -> None:
            from libs.binance.stream import StreamClosed

            tried.append(self.url)
            if len(tried) >= 6:
                service.runtime.closed = True
            raise StreamClosed("connect failed: refused")

        async def close(self) -> None:
            return None

    async def no_sleep(seconds: float) -> None:
        return None

    service.stream.open_stream = DeadStream  # type: ignore[assignment]
    service.runtime.sleep = no_sleep
    await service.run_stream_forever()
    assert tried[:3] == ["ws://a", "ws://b", "ws://a"]
    assert service.links.link_state == ConnectionState.DEGRADED
    keys = {alert.key for alert in of(published, AlertRaised)}
    assert {"md.reconnect_failing.binance-usdm", "md.ws_endpoints_failed.binance-usdm"} <= keys


class ScriptedVenue:
    """A venue whose WebSocket accepts connections only from `ws_up_at_s` (fake time) on; every
    connection attempt's time is recorded, and a successful one ends the run."""

    def __init__(
        self,
        service: MarketDataService,
        clock: ManualClock,
        ws_up_at_s: float,
        refusal: Callable[[float], Exception] | None = None,
    ) -> None:
        self.service = service
        self.refusal = refusal or (lambda remaining_s: StreamClosed("connect failed: HTTP 503"))
        """How a connect before `ws_up_at_s` fails, given the seconds until then."""
        self.clock = clock
        self.start = clock.now
        self.ws_up_at_ns = clock.now + int(ws_up_at_s * S)
        self.attempts: list[float] = []

    def stream(self, url: str) -> Any:
        venue = self

        class Stream:
            async def connect(self) -> None:
                venue.attempts.append((venue.clock.now - venue.start) / S)
                if venue.clock.now < venue.ws_up_at_ns:
                    raise venue.refusal((venue.ws_up_at_ns - venue.clock.now) / S)
                venue.service.runtime.closed = True  # connected: the run ends here

            async def close(self) -> None:
                return None

            def __aiter__(self) -> Any:
                return self

            async def __anext__(self) -> Any:
                raise StopAsyncIteration

        return Stream()

    async def run(self, horizon_s: float = 120.0) -> None:
        async def fake_sleep(seconds: float) -> None:
            self.clock.now += int(seconds * S)
            if self.clock.now - self.start > horizon_s * S:
                self.service.runtime.closed = True
            await asyncio.sleep(0)

        self.service.stream.open_stream = self.stream  # type: ignore[assignment]
        self.service.runtime.sleep = fake_sleep
        self.service.stream.uniform = lambda a, b: 0.0
        try:
            await self.service.run_stream_forever()
        finally:
            await self.service.close()


async def test_reconnect_wait_when_venue_answers_ping_again_then_reconnects_at_once_not_at_next_attempt() -> None:
    clock = start_clock()
    breaker = CircuitBreaker("venue.binance-usdm", clock)
    service, published, rest, _ = make(breaker, clock)
    rest.ping_down_until_ns = clock.now + int(3.5 * S)  # REST and WebSocket back at 3.5 s
    venue = ScriptedVenue(service, clock, ws_up_at_s=3.5)
    await venue.run()
    # The schedule alone: attempts at 0, 1, 3, then 7 s. The ping answers from 3.5 s on.
    assert venue.attempts[:3] == [0.0, 1.0, 3.0]
    assert 3.5 <= venue.attempts[-1] <= 3.5 + return_probe.RETURN_PROBE_INTERVAL_S + 1e-6, venue.attempts
    assert service.stream.early_reconnects == 1
    # Failed probes during the outage do not trip the venue breaker by their own rate.
    assert len(rest.pings) >= 8 and breaker.state.value == "CLOSED"
    assert not of(published, BreakerStateChanged)


async def test_reconnect_wait_when_rest_answers_but_ws_refuses_then_early_reconnects_bounded() -> None:
    service, _, rest, clock = make()
    venue = ScriptedVenue(service, clock, ws_up_at_s=10_000)  # the WebSocket never comes back
    await venue.run(horizon_s=60)
    # Two waits cut short, then the SPEC schedule alone (4, 8, 32 s): no hammering.
    assert venue.attempts == pytest.approx([0.0, 0.3, 0.6, 4.6, 12.6, 44.6])
    assert service.stream.early_reconnects == return_probe.MAX_EARLY_RECONNECTS
    assert len(rest.pings) == return_probe.MAX_EARLY_RECONNECTS
    assert service.links.link_state == ConnectionState.DEGRADED  # 5 failed attempts still degrade


async def test_reconnect_wait_when_venue_breaker_open_then_no_probe_is_sent() -> None:
    clock = start_clock()
    breaker = CircuitBreaker("venue.binance-usdm", clock)
    for _ in range(5):
        breaker.record_failure("HTTP 503")
    service, _, rest, _ = make(breaker, clock)
    venue = ScriptedVenue(service, clock, ws_up_at_s=10_000)
    await venue.run(horizon_s=20)
    assert rest.pings == []  # open for 30 s: fail fast, nothing sent
    assert venue.attempts == [0.0, 1.0, 3.0, 7.0, 15.0]


def test_return_probe_when_wait_short_or_early_reconnects_used_then_no_probe() -> None:
    probe = return_probe.ReturnProbe(interval_s=0.3, max_early=2)
    assert probe.next_probe_in(0.2) is None  # the attempt comes first
    assert probe.next_probe_in(1.0) == 0.3
    probe.on_answer()
    probe.on_answer()
    assert probe.next_probe_in(8.0) is None
    probe.on_connected()
    assert probe.next_probe_in(8.0) == 0.3


# --------------------------------------------------------------------------- fuzz

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=6),
    max_leaves=20,
)
payload_keys = st.sampled_from(["e", "E", "s", "U", "u", "pu", "b", "a", "p", "q", "T", "i", "r", "o", "m", "S", "ap"])
payloads = st.dictionaries(payload_keys, json_values, max_size=10)
streams = st.sampled_from(
    ["btcusdt@depth@100ms", "btcusdt@aggTrade", "btcusdt@markPrice@1s", "btcusdt@forceOrder", "x@y", ""]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.tuples(streams, payloads), st.text(max_size=60), st.binary(max_size=60)), max_size=15))
def test_handle_frame_when_random_or_garbled_frames_then_no_exception_escapes(items: list) -> None:
    async def run() -> None:
        service, _, _, _ = make()
        service.links.connected = False  # no snapshot tasks
        for item in items:
            if isinstance(item, tuple):
                text = msgspec.json.encode({"stream": item[0], "data": item[1]}).decode()
            elif isinstance(item, bytes):
                text = item.decode("utf-8", errors="replace")
            else:
                text = item
            await service.handle_frame(parse_frame(text))
            await service.handle_frame(parse_frame(text[: len(text) // 2]))
        await service.close()

    asyncio.run(run())


@settings(max_examples=200, deadline=None)
@given(json_values, st.sampled_from(["snapshot", "oi", "premium", "agg"]))
def test_rest_parsers_when_random_bodies_then_only_bad_frame_raised(body: Any, kind: str) -> None:
    parsers = {
        "snapshot": frames.parse_snapshot,
        "oi": lambda b: frames.open_interest_from_rest(VENUE, "BTCUSDT", b, 1_700_000_000 * S),
        "premium": lambda b: frames.mark_from_premium_index(VENUE, "BTCUSDT", b, 1_700_000_000 * S),
        "agg": lambda b: frames.trade_from_agg_trade(VENUE, b, "BTCUSDT"),
    }
    try:
        parsers[kind](body)
    except frames.BadFrame:
        pass


async def test_handle_frame_when_frames_arrive_late_then_heartbeat_reports_p99_over_baseline() -> None:
    # FM-N5: receive time minus event time on the venue's clock; the watchdog compares the two.
    service, _, _, clock = make()
    assert "latency_p99_ms" not in service.details()  # no baseline yet
    trade_id = 0
    for _ in range(STREAM_LATENCY_SAMPLES):  # the first full window is the baseline: 20 ms late
        trade_id += 1
        clock.now += S // 100
        await service.handle_frame(agg(trade_id, "100", clock.now // 1_000_000 - 20))
    assert service.details()["latency_baseline_ms"] == 20.0
    clock.now += 1_480 * S // 1000  # the stream falls 1.5 s behind: a silence, then old frames
    for _ in range(50):  # 5 % of the window
        trade_id += 1
        clock.now += S // 100
        await service.handle_frame(agg(trade_id, "100", clock.now // 1_000_000 - 1_500))
    assert not service.timestamps.suspect  # event times kept increasing: late, not backwards
    details = service.details()
    assert details["latency_p99_ms"] == 1_500.0 and details["latency_baseline_ms"] == 20.0
    await service.close()

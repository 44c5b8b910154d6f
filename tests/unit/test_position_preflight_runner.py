"""The position service's preflight runner on an in-memory bus: what it publishes, when it halts
trading, that it never resumes, when a link change runs it again, and the budget it adjusts."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from nats.errors import NoRespondersError

from libs.binance.preflight import PreflightConfig
from libs.logging import get_logger
from libs.ratelimit import RateBudget
from libs.settings import Settings
from proto import subjects
from proto.codec import encode
from proto.enums import ConnectionState
from proto.kv import PreflightValue, decode_value
from proto.messages import AlertRaised, AlertResolved, LinkStateChanged
from services.position import preflight as runner_module
from services.position.preflight import RECONNECT, START, PreflightRunner, preflight_config
from tests.unit.test_binance_preflight import INFO, FakeVenue

VENUE = "binance-usdm"


class FakeBus:
    """KV, publishing and risk's halt endpoint in memory; risk answers after `risk_down_for` requests."""

    def __init__(self, risk_down_for: int = 0) -> None:
        self.kv: dict[str, bytes] = {}
        self.published: list[tuple[str, Any]] = []
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.risk_down_for = risk_down_for

    async def kv_put(self, key: str, value: bytes) -> int:
        self.kv[key] = value
        return 1

    async def publish(self, subject: str, message: Any, *, msg_id: str | None = None) -> int:
        self.published.append((subject, message))
        return len(self.published)

    async def request(self, subject: str, payload: bytes = b"{}", *, timeout_s: float = 3.0) -> bytes:
        self.requests.append((subject, msgspec.json.decode(payload)))
        if len(self.requests) <= self.risk_down_for:
            raise NoRespondersError
        return b'{"trading_state": "HALTED"}'

    def preflight(self) -> PreflightValue:
        value = decode_value(PreflightValue, self.kv.get(subjects.key_preflight(VENUE)))
        assert value is not None
        return value

    def halts(self) -> list[str]:
        return [body["reason"] for subject, body in self.requests if subject == subjects.SVC_RISK_HALT]


def _runner(bus: FakeBus, venue: FakeVenue, profile: str = "custom", budget: RateBudget | None = None) -> Any:
    return PreflightRunner(
        bus,
        get_logger("test"),
        venue,
        PreflightConfig(symbols=("BTCUSDT",)),
        venue_name=VENUE,
        component="position",
        profile=profile,
        budget=budget,
        clock=lambda: 1_000_000 * 1_000_000,
    )


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_module, "HALT_RETRY_S", 0.0)
    monkeypatch.setattr(runner_module, "HALT_ATTEMPTS_INLINE", 3)


async def test_run_when_all_ok_then_published_and_no_halt_and_budget_takes_the_venue_limits() -> None:
    bus = FakeBus()
    budget = RateBudget(VENUE, lambda: 0)
    info = {**INFO, "rateLimits": [{"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 50}]}
    await _runner(bus, FakeVenue(exchange_info=info), budget=budget).run(START)
    assert bus.preflight().ok and bus.preflight().trigger == START
    assert bus.halts() == []
    assert budget.order_limit_10s == 50 and budget.weight_limit_1m == 2400


async def test_run_when_hedge_mode_then_halt_with_the_reason_and_alert_and_passing_again_never_resumes() -> None:
    bus = FakeBus()
    venue = FakeVenue(position_mode={"dualSidePosition": True})
    runner = _runner(bus, venue)
    await runner.run(RECONNECT)
    assert not bus.preflight().ok
    (reason,) = bus.halts()
    assert "position_mode" in reason and "dualSidePosition=false" in reason
    assert any(isinstance(m, AlertRaised) and m.key == f"venue-preflight:{VENUE}" for _, m in bus.published)

    venue.answers["position_mode"] = {"dualSidePosition": False}
    await runner.run(RECONNECT)
    assert bus.preflight().ok
    assert [subject for subject, _ in bus.requests] == [subjects.SVC_RISK_HALT]  # no resume asked
    assert any(isinstance(m, AlertResolved) for _, m in bus.published)


async def test_run_when_venue_unreachable_then_published_incomplete_and_nothing_halted() -> None:
    from libs.binance.errors import VenueUnreachable

    bus = FakeBus()
    await _runner(bus, FakeVenue(server_time_ms=VenueUnreachable("refused"))).run(START)
    assert not bus.preflight().ok and [c.name for c in bus.preflight().checks] == ["venue"]
    assert bus.halts() == []


async def test_run_when_real_money_profile_then_every_start_halts_but_a_reconnect_does_not() -> None:
    bus = FakeBus()
    runner = _runner(bus, FakeVenue(), profile="binance")
    await runner.run(START)
    assert len(bus.halts()) == 1 and "real-money" in bus.halts()[0]
    await runner.run(RECONNECT)
    assert len(bus.halts()) == 1


async def test_halt_when_risk_down_then_keeps_asking_in_the_background_until_it_answers() -> None:
    bus = FakeBus(risk_down_for=5)
    runner = _runner(bus, FakeVenue(position_mode={"dualSidePosition": True}))
    await runner.run(START)  # returns after the inline attempts
    assert len(bus.requests) == 3
    for _ in range(50):
        if len(bus.requests) >= 6:
            break
        await asyncio.sleep(0.01)
    assert len(bus.requests) == 6 and not runner._halting


async def test_on_link_when_back_to_connected_after_down_or_after_an_incomplete_run_then_runs_again() -> None:
    runner = _runner(FakeBus(), FakeVenue())

    def event(previous: ConnectionState, current: ConnectionState) -> Any:
        changed = LinkStateChanged(
            venue=VENUE, link=subjects.ORDER_LINK, previous=previous, current=current, reason="", symbols=[]
        )
        return SimpleNamespace(data=encode(changed))

    await runner.on_link(event(ConnectionState.CONNECTED, ConnectionState.CONNECTED))
    assert runner.rerun.is_set()  # never ran yet
    runner.rerun.clear()
    await runner.run(START)
    await runner.on_link(event(ConnectionState.CONNECTED, ConnectionState.CONNECTED))
    await runner.on_link(event(ConnectionState.CONNECTED, ConnectionState.DISCONNECTED))
    assert not runner.rerun.is_set()
    await runner.on_link(event(ConnectionState.DISCONNECTED, ConnectionState.CONNECTED))
    assert runner.rerun.is_set()
    await runner.on_link(SimpleNamespace(data=b"not json"))  # logged, not raised


def test_preflight_config_when_settings_unusable_then_configuration_checks_fail() -> None:
    settings = Settings(venue_leverage="BTCUSDT=lots", venue_margin_type="PARTIAL", venue_min_balance="a lot")
    config, problems = preflight_config(settings)
    assert [p.name for p in problems] == ["configuration"] * 3
    assert config.margin_type == "CROSSED" and config.leverage == {}
    good, none = preflight_config(Settings(venue_leverage="4", venue_margin_type="isolated", venue_min_balance="50"))
    assert none == [] and good.margin_type == "ISOLATED" and good.leverage == {"BTCUSDT": 4, "ETHUSDT": 4}


def test_preflight_config_when_mainnet_url_without_the_real_money_profile_then_refused() -> None:
    _, problems = preflight_config(Settings(venue_rest_url="https://fapi.binance.com", venue_profile="custom"))
    assert [p.name for p in problems] == ["configuration"] and "real money" in problems[0].message
    _, none = preflight_config(Settings(venue_rest_url="https://fapi.binance.com", venue_profile="binance"))
    assert none == []

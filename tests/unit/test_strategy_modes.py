"""Strategies live or on paper: a strategy that CB-3 or FAILED stopped comes back only through paper
(or an audited override), through the operator API (`POST /v1/strategies/{name}/enable`) and in
risk's decisions about its orders (`services.risk.paper`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any, cast

import httpx
import msgspec
import pytest
import pytest_asyncio

from libs.logging import get_logger
from libs.runtime.service import ServiceContext
from libs.settings import Settings
from proto import subjects
from proto.enums import BreakerState, OrderSource, OrderType, Side, StrategyMode, StrategyState, TradingState
from proto.kv import BreakerValue, StrategyModeValue, StrategyStateValue, decode_value, encode_value
from proto.messages import EnableStrategy, OperatorActionTaken, SubmitOrder
from proto.replies import BreakerResetReply
from services.gateway.app import create_app
from services.gateway.context import Gateway
from services.gateway.strategy_modes import EnableRequest, Standing, judge_enable
from services.risk.paper import PaperModes, recorded_mode
from tests.unit.test_gateway_contracts import PeerBus

OP = {"Authorization": "Bearer o"}
NAME = "trend"


def client_for(peer: PeerBus, *, paper: bool) -> httpx.AsyncClient:
    settings = Settings(admin_token="a", operator_token="o", viewer_token="v", strategies=(NAME,), paper=paper)
    ctx = ServiceContext(component="gateway", settings=settings, log=get_logger("gateway"), bus=cast(Any, peer))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(Gateway(ctx))), base_url="http://gateway")


@pytest_asyncio.fixture
async def peer() -> PeerBus:
    return PeerBus()


@pytest_asyncio.fixture
async def paper_system(peer: PeerBus) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(peer, paper=True) as http:
        yield http


@pytest_asyncio.fixture
async def live_system(peer: PeerBus) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(peer, paper=False) as http:
        yield http


def stopped_by(peer: PeerBus, *, cb3: bool = False, failed: bool = False) -> None:
    """Persist what CB-3 (risk) and FM-C2 (the strategy) write when they stop a strategy."""
    state = StrategyState.FAILED if failed else StrategyState.DISABLED
    peer.kv[subjects.key_strategy(NAME)] = encode_value(StrategyStateValue(state=state, reason="stopped"))
    if cb3:
        breaker = BreakerValue(breaker=f"CB-3-{NAME}", title="strategy malfunction", state=BreakerState.OPEN)
        peer.kv[subjects.key_breaker(f"CB-3-{NAME}")] = encode_value(breaker)


def enables(peer: PeerBus) -> list[EnableStrategy]:
    return [message for _, message in peer.published if isinstance(message, EnableStrategy)]


def stored_mode(peer: PeerBus) -> StrategyModeValue | None:
    return decode_value(StrategyModeValue, peer.kv.get(subjects.key_strategy_mode(NAME)))


# --------------------------------------------------------------------------- the pure rule


@pytest.mark.parametrize(
    ("state", "cb3", "mode", "refused"),
    [
        (StrategyState.DISABLED, None, StrategyMode.LIVE, None),  # an operator's own disable: live is fine
        (StrategyState.DISABLED, BreakerState.OPEN, StrategyMode.LIVE, "paper_first"),
        (StrategyState.FAILED, None, StrategyMode.LIVE, "paper_first"),
        (StrategyState.FAILED, BreakerState.OPEN, StrategyMode.LIVE, "paper_first"),
        (StrategyState.FAILED, None, StrategyMode.PAPER, "paper_first"),  # enabled on paper, failed there again
        (StrategyState.SCANNING, BreakerState.OPEN, StrategyMode.PAPER, None),  # runs on paper now: may go live
        (StrategyState.IN_POSITION, BreakerState.OPEN, StrategyMode.PAPER, None),
    ],
)
def test_judge_enable_when_live_asked_then_cb3_and_failed_only_from_paper(
    state: StrategyState, cb3: BreakerState | None, mode: StrategyMode, refused: str | None
) -> None:
    standing = Standing(state=state, cb3=cb3, mode=mode, paper_link=True)

    refusal = judge_enable(NAME, EnableRequest(), standing)

    assert (refusal.code if refusal else None) == refused
    forced = judge_enable(NAME, EnableRequest(override=True, reason="reviewed the losses"), standing)
    assert forced is None


def test_judge_enable_when_paper_asked_then_allowed_anywhere_with_a_paper_link() -> None:
    failed = Standing(state=StrategyState.FAILED, cb3=BreakerState.OPEN, mode=StrategyMode.LIVE, paper_link=True)
    assert judge_enable(NAME, EnableRequest(mode=StrategyMode.PAPER), failed) is None
    no_link = Standing(state=StrategyState.DISABLED, cb3=None, mode=StrategyMode.LIVE, paper_link=False)
    refusal = judge_enable(NAME, EnableRequest(mode=StrategyMode.PAPER), no_link)
    assert refusal is not None and refusal.status == 409 and refusal.code == "no_paper_link"


# --------------------------------------------------------------------------- the operator API


async def test_enable_when_no_body_then_live_as_before(peer: PeerBus, live_system: httpx.AsyncClient) -> None:
    response = await live_system.post(f"/v1/strategies/{NAME}/enable", headers=OP)

    assert response.status_code == 202, response.text
    assert response.json()["mode"] == "live"
    (command,) = enables(peer)
    assert command.mode == StrategyMode.LIVE and command.override is False


async def test_enable_when_unknown_field_then_422_naming_it(peer: PeerBus, paper_system: httpx.AsyncClient) -> None:
    response = await paper_system.post(f"/v1/strategies/{NAME}/enable", headers=OP, json={"mode": "paper", "moed": 1})

    assert response.status_code == 422, response.text
    assert "moed" in response.text
    bad_mode = await paper_system.post(f"/v1/strategies/{NAME}/enable", headers=OP, json={"mode": "papr"})
    assert bad_mode.status_code == 422 and "mode" in bad_mode.text
    no_reason = await paper_system.post(f"/v1/strategies/{NAME}/enable", headers=OP, json={"override": True})
    assert no_reason.status_code == 422 and "reason" in no_reason.text
    assert enables(peer) == [] and stored_mode(peer) is None


async def test_enable_when_cb3_open_and_live_asked_then_409_with_the_reason(
    peer: PeerBus, paper_system: httpx.AsyncClient
) -> None:
    stopped_by(peer, cb3=True)

    response = await paper_system.post(f"/v1/strategies/{NAME}/enable", headers=OP, json={"mode": "live"})

    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error["code"] == "paper_first" and "CB-3" in error["message"]
    assert enables(peer) == [] and stored_mode(peer) is None


async def test_enable_when_failed_then_paper_then_live_from_paper(
    peer: PeerBus, paper_system: httpx.AsyncClient
) -> None:
    stopped_by(peer, failed=True)

    paper = await paper_system.post(f"/v1/strategies/{NAME}/enable", headers=OP, json={"mode": "paper"})

    assert paper.status_code == 202, paper.text
    mode = stored_mode(peer)
    assert mode is not None and mode.mode == StrategyMode.PAPER and mode.restricted_by == "FAILED"
    assert enables(peer)[-1].mode == StrategyMode.PAPER
    listed = (await paper_system.get("/v1/strategies", headers=OP)).json()["strategies"]
    assert listed[0]["mode"] == "paper"
    # Running on paper now (the strategy left FAILED): it may go live.
    peer.kv[subjects.key_strategy(NAME)] = encode_value(StrategyStateValue(state=StrategyState.SCANNING))
    live = await paper_system.post(f"/v1/strategies/{NAME}/enable", headers=OP)
    assert live.status_code == 202, live.text
    assert enables(peer)[-1].mode == StrategyMode.LIVE


async def test_enable_when_override_then_live_and_audited(peer: PeerBus, paper_system: httpx.AsyncClient) -> None:
    stopped_by(peer, cb3=True, failed=True)
    body = {"mode": "live", "override": True, "reason": "losses were a data bug, fixed in 1.4"}

    response = await paper_system.post(f"/v1/strategies/{NAME}/enable", headers=OP, json=body)

    assert response.status_code == 202, response.text
    command = enables(peer)[-1]
    assert command.override is True and command.reason == body["reason"] and command.mode == StrategyMode.LIVE
    mode = stored_mode(peer)
    assert mode is not None and mode.override and mode.restricted_by == "CB-3+FAILED" and mode.operator
    (action,) = [m for _, m in peer.published if isinstance(m, OperatorActionTaken)]
    assert action.action == "strategy_live_override" and action.target == NAME and action.reason == body["reason"]


async def test_enable_when_paper_asked_without_paper_link_then_409(
    peer: PeerBus, live_system: httpx.AsyncClient
) -> None:
    response = await live_system.post(f"/v1/strategies/{NAME}/enable", headers=OP, json={"mode": "paper"})

    assert response.status_code == 409 and response.json()["error"]["code"] == "no_paper_link"
    assert enables(peer) == []


async def test_status_when_paper_then_says_paper_at_top_and_per_venue(
    peer: PeerBus, paper_system: httpx.AsyncClient
) -> None:
    body = (await paper_system.get("/v1/status", headers=OP)).json()

    assert body["mode"] == "PAPER" and body["paper"] is True
    assert {venue["mode"] for venue in body["venues"].values()} == {"PAPER"}


# --------------------------------------------------------------------------- risk


def strategy_order(strategy: str | None = NAME) -> SubmitOrder:
    return SubmitOrder(
        client_order_id="c1",
        idempotency_key="k1",
        source=OrderSource.STRATEGY if strategy else OrderSource.OPERATOR,
        symbol="BTCUSDT",
        side=Side.BUY,
        order_type=OrderType.MARKET,
        quantity=Decimal("0.01"),
        strategy=strategy,
    )


def test_risk_when_strategy_on_paper_without_paper_link_then_denied_never_live() -> None:
    modes = PaperModes(paper_link=False)
    modes.on_enabled(EnableStrategy(strategy=NAME, operator="o", mode=StrategyMode.PAPER))

    denial = modes.denial(strategy_order())

    assert denial is not None and "paper" in denial
    assert modes.on_paper(strategy_order()) is False
    assert modes.denial(strategy_order("other")) is None and modes.denial(strategy_order(None)) is None


def test_risk_when_strategy_on_paper_with_paper_link_then_passes_cb3_until_enabled_live() -> None:
    modes = PaperModes(paper_link=True)
    modes.on_enabled(EnableStrategy(strategy=NAME, operator="o", mode=StrategyMode.PAPER))

    assert modes.denial(strategy_order()) is None and modes.on_paper(strategy_order()) is True
    modes.on_enabled(EnableStrategy(strategy=NAME, operator="o"))
    assert modes.on_paper(strategy_order()) is False


def test_mode_record_when_decoded_then_its_mode_and_an_unreadable_one_is_paper() -> None:
    live = msgspec.json.encode(StrategyModeValue(mode=StrategyMode.LIVE, operator="o"))
    paper = msgspec.json.encode(StrategyModeValue(mode=StrategyMode.PAPER, operator="o"))

    assert recorded_mode(live) == (StrategyMode.LIVE, True)
    assert recorded_mode(paper) == (StrategyMode.PAPER, True)
    assert recorded_mode(b"not json") == (StrategyMode.PAPER, False)
    assert recorded_mode(b'{"mode": "moon", "operator": "o"}') == (StrategyMode.PAPER, False)
    assert recorded_mode(b"") == (StrategyMode.PAPER, False)


def test_risk_when_mode_records_arrive_then_they_decide_unreadable_is_paper_and_a_delete_keeps_the_mode() -> None:
    log = get_logger("risk")
    modes = PaperModes(paper_link=False)
    modes.on_enabled(EnableStrategy(strategy="other", operator="o", mode=StrategyMode.PAPER))

    modes.on_record(subjects.key_strategy_mode(NAME), b"not json", log)
    live = msgspec.json.encode(StrategyModeValue(mode=StrategyMode.LIVE))
    modes.on_record(subjects.key_strategy_mode("other"), live, log)  # the record over the event heard

    assert modes.denial(strategy_order()) is not None
    assert modes.denial(strategy_order("other")) is None and modes.denial(strategy_order("never-enabled")) is None
    modes.on_record(subjects.key_strategy_mode(NAME), None, log)
    assert modes.mode(NAME) == StrategyMode.PAPER


async def test_cb3_reset_when_strategy_on_paper_then_recorded_live_by_that_operator(
    peer: PeerBus, paper_system: httpx.AsyncClient
) -> None:
    stopped_by(peer, cb3=True)
    assert (
        await paper_system.post(f"/v1/strategies/{NAME}/enable", headers=OP, json={"mode": "paper"})
    ).status_code == 202
    reply = BreakerResetReply(
        breaker=f"CB-3-{NAME}", state=BreakerState.CLOSED, previous=BreakerState.OPEN, trading_state=TradingState.ACTIVE
    )
    peer.answer(subjects.SVC_RISK_BREAKER_RESET, msgspec.json.encode(reply))

    response = await paper_system.post(f"/v1/breakers/CB-3-{NAME}/reset", headers=OP, json={"reason": "fixed"})

    assert response.status_code == 200, response.text
    mode = stored_mode(peer)
    assert mode is not None and mode.mode == StrategyMode.LIVE and mode.override and mode.reason == "fixed"

"""The gateway on a live system with a paper venue beside it (`bulwark up --paper-link`): a paper
enable is accepted (no 409 `no_paper_link`) and `/v1/status` lists the paper venue as PAPER while
the system and its live venues stay LIVE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
import pytest_asyncio

from libs.logging import get_logger
from libs.runtime.service import ServiceContext
from libs.settings import Settings
from proto.enums import StrategyMode
from services.gateway.app import create_app
from services.gateway.context import Gateway
from tests.unit.test_gateway_contracts import PeerBus
from tests.unit.test_strategy_modes import NAME, OP, enables, stored_mode

PAPER = "binance-usdm-paper"


@pytest_asyncio.fixture
async def peer() -> PeerBus:
    return PeerBus()


@pytest_asyncio.fixture
async def beside_live(peer: PeerBus) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(admin_token="a", operator_token="o", viewer_token="v", strategies=(NAME,), paper_venue=PAPER)
    ctx = ServiceContext(component="gateway", settings=settings, log=get_logger("gateway"), bus=cast(Any, peer))
    transport = httpx.ASGITransport(app=create_app(Gateway(ctx)))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        yield http


async def test_enable_when_paper_venue_beside_live_then_paper_accepted(
    peer: PeerBus, beside_live: httpx.AsyncClient
) -> None:
    response = await beside_live.post(f"/v1/strategies/{NAME}/enable", headers=OP, json={"mode": "paper"})

    assert response.status_code == 202, response.text
    assert [command.mode for command in enables(peer)] == [StrategyMode.PAPER]
    mode = stored_mode(peer)
    assert mode is not None and mode.mode == StrategyMode.PAPER


async def test_status_when_paper_venue_beside_live_then_listed_paper_and_the_rest_live(
    beside_live: httpx.AsyncClient,
) -> None:
    body = (await beside_live.get("/v1/status", headers=OP)).json()

    assert body["mode"] == "LIVE" and body["paper"] is False
    assert body["venues"][PAPER]["role"] == "paper" and body["venues"][PAPER]["mode"] == "PAPER"
    assert body["venues"][PAPER]["position_component"] == f"position-{PAPER}"
    assert body["venues"]["binance-usdm"]["mode"] == "LIVE"

"""The simulator routes WebSocket streams by path as Binance USD-M (`--stream-routing binance`):
`/public` depth, `/market` trades, mark price and liquidations, `/private` user data, and a path
without a route public data only; a stream on the wrong path is accepted and silent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from services.venue_sim.adapters.synthetic import SyntheticSource
from services.venue_sim.config import SimConfig, config_from
from services.venue_sim.main import build_simulator

KEY = "bulwark-sim-key"
STREAMS = "btcusdt@depth@100ms/btcusdt@markPrice@1s/btcusdt@aggTrade"


class Sim:
    def __init__(self, server: TestServer, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.session = session
        self.base = str(server.make_url("")).rstrip("/")
        self.ws_base = self.base.replace("http", "ws")

    async def channels(self, path: str, seconds: float = 3.0) -> set[str]:
        """The channels a combined connection on `path` receives within `seconds`."""
        seen: set[str] = set()
        async with self.session.ws_connect(self.ws_base + path) as ws:
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                try:
                    frame = await ws.receive_json(timeout=left)
                except TimeoutError:
                    break
                seen.add(frame["stream"].split("@")[1])
        return seen

    async def listen_key(self) -> str:
        async with self.session.post(self.base + "/fapi/v1/listenKey", headers={"X-MBX-APIKEY": KEY}) as response:
            return str((await response.json())["listenKey"])

    async def market_order(self) -> None:
        order = {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.01"}
        async with self.session.post(self.base + "/_sim/orders", json=order) as response:
            assert response.status == 200, await response.text()


@pytest.fixture
async def sim(request: pytest.FixtureRequest) -> AsyncIterator[Sim]:
    routing = getattr(request, "param", "binance")
    config = SimConfig(seed=5, stream_routing=routing)
    # Cascades on: liquidations and trades come often enough to be seen within seconds.
    source = SyntheticSource(["BTCUSDT", "ETHUSDT"], seed=5, cascade_probability=0.05)
    server = TestServer(build_simulator(config, source, "test").build_app(), host="127.0.0.1")
    await server.start_server()
    session = aiohttp.ClientSession()
    yield Sim(server, session)
    await session.close()
    await server.close()


def test_config_when_no_flag_then_binance_routing_and_flag_or_variable_choose() -> None:
    assert config_from([], {}).stream_routing == "binance"
    assert config_from(["--stream-routing", "any"], {}).stream_routing == "any"
    assert config_from([], {"BULWARK_SIM_STREAM_ROUTING": "any"}).stream_routing == "any"
    with pytest.raises(SystemExit):
        config_from(["--stream-routing", "some"], {})


async def test_routing_when_binance_then_each_path_serves_its_class_only(sim: Sim) -> None:
    assert await sim.channels(f"/stream?streams={STREAMS}") == {"depth"}, "un-routed: public data only"
    assert await sim.channels(f"/public/stream?streams={STREAMS}") == {"depth"}
    assert await sim.channels(f"/market/stream?streams={STREAMS}") == {"markPrice", "aggTrade"}
    assert await sim.channels(f"/private/stream?streams={STREAMS}", seconds=1.5) == set()


async def test_subscribe_when_stream_off_its_route_then_accepted_and_silent(sim: Sim) -> None:
    async with sim.session.ws_connect(sim.ws_base + "/ws") as ws:
        await ws.send_json({"method": "SUBSCRIBE", "params": ["btcusdt@markPrice@1s"], "id": 1})
        assert await ws.receive_json(timeout=5) == {"result": None, "id": 1}
        with pytest.raises(asyncio.TimeoutError):
            await ws.receive_json(timeout=2.5)
    async with sim.session.ws_connect(sim.ws_base + "/market/ws") as ws:
        await ws.send_json({"method": "SUBSCRIBE", "params": ["btcusdt@markPrice@1s"], "id": 1})
        assert await ws.receive_json(timeout=5) == {"result": None, "id": 1}
        assert (await ws.receive_json(timeout=5))["stream"] == "btcusdt@markPrice@1s"


async def test_user_data_when_binance_then_only_on_private(sim: Sim) -> None:
    key = await sim.listen_key()
    unrouted = await sim.session.ws_connect(f"{sim.ws_base}/ws/{key}")
    private = await sim.session.ws_connect(f"{sim.ws_base}/private/ws/{key}")
    try:
        await sim.market_order()
        event: dict[str, Any] = await private.receive_json(timeout=5)
        assert event["e"] in ("ORDER_TRADE_UPDATE", "ACCOUNT_UPDATE"), event
        with pytest.raises(asyncio.TimeoutError):
            await unrouted.receive_json(timeout=1.5)
    finally:
        await unrouted.close()
        await private.close()


@pytest.mark.parametrize("sim", ["any"], indirect=True)
async def test_routing_when_any_then_every_path_serves_every_stream(sim: Sim) -> None:
    assert await sim.channels(f"/stream?streams={STREAMS}") == {"depth", "markPrice", "aggTrade"}
    key = await sim.listen_key()
    async with sim.session.ws_connect(f"{sim.ws_base}/ws/{key}") as ws:
        await sim.market_order()
        assert (await ws.receive_json(timeout=5))["e"] in ("ORDER_TRADE_UPDATE", "ACCOUNT_UPDATE")

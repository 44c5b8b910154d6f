"""What a live Binance USD-M connection does, as the simulator emulates it over real HTTP and
WebSocket: connections that expire, server pings that must be answered, the incoming-message and
stream limits, listenKey expiry, orders placed by someone else, IP bans that last and grow, and the
usage headers. Each rule is shortened through the simulator's configuration."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestServer
from yarl import URL

from libs.binance.signing import sign
from services.venue_sim.adapters.synthetic import SyntheticSource
from services.venue_sim.config import SimConfig
from services.venue_sim.domain.venue_rules import ConnectionRules
from services.venue_sim.main import build_simulator
from tests.support.polling import eventually

KEY, SECRET = "bulwark-sim-key", "bulwark-sim-secret"


class Venue:
    """A simulator on a loopback port and a session to talk to it."""

    def __init__(self, server: TestServer, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.session = session
        self.base = str(server.make_url("")).rstrip("/")
        self.ws_base = self.base.replace("http", "ws")

    async def get(self, path: str, **params: Any) -> tuple[int, Any, Any]:
        async with self.session.get(self.base + path, params=params) as response:
            return response.status, await response.json(content_type=None), response.headers

    async def signed(self, method: str, path: str, **params: Any) -> tuple[int, Any, Any]:
        params.setdefault("timestamp", int(time.time() * 1000))
        query = urlencode(params)
        url = URL(f"{self.base}{path}?{query}&signature={sign(query, SECRET)}", encoded=True)
        async with self.session.request(method, url, headers={"X-MBX-APIKEY": KEY}) as response:
            return response.status, await response.json(content_type=None), response.headers

    async def key_only(self, method: str, path: str) -> tuple[int, Any]:
        async with self.session.request(method, self.base + path, headers={"X-MBX-APIKEY": KEY}) as response:
            return response.status, await response.json(content_type=None)

    async def sim(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(method, self.base + path, json=body) as response:
            return response.status, await response.json(content_type=None)


async def _venue(**overrides: Any) -> Venue:
    config = replace(SimConfig(seed=5), **overrides)
    source = SyntheticSource(["BTCUSDT", "ETHUSDT"], seed=5, cascade_probability=0.0)
    server = TestServer(build_simulator(config, source, "test").build_app(), host="127.0.0.1")
    await server.start_server()
    return Venue(server, aiohttp.ClientSession())


@pytest.fixture
async def venue(request: pytest.FixtureRequest) -> AsyncIterator[Venue]:
    options = getattr(request, "param", {})
    started = await _venue(**options)
    yield started
    await started.session.close()
    await started.server.close()


def rules(**changes: Any) -> dict[str, Any]:
    return {"rules": replace(ConnectionRules(), **changes)}


async def _closed(ws: aiohttp.ClientWebSocketResponse, timeout_s: float) -> aiohttp.WSMessage:
    """Read until the server closes the connection; the close message."""
    deadline = time.monotonic() + timeout_s
    while True:
        message = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
        if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
            return message


@pytest.mark.parametrize("venue", [rules(lifetime_s=1.5)], indirect=True)
async def test_ws_connection_when_lifetime_reached_then_closed_and_a_new_one_served(venue: Venue) -> None:
    started = time.monotonic()
    async with venue.session.ws_connect(venue.ws_base + "/stream?streams=btcusdt@depth@100ms") as ws:
        assert (await ws.receive_json(timeout=5))["stream"] == "btcusdt@depth@100ms"
        closing = await _closed(ws, timeout_s=10)
        assert 1.4 <= time.monotonic() - started < 5
        assert ws.close_code == 1001, closing
    async with venue.session.ws_connect(venue.ws_base + "/ws/ethusdt@depth@100ms") as ws:
        assert (await ws.receive_json(timeout=5))["e"] == "depthUpdate"


@pytest.mark.parametrize("venue", [{**rules(pong_timeout_s=1.0), "ws_ping_interval_s": 0.2}], indirect=True)
async def test_ws_server_pings_when_client_never_pongs_then_closed_while_ponging_client_stays(venue: Venue) -> None:
    silent = await venue.session.ws_connect(venue.ws_base + "/market/ws/btcusdt@aggTrade", autoping=False)
    answering = await venue.session.ws_connect(venue.ws_base + "/ws/ethusdt@depth@100ms", autoping=True)
    try:
        ping = await silent.receive(timeout=5)
        while ping.type != WSMsgType.PING:
            ping = await silent.receive(timeout=5)
        await _closed(silent, timeout_s=5)
        assert silent.close_code == 1008
        await asyncio.sleep(1.5)  # past the pong timeout: the answering client is still served
        assert not answering.closed and (await answering.receive_json(timeout=5))["e"] == "depthUpdate"
    finally:
        await silent.close()
        await answering.close()


@pytest.mark.parametrize("venue", [rules(max_incoming_per_s=5)], indirect=True)
async def test_ws_incoming_messages_when_over_the_rate_then_disconnected_and_under_it_kept(venue: Venue) -> None:
    async with venue.session.ws_connect(venue.ws_base + "/ws") as ws:
        for request_id in range(4):
            await ws.send_json({"method": "LIST_SUBSCRIPTIONS", "id": request_id})
        for _ in range(4):
            assert "result" in await ws.receive_json(timeout=5)
        await asyncio.sleep(1.1)
        for request_id in range(7):
            await ws.send_json({"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade"], "id": request_id})
        await _closed(ws, timeout_s=5)
        assert ws.close_code == 1008


@pytest.mark.parametrize("venue", [rules(max_streams=3)], indirect=True)
async def test_ws_streams_when_more_than_a_connection_allows_then_refused(venue: Venue) -> None:
    names = ["btcusdt@depth", "ethusdt@depth", "btcusdt@aggTrade", "ethusdt@aggTrade"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await venue.session.ws_connect(venue.ws_base + "/stream?streams=" + "/".join(names))
    assert refused.value.status == 400
    async with venue.session.ws_connect(venue.ws_base + "/stream?streams=" + "/".join(names[:3])) as ws:
        await ws.send_json({"method": "LIST_SUBSCRIPTIONS", "id": 6})
        assert sorted((await _reply(ws, 6))["result"]) == sorted(names[:3])
        await ws.send_json({"method": "SUBSCRIBE", "params": names[3:], "id": 7})
        # As measured on Binance: the error, then the connection closed (1008), every stream lost.
        assert await _reply(ws, 7) == {"error": {"code": 4, "msg": "Too many subscriptions"}, "id": 7}
        await _closed(ws, timeout_s=5)
        assert ws.close_code == 1008


@pytest.mark.parametrize("venue", [rules(listen_key_validity_s=1.0)], indirect=True)
async def test_listen_key_when_not_kept_alive_then_expired_event_and_key_refused(venue: Venue) -> None:
    status, body = await venue.key_only("POST", "/fapi/v1/listenKey")
    assert status == 200
    key = body["listenKey"]
    async with venue.session.ws_connect(f"{venue.ws_base}/private/ws/{key}") as ws:
        event = await ws.receive_json(timeout=5)
        assert event["e"] == "listenKeyExpired" and event["listenKey"] == key
        status, body = await venue.key_only("PUT", "/fapi/v1/listenKey")
        assert (status, body["code"]) == (400, -1125)
        # Nothing reaches the expired stream any more: an order's events are not sent to it.
        await venue.sim(
            "POST", "/_sim/orders", {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.01"}
        )
        with pytest.raises(asyncio.TimeoutError):
            await ws.receive_json(timeout=1)
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await venue.session.ws_connect(f"{venue.ws_base}/private/ws/{key}")
    status, body = await venue.key_only("POST", "/fapi/v1/listenKey")
    assert status == 200 and body["listenKey"] != key


@pytest.mark.parametrize("venue", [rules(listen_key_validity_s=1.0)], indirect=True)
async def test_listen_key_when_kept_alive_then_never_expires(venue: Venue) -> None:
    _, body = await venue.key_only("POST", "/fapi/v1/listenKey")
    async with venue.session.ws_connect(f"{venue.ws_base}/private/ws/{body['listenKey']}") as ws:
        for _ in range(6):
            await asyncio.sleep(0.4)
            status, _ = await venue.key_only("PUT", "/fapi/v1/listenKey")
            assert status == 200
        with pytest.raises(asyncio.TimeoutError):
            await ws.receive_json(timeout=0.5)


async def test_external_order_when_placed_through_the_sim_then_on_the_user_stream_and_open(venue: Venue) -> None:
    _, body = await venue.key_only("POST", "/fapi/v1/listenKey")
    _, mark, _ = await venue.get("/fapi/v1/premiumIndex", symbol="ETHUSDT")
    price = f"{float(mark['markPrice']) * 0.97:.2f}"  # resting, inside the PERCENT_PRICE band
    async with venue.session.ws_connect(f"{venue.ws_base}/private/ws/{body['listenKey']}") as ws:
        status, order = await venue.sim(
            "POST",
            "/_sim/orders",
            {
                "symbol": "ETHUSDT",
                "side": "BUY",
                "type": "LIMIT",
                "timeInForce": "GTC",
                "quantity": "0.1",
                "price": price,
            },
        )
        assert status == 200 and order["status"] == "NEW" and order["clientOrderId"].startswith("web_")
        event = await ws.receive_json(timeout=5)
        assert event["e"] == "ORDER_TRADE_UPDATE"
        assert (event["o"]["i"], event["o"]["x"], event["o"]["c"]) == (order["orderId"], "NEW", order["clientOrderId"])
    status, open_orders, _ = await venue.signed("GET", "/fapi/v1/openOrders", symbol="ETHUSDT")
    assert status == 200 and [o["orderId"] for o in open_orders] == [order["orderId"]]
    status, refused = await venue.sim("POST", "/_sim/orders", {"symbol": "ETHUSDT", "side": "BUY", "type": "LIMIT"})
    assert status == 400 and refused["code"] == -1102


@pytest.mark.parametrize("venue", [{"ban_escalation": 1.0}], indirect=True)
async def test_ip_ban_when_418_then_every_request_refused_until_retry_after_and_counted(venue: Venue) -> None:
    await venue.sim("POST", "/_sim/faults", {"kind": "http_418", "symbol": "BTCUSDT", "params": {"retry_after_s": 2}})
    status, body, headers = await venue.get("/fapi/v1/depth", symbol="BTCUSDT")
    assert (status, body["code"], headers["Retry-After"]) == (418, -1003, "2")
    for path, params in (("/fapi/v1/depth", {"symbol": "ETHUSDT"}), ("/fapi/v1/time", {}), ("/fapi/v9/nothing", {})):
        status, body, headers = await venue.get(path, **params)
        assert (status, body["code"]) == (418, -1003) and int(headers["Retry-After"]) in (1, 2)
    status, body, _ = await venue.signed("GET", "/fapi/v2/balance")
    assert status == 418
    status, state = await venue.sim("GET", "/_sim/state")  # the control API is never banned
    assert status == 200 and state["ip_ban"]["refused_during_ban"] == 4 and state["ip_ban"]["banned"]
    await eventually(lambda: _ok(venue), timeout_s=5)
    _, state = await venue.sim("GET", "/_sim/state")
    assert state["ip_ban"]["refused_during_ban"] >= 4 and not state["ip_ban"]["banned"]


@pytest.mark.parametrize("venue", [{"ban_escalation": 1.0}], indirect=True)
async def test_ip_ban_when_websocket_connects_then_refused_at_upgrade_counted_and_served_after(venue: Venue) -> None:
    await venue.sim("POST", "/_sim/faults", {"kind": "http_418", "params": {"retry_after_s": 2}})
    status, _, _ = await venue.get("/fapi/v1/time")
    assert status == 418
    for path in ("/public/stream?streams=btcusdt@depth@100ms", "/market/ws/btcusdt@aggTrade"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await venue.session.ws_connect(venue.ws_base + path)
        assert refused.value.status == 418 and int(refused.value.headers["Retry-After"]) in (1, 2)
    _, state = await venue.sim("GET", "/_sim/state")
    assert (state["ip_ban"]["refused_ws_connects"], state["ip_ban"]["refused_during_ban"]) == (2, 2)
    await eventually(lambda: _ok(venue), timeout_s=5)
    async with venue.session.ws_connect(venue.ws_base + "/public/stream?streams=btcusdt@depth@100ms") as ws:
        assert (await ws.receive_json(timeout=5))["stream"] == "btcusdt@depth@100ms"


@pytest.mark.parametrize("venue", [{"ban_escalation": 2.0}], indirect=True)
async def test_ip_ban_when_client_keeps_sending_then_banned_longer(venue: Venue) -> None:
    await venue.sim("POST", "/_sim/faults", {"kind": "http_418", "params": {"retry_after_s": 2}})
    _, _, first = await venue.get("/fapi/v1/time")
    retry_after = [int(first["Retry-After"])]
    for _ in range(3):
        _, _, headers = await venue.get("/fapi/v1/time")
        retry_after.append(int(headers["Retry-After"]))
    assert retry_after == [2, 4, 8, 16]
    await asyncio.sleep(2.5)  # the first Retry-After is long over: the grown ban is not
    status, _, _ = await venue.get("/fapi/v1/time")
    assert status == 418
    _, state = await venue.sim("GET", "/_sim/state")
    assert state["ip_ban"]["ban_s"] == 32 and state["ip_ban"]["refused_during_ban"] == 4


@pytest.mark.parametrize("venue", [{"weight_limit_1m": 20, "ban_after_429": 2, "ban_escalation": 1.0}], indirect=True)
async def test_request_weight_when_over_the_limit_then_429_and_a_client_that_keeps_on_banned(venue: Venue) -> None:
    await _not_near_a_minute_boundary()  # the weight counts in fixed wall-clock minutes, as on Binance
    _, info, _ = await venue.get("/fapi/v1/exchangeInfo")
    weight = next(r for r in info["rateLimits"] if r["rateLimitType"] == "REQUEST_WEIGHT")
    assert weight["limit"] == 20
    answers = [await venue.get("/fapi/v1/depth", symbol="BTCUSDT", limit=100) for _ in range(7)]
    statuses = [status for status, _, _ in answers]
    # depth limit=100 weighs 5: 1 (exchangeInfo) + 3 x 5 fit in 20, the next three are 429, then a ban.
    assert statuses == [200, 200, 200, 429, 429, 429, 418], statuses
    _, limited, headers = answers[3]
    assert limited["code"] == -1003 and 1 <= int(headers["Retry-After"]) <= 60
    assert int(headers["X-MBX-USED-WEIGHT-1M"]) > 20
    _, banned, headers = answers[6]
    assert banned["code"] == -1003 and 110 <= int(headers["Retry-After"]) <= 120


async def test_usage_headers_and_recv_window_when_orders_sent_then_counted_and_stale_refused(venue: Venue) -> None:
    status, _, headers = await venue.get("/fapi/v1/depth", symbol="BTCUSDT", limit=5)
    assert status == 200 and int(headers["X-MBX-USED-WEIGHT-1M"]) >= 2
    order = {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.01"}
    _, _, first = await venue.signed("POST", "/fapi/v1/order", **order)
    _, _, second = await venue.signed("POST", "/fapi/v1/order", **order)
    assert int(second["X-MBX-ORDER-COUNT-10S"]) == int(first["X-MBX-ORDER-COUNT-10S"]) + 1
    assert int(second["X-MBX-ORDER-COUNT-1M"]) == int(first["X-MBX-ORDER-COUNT-1M"]) + 1
    stale = int(time.time() * 1000) - 3_000
    status, body, _ = await venue.signed("GET", "/fapi/v2/balance", timestamp=stale, recvWindow=1000)
    assert (status, body["code"]) == (400, -1021)
    status, _, _ = await venue.signed("GET", "/fapi/v2/balance", timestamp=stale, recvWindow=10_000)
    assert status == 200


@pytest.mark.parametrize("venue", [{"conditional_orders": "algo"}], indirect=True)
async def test_conditional_order_when_triggered_then_market_order_placed_and_algo_updates(venue: Venue) -> None:
    _, body = await venue.key_only("POST", "/fapi/v1/listenKey")
    _, ticker, _ = await venue.get("/fapi/v1/ticker/price", symbol="ETHUSDT")
    trigger = f"{float(ticker['price']) * 1.02:.2f}"
    stop = {"symbol": "ETHUSDT", "side": "BUY", "type": "STOP_MARKET", "quantity": "0.1"}
    # As on Binance since 2025-12-09: conditional types only through the Algo Service.
    status, refused, _ = await venue.signed("POST", "/fapi/v1/order", **stop, stopPrice=trigger)
    assert (status, refused["code"]) == (400, -4120)
    async with venue.session.ws_connect(f"{venue.ws_base}/private/ws/{body['listenKey']}") as ws:
        status, placed, _ = await venue.signed(
            "POST", "/fapi/v1/algoOrder", **stop, algoType="CONDITIONAL", triggerPrice=trigger, clientAlgoId="stop-1"
        )
        assert status == 200 and placed["algoStatus"] == "NEW", placed
        assert (await ws.receive_json(timeout=5))["o"]["X"] == "NEW"
        await venue.sim("POST", "/_sim/faults", {"kind": "price_shift", "params": {"pct": 5, "over_s": 1}})
        events: list[dict[str, Any]] = []
        while not any(e["e"] == "ALGO_UPDATE" and e["o"]["X"] == "FINISHED" for e in events):
            events.append(await ws.receive_json(timeout=10))
        algo = [e["o"]["X"] for e in events if e["e"] == "ALGO_UPDATE"]
        assert algo == ["TRIGGERING", "TRIGGERED", "FINISHED"], events
        triggered = next(e for e in events if e["e"] == "ALGO_UPDATE" and e["o"]["X"] == "TRIGGERED")
        assert triggered["o"]["caid"] == "stop-1"
        fills = [e for e in events if e["e"] == "ORDER_TRADE_UPDATE"]
        assert fills and str(fills[0]["o"]["i"]) == triggered["o"]["ai"] and fills[0]["o"]["o"] == "MARKET"
    status, query, _ = await venue.signed("GET", "/fapi/v1/algoOrder", algoId=placed["algoId"])
    assert query["algoStatus"] == "FINISHED" and query["actualOrderId"] == triggered["o"]["ai"]
    _, positions, _ = await venue.signed("GET", "/fapi/v2/positionRisk", symbol="ETHUSDT")
    assert positions[0]["positionAmt"] == "0.1"
    status, unknown, _ = await venue.signed("DELETE", "/fapi/v1/algoOrder", algoId=placed["algoId"])
    assert (status, unknown["code"]) == (400, -2011)


async def _not_near_a_minute_boundary() -> None:
    into = time.time() % 60
    if into > 54:
        await asyncio.sleep(60.2 - into)


async def _ok(venue: Venue) -> bool:
    status, _, _ = await venue.get("/fapi/v1/time")
    return status == 200


async def _reply(ws: aiohttp.ClientWebSocketResponse, request_id: int) -> dict[str, Any]:
    while True:
        message = await ws.receive_json(timeout=5)
        if message.get("id") == request_id:
            return message

"""The venue simulator over real HTTP and WebSocket on a loopback port, as a Binance client sees it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from libs.binance.signing import sign
from libs.recordings import RECORDINGS_DIR, ReferenceBook
from services.venue_sim.adapters.replay import ReplaySource
from services.venue_sim.adapters.synthetic import SyntheticSource
from services.venue_sim.config import SimConfig
from services.venue_sim.main import build_simulator

DATA = RECORDINGS_DIR
BTC = DATA / "usdm_btcusdt_20240808.gz"
CRYPTOFEED = [DATA / "cryptofeed" / "BINANCE_FUTURES.ws.1.0", DATA / "cryptofeed" / "BINANCE_FUTURES.http.0.0"]
KEY, SECRET = "bulwark-sim-key", "bulwark-sim-secret"


@pytest.fixture(scope="module")
def btc_source() -> ReplaySource:
    return ReplaySource([BTC])


@pytest.fixture(scope="module")
def cryptofeed_source() -> ReplaySource:
    return ReplaySource(CRYPTOFEED)


class Client:
    """A tiny Binance client: signs like the official connectors do."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def public(self, path: str, **params: Any) -> tuple[int, Any, Any]:
        async with self.session.get(self.base + path, params=params) as response:
            return response.status, await response.json(content_type=None), response.headers

    async def signed(
        self, method: str, path: str, *, key: str = KEY, secret: str = SECRET, body: bool = False, **params: Any
    ) -> tuple[int, Any, Any]:
        params.setdefault("timestamp", int(time.time() * 1000))
        query = urlencode(params)
        query = f"{query}&signature={sign(query, secret)}"
        headers = {"X-MBX-APIKEY": key}
        if body:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            request = self.session.request(method, self.base + path, data=query, headers=headers)
        else:
            request = self.session.request(method, URL(f"{self.base}{path}?{query}", encoded=True), headers=headers)
        async with request as response:
            return response.status, await response.json(content_type=None), response.headers

    async def sim(self, method: str, path: str, json: Any = None) -> tuple[int, Any]:
        async with self.session.request(method, self.base + path, json=json) as response:
            return response.status, await response.json(content_type=None)


async def _start(
    source: Any, speed: float, seed: int = 7, stream_routing: str = "binance"
) -> tuple[TestServer, Client, aiohttp.ClientSession]:
    config = SimConfig(speed=speed, seed=seed, ws_ping_interval_s=0.5, stream_routing=stream_routing)
    simulator = build_simulator(config, source, "test")
    server = TestServer(simulator.build_app(), host="127.0.0.1")
    await server.start_server()
    session = aiohttp.ClientSession()
    return server, Client(session, str(server.make_url("")).rstrip("/")), session


@pytest.fixture
async def btc(btc_source: ReplaySource) -> AsyncIterator[Client]:
    server, client, session = await _start(btc_source, speed=4)
    yield client
    await session.close()
    await server.close()


def _apply(book: ReferenceBook, data: dict[str, Any]) -> None:
    book.apply(
        [(Decimal(p), Decimal(q)) for p, q in data["b"]],
        [(Decimal(p), Decimal(q)) for p, q in data["a"]],
    )
    book.last_update_id = data["u"]


async def _sync_book(client: Client, symbol: str, stream: str, diffs_wanted: int) -> tuple[ReferenceBook, int]:
    """Binance USD-M procedure against the simulator: buffer, snapshot, bridge, chain."""
    url = client.base.replace("http", "ws") + f"/stream?streams={symbol.lower()}@{stream}"
    async with client.session.ws_connect(url) as ws:
        buffered: list[dict[str, Any]] = []
        first = await ws.receive_json(timeout=10)
        buffered.append(first["data"])
        status, snapshot, _ = await client.public("/fapi/v1/depth", symbol=symbol, limit=1000)
        assert status == 200
        book = ReferenceBook(symbol, snapshot["lastUpdateId"])
        book.apply(
            [(Decimal(p), Decimal(q)) for p, q in snapshot["bids"]],
            [(Decimal(p), Decimal(q)) for p, q in snapshot["asks"]],
        )
        previous: int | None = None
        applied = 0
        while applied < diffs_wanted:
            if buffered:
                data = buffered.pop(0)
            else:
                data = (await ws.receive_json(timeout=10))["data"]
            if previous is None:
                if data["u"] < book.last_update_id:
                    continue
                assert data["U"] <= book.last_update_id <= data["u"]
            else:
                assert data["pu"] == previous, "the simulator's diffs must chain"
            _apply(book, data)
            previous = data["u"]
            applied += 1
        return book, previous  # type: ignore[return-value]


async def _assert_same_book(client: Client, symbol: str, book: ReferenceBook, update_id: int) -> None:
    status, sim_book = await client.sim("GET", f"/_sim/book/{symbol}?depth=50&update_id={update_id}")
    assert status == 200, sim_book
    bids, asks = book.top(50)
    assert sim_book["bids"] == [[str(p), str(q)] for p, q in bids]
    assert sim_book["asks"] == [[str(p), str(q)] for p, q in asks]


async def test_snapshot_plus_ws_diffs_when_replaying_then_equal_the_simulator_book(btc: Client) -> None:
    book, last = await _sync_book(btc, "BTCUSDT", "depth@0ms", diffs_wanted=40)
    await _assert_same_book(btc, "BTCUSDT", book, last)


async def test_aggregated_100ms_diffs_when_applied_then_equal_the_simulator_book(btc: Client) -> None:
    book, last = await _sync_book(btc, "BTCUSDT", "depth@100ms", diffs_wanted=8)
    await _assert_same_book(btc, "BTCUSDT", book, last)


async def test_replay_when_recording_ends_then_loops_with_unbroken_chain(cryptofeed_source: ReplaySource) -> None:
    server, client, session = await _start(cryptofeed_source, speed=0)
    try:
        # 253 diffs per loop for SUSHIUSDT: 700 diffs cross at least two loop joins.
        book, last = await _sync_book(client, "SUSHIUSDT", "depth@0ms", diffs_wanted=700)
        await client.sim("POST", "/_sim/pause")
        await _assert_same_book(client, "SUSHIUSDT", book, last)
    finally:
        await session.close()
        await server.close()


async def test_public_endpoints_when_called_then_binance_shaped_with_weights(btc: Client) -> None:
    status, _, headers = await btc.public("/fapi/v1/ping")
    assert status == 200 and headers["X-MBX-USED-WEIGHT-1M"] == "1"
    status, info, _ = await btc.public("/fapi/v1/exchangeInfo")
    filters = {f["filterType"]: f for f in info["symbols"][0]["filters"]}
    assert filters["PRICE_FILTER"]["tickSize"] == "0.10" and filters["LOT_SIZE"]["stepSize"] == "0.001"
    _, _, before = await btc.public("/fapi/v1/time")
    _, depth, after = await btc.public("/fapi/v1/depth", symbol="BTCUSDT", limit=1000)
    assert int(after["X-MBX-USED-WEIGHT-1M"]) - int(before["X-MBX-USED-WEIGHT-1M"]) == 20
    assert len(depth["bids"]) == 1000 and Decimal(depth["bids"][0][0]) < Decimal(depth["asks"][0][0])
    status, error, _ = await btc.public("/fapi/v1/depth", symbol="NOPE")
    assert (status, error["code"]) == (400, -1121)
    status, error, _ = await btc.public("/fapi/v1/depth", symbol="BTCUSDT", limit="abc")
    assert (status, error["code"]) == (400, -1100)
    _, premium, _ = await btc.public("/fapi/v1/premiumIndex", symbol="BTCUSDT")
    assert Decimal(premium["markPrice"]) > 0 and premium["nextFundingTime"] > 0
    _, ticker, _ = await btc.public("/fapi/v1/ticker/bookTicker", symbol="BTCUSDT")
    assert Decimal(ticker["bidPrice"]) < Decimal(ticker["askPrice"])
    trades: list[dict[str, Any]] = []
    for _ in range(50):  # the replay prints aggregate trades within moments
        _, trades, _ = await btc.public("/fapi/v1/aggTrades", symbol="BTCUSDT", limit=1000)
        if len(trades) >= 3:
            break
        await asyncio.sleep(0.1)
    ids = [row["a"] for row in trades]
    assert len(ids) >= 3 and ids == list(range(ids[0], ids[0] + len(ids)))
    _, backfill, _ = await btc.public("/fapi/v1/aggTrades", symbol="BTCUSDT", fromId=ids[1], limit=1)
    assert [row["a"] for row in backfill] == [ids[1]] and backfill[0]["f"] <= backfill[0]["l"]
    status, error, _ = await btc.public("/fapi/v1/aggTrades", symbol="BTCUSDT", limit=0)
    assert (status, error["code"]) == (400, -1100)


async def test_signed_request_when_key_signature_or_time_wrong_then_binance_errors(btc: Client) -> None:
    status, body, _ = await btc.signed("GET", "/fapi/v2/balance", key="wrong")
    assert (status, body["code"]) == (401, -2015)
    status, body, _ = await btc.signed("GET", "/fapi/v2/balance", secret="wrong")
    assert (status, body["code"]) == (400, -1022)
    status, body, _ = await btc.signed("GET", "/fapi/v2/balance", timestamp=int(time.time() * 1000) - 60_000)
    assert (status, body["code"]) == (400, -1021)
    status, body, _ = await btc.signed("GET", "/fapi/v2/balance", body=False)
    assert status == 200 and body[0]["balance"] == "100000.00000000"


async def test_market_order_when_filled_then_fills_walk_the_book_levels(btc: Client) -> None:
    await btc.sim("POST", "/_sim/pause")
    _, depth, _ = await btc.public("/fapi/v1/depth", symbol="BTCUSDT", limit=5)
    asks = [(Decimal(p), Decimal(q)) for p, q in depth["asks"]]
    bids = [(Decimal(p), Decimal(q)) for p, q in depth["bids"]]
    quantity = asks[0][1] + asks[1][1] / 2
    quantity = quantity.quantize(Decimal("0.001"))
    status, order, headers = await btc.signed(
        "POST",
        "/fapi/v1/order",
        body=True,
        symbol="BTCUSDT",
        side="BUY",
        type="MARKET",
        quantity=str(quantity),
        newClientOrderId="mkt-1",
        newOrderRespType="RESULT",
    )
    assert status == 200, order
    assert order["status"] == "FILLED" and Decimal(order["executedQty"]) == quantity
    assert headers["X-MBX-ORDER-COUNT-10S"] == "1"
    _, state = await btc.sim("GET", "/_sim/state")
    fills = [f for f in state["fills"] if f["client_order_id"] == "mkt-1"]
    assert [(Decimal(f["price"]), Decimal(f["quantity"])) for f in fills] == [
        (asks[0][0], asks[0][1]),
        (asks[1][0], quantity - asks[0][1]),
    ]
    assert state["positions"][0]["quantity"] == str(quantity)
    # An open order's client id cannot be used again (Binance: unique among open orders).
    resting = dict(symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="GTC", quantity="0.01")
    status, order, _ = await btc.signed(
        "POST", "/fapi/v1/order", price=str(bids[-1][0]), newClientOrderId="rest-1", **resting
    )
    assert status == 200 and order["status"] == "NEW", order
    status, dup, _ = await btc.signed(
        "POST", "/fapi/v1/order", price=str(bids[-1][0]), newClientOrderId="rest-1", **resting
    )
    assert (status, dup) == (400, {"code": -4116, "msg": "ClientOrderId is duplicated."})
    status, risk, _ = await btc.signed("GET", "/fapi/v2/positionRisk", symbol="BTCUSDT")
    assert risk[0]["positionAmt"] == str(quantity)


async def test_order_validation_when_params_bad_then_binance_codes(btc: Client) -> None:
    base = {"symbol": "BTCUSDT", "side": "BUY"}
    cases = [
        ({**base, "type": "MARKET"}, -1102),
        ({**base, "type": "MARKET", "quantity": "0.01", "price": "100"}, -1106),
        ({**base, "type": "MARKET", "quantity": "0"}, -4003),
        ({**base, "type": "MARKET", "quantity": "0.0001"}, -1111),
        ({**base, "type": "MARKET", "quantity": "0.001"}, -4164),
        ({**base, "type": "LIMIT", "quantity": "0.01", "price": "50000.05", "timeInForce": "GTC"}, -1111),
        ({**base, "type": "MARKET", "quantity": "0.01", "reduceOnly": "true"}, -2022),
        ({**base, "type": "MARKET", "quantity": "100"}, -2019),
        ({**base, "type": "MARKET", "quantity": "0.01", "newClientOrderId": "bad id!"}, -1100),
        ({**base, "type": "BOGUS", "quantity": "0.01"}, -1116),
    ]
    for params, code in cases:
        status, body, _ = await btc.signed("POST", "/fapi/v1/order", **params)
        assert (status, body["code"]) == (400, code), (params, body)
    status, body, _ = await btc.signed("DELETE", "/fapi/v1/order", symbol="BTCUSDT", orderId=1)
    assert (status, body["code"]) == (400, -2011)
    status, body, _ = await btc.signed("GET", "/fapi/v1/order", symbol="BTCUSDT", origClientOrderId="nope")
    assert (status, body) == (400, {"code": -2013, "msg": "Order does not exist."})


async def test_resting_limit_when_countdown_expires_then_cancelled_and_user_stream_told(btc: Client) -> None:
    _, key, _ = await btc.signed("POST", "/fapi/v1/listenKey")
    listen_key = key["listenKey"]
    async with btc.session.ws_connect(btc.base.replace("http", "ws") + f"/private/ws/{listen_key}") as user_ws:
        _, depth, _ = await btc.public("/fapi/v1/depth", symbol="BTCUSDT", limit=5)
        far_bid = (Decimal(depth["bids"][0][0]) * Decimal("0.97")).quantize(Decimal("0.1"))  # resting, in the band
        status, order, _ = await btc.signed(
            "POST",
            "/fapi/v1/order",
            symbol="BTCUSDT",
            side="BUY",
            type="LIMIT",
            timeInForce="GTC",
            quantity="0.01",
            price=str(far_bid),
            newClientOrderId="rest-1",
        )
        assert status == 200 and order["status"] == "NEW"
        event = await user_ws.receive_json(timeout=5)
        assert event["e"] == "ORDER_TRADE_UPDATE" and event["o"]["x"] == "NEW" and event["o"]["c"] == "rest-1"
        _, open_orders, _ = await btc.signed("GET", "/fapi/v1/openOrders", symbol="BTCUSDT")
        assert [o["clientOrderId"] for o in open_orders] == ["rest-1"]
        status, armed, _ = await btc.signed("POST", "/fapi/v1/countdownCancelAll", symbol="BTCUSDT", countdownTime=300)
        assert armed == {"symbol": "BTCUSDT", "countdownTime": "300"}
        event = await user_ws.receive_json(timeout=5)
        assert event["o"]["X"] == "CANCELED"
    _, open_orders, _ = await btc.signed("GET", "/fapi/v1/openOrders", symbol="BTCUSDT")
    assert open_orders == []


async def test_ws_subscribe_and_trades_when_requested_then_answered_and_streamed(btc: Client) -> None:
    async with btc.session.ws_connect(btc.base.replace("http", "ws") + "/market/ws") as ws:
        await ws.send_json({"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade", "btcusdt@markPrice@1s"], "id": 3})
        seen: set[str] = set()
        reply = None
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and (reply is None or len(seen) < 2):
            message = await ws.receive_json(timeout=5)
            if "id" in message:
                reply = message
            else:
                seen.add(message["data"]["e"])
        assert reply == {"result": None, "id": 3}
        assert seen == {"aggTrade", "markPriceUpdate"}


async def _fault(client: Client, **spec: Any) -> str:
    status, body = await client.sim("POST", "/_sim/faults", json=spec)
    assert status == 200, body
    return body["id"]


async def test_http_faults_when_scheduled_then_rest_answers_change_and_sim_api_unaffected(btc: Client) -> None:
    status, body = await btc.sim("POST", "/_sim/faults", json={"kind": "nonsense"})
    assert status == 400 and "unknown fault kind" in body["error"]
    status, body = await btc.sim("POST", "/_sim/faults", json={"kind": "corrupt", "params": {"mode": "x"}})
    assert status == 400
    await _fault(btc, kind="http_429", count=1, params={"retry_after_s": 3})
    status, body, headers = await btc.public("/fapi/v1/time")
    assert (status, body["code"], headers["Retry-After"]) == (429, -1003, "3")
    assert "X-MBX-USED-WEIGHT-1M" in headers
    status, _, _ = await btc.public("/fapi/v1/time")
    assert status == 200
    outage = await _fault(btc, kind="outage")
    status, _, _ = await btc.public("/fapi/v1/time")
    assert status == 503
    status, _ = await btc.sim("GET", "/_sim/state")
    assert status == 200
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await btc.session.ws_connect(btc.base.replace("http", "ws") + "/ws/btcusdt@depth")
    status, _ = await btc.sim("DELETE", f"/_sim/faults/{outage}")
    assert status == 200
    status, _, _ = await btc.public("/fapi/v1/time")
    assert status == 200
    # The order path down, market data flowing (FM-N6 failover): REST 503, streams still served.
    rest_outage = await _fault(btc, kind="rest_outage")
    status, body, _ = await btc.signed(
        "POST", "/fapi/v1/order", symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.01"
    )
    assert (status, body["code"]) == (503, -1001)
    ws = await btc.session.ws_connect(btc.base.replace("http", "ws") + "/ws/btcusdt@depth")
    assert (await ws.receive_json(timeout=10))["e"] == "depthUpdate"
    await ws.close()
    status, _ = await btc.sim("DELETE", f"/_sim/faults/{rest_outage}")
    assert status == 200
    await _fault(btc, kind="order_reject", params={"code": -2010, "msg": "NEW_ORDER_REJECTED"})
    status, body, _ = await btc.signed(
        "POST", "/fapi/v1/order", symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.01"
    )
    assert (status, body["code"]) == (400, -2010)


async def test_order_timeout_placed_when_answer_never_comes_then_order_exists(btc: Client) -> None:
    await _fault(btc, kind="order_timeout_placed", params={"ms": 3000})
    with pytest.raises(asyncio.TimeoutError):
        async with asyncio.timeout(1):
            await btc.signed(
                "POST",
                "/fapi/v1/order",
                symbol="BTCUSDT",
                side="BUY",
                type="MARKET",
                quantity="0.01",
                newClientOrderId="amb-1",
            )
    status, order, _ = await btc.signed("GET", "/fapi/v1/order", symbol="BTCUSDT", origClientOrderId="amb-1")
    assert status == 200 and order["status"] == "FILLED"


async def test_partial_fill_fault_when_market_order_then_part_filled_rest_expired(btc: Client) -> None:
    await _fault(btc, kind="partial_fill", params={"ratio": "0.5"})
    status, order, _ = await btc.signed(
        "POST",
        "/fapi/v1/order",
        symbol="BTCUSDT",
        side="SELL",
        type="MARKET",
        quantity="0.010",
        newOrderRespType="RESULT",
    )
    assert status == 200 and order["status"] == "EXPIRED" and order["executedQty"] == "0.005"


async def test_ws_faults_when_scheduled_then_stream_is_damaged(btc: Client) -> None:
    url = btc.base.replace("http", "ws") + "/stream?streams=btcusdt@depth@0ms"
    async with btc.session.ws_connect(url) as ws:
        previous = (await ws.receive_json(timeout=10))["data"]["u"]
        await _fault(btc, kind="drop_depth", symbol="BTCUSDT", count=1)
        gaps = 0
        for _ in range(8):
            data = (await ws.receive_json(timeout=10))["data"]
            gaps += data["pu"] != previous
            previous = data["u"]
        assert gaps == 1, "exactly one dropped diff shows as one chain break"
        await _fault(btc, kind="corrupt", symbol="BTCUSDT", params={"mode": "truncated"})
        damaged = 0
        for _ in range(5):
            message = await ws.receive(timeout=10)
            try:
                json.loads(message.data)
            except ValueError:
                damaged += 1
        assert damaged == 1
        await _fault(btc, kind="ws_close", params={"code": 1001})
        closing = await ws.receive(timeout=5)
        while closing.type == aiohttp.WSMsgType.TEXT:
            closing = await ws.receive(timeout=5)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 1001


async def test_synthetic_source_when_synced_then_book_matches_and_is_deep() -> None:
    server, client, session = await _start(SyntheticSource(["BTCUSDT", "ETHUSDT"], seed=3), speed=1)
    try:
        book, last = await _sync_book(client, "ETHUSDT", "depth@100ms", diffs_wanted=5)
        await _assert_same_book(client, "ETHUSDT", book, last)
        bids, asks = book.top(60)
        assert len(bids) >= 50 and len(asks) >= 50
        assert bids[0][0] < asks[0][0]
    finally:
        await session.close()
        await server.close()


async def test_price_shift_when_scheduled_then_stream_book_marks_and_rest_move_together() -> None:
    # One socket carries diffs and marks (`any` routing), so the chaining is checked across the shift.
    server, client, session = await _start(
        SyntheticSource(["BTCUSDT", "ETHUSDT"], seed=3), speed=1, stream_routing="any"
    )
    symbol = "ETHUSDT"
    try:
        _, premium_before, _ = await client.public("/fapi/v1/premiumIndex", symbol=symbol)
        before = Decimal(premium_before["markPrice"])
        url = client.base.replace("http", "ws") + "/stream?streams=ethusdt@depth@100ms/ethusdt@markPrice@1s"
        async with session.ws_connect(url) as ws:
            status, answer = await client.sim(
                "POST", "/_sim/faults", {"kind": "price_shift", "symbol": symbol, "params": {"pct": 25, "over_s": 1}}
            )
            assert status == 200, answer
            marks: list[Decimal] = []
            last_u = 0
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not (marks and marks[-1] > before * Decimal("1.24")):
                frame = await ws.receive_json(timeout=10)
                if frame["stream"].endswith("markPrice@1s"):
                    marks.append(Decimal(frame["data"]["p"]))
                else:
                    assert last_u == 0 or frame["data"]["pu"] == last_u, "diffs keep chaining through the shift"
                    last_u = frame["data"]["u"]
        assert marks and marks[-1] > before * Decimal("1.24"), (before, marks)
        book, last = await _sync_book(client, symbol, "depth@100ms", diffs_wanted=3)
        await _assert_same_book(client, symbol, book, last)
        bids, asks = book.top(60)
        assert len(bids) >= 50 and len(asks) >= 50 and bids[0][0] < asks[0][0]  # the old ladder is gone
        _, premium, _ = await client.public("/fapi/v1/premiumIndex", symbol=symbol)
        _, ticker, _ = await client.public("/fapi/v1/ticker/price", symbol=symbol)
        for moved in (Decimal(premium["markPrice"]), Decimal(ticker["price"]), (bids[0][0] + asks[0][0]) / 2):
            assert Decimal("1.22") < moved / before < Decimal("1.28"), (before, moved)
        _, faults = await client.sim("GET", "/_sim/faults")
        assert [fault["state"] for fault in faults["faults"]] == ["expired"]  # one shift, handed over
    finally:
        await session.close()
        await server.close()


async def test_price_shift_when_replaying_then_refused(btc: Client) -> None:
    status, answer = await btc.sim("POST", "/_sim/faults", {"kind": "price_shift"})
    assert status == 400 and "synthetic" in answer["error"], answer


# --------------------------------------------------------------------------- spot

SPOT_BTC = [DATA / "spot_btcusdt_20240808.gz", DATA / "spot_btcusdt_20240809.gz"]
CRYPTOFEED_SPOT = [DATA / "cryptofeed" / "BINANCE.ws.1.0", DATA / "cryptofeed" / "BINANCE.http.0.0"]


async def _sync_spot_book(client: Client, symbol: str, diffs_wanted: int) -> tuple[ReferenceBook, int]:
    """Binance spot procedure against the simulator: buffer, snapshot, drop `u <= L`, bridge
    `U <= L + 1 <= u`, then `U == previous u + 1`."""
    url = client.base.replace("http", "ws") + f"/stream?streams={symbol.lower()}@depth@100ms"
    async with client.session.ws_connect(url) as ws:
        buffered = [(await ws.receive_json(timeout=10))["data"]]
        status, snapshot, headers = await client.public("/api/v3/depth", symbol=symbol, limit=1000)
        assert status == 200 and set(snapshot) == {"lastUpdateId", "bids", "asks"}
        assert headers["X-MBX-USED-WEIGHT-1M"] == "50"
        book = ReferenceBook(symbol, snapshot["lastUpdateId"])
        book.apply(
            [(Decimal(p), Decimal(q)) for p, q in snapshot["bids"]],
            [(Decimal(p), Decimal(q)) for p, q in snapshot["asks"]],
        )
        previous: int | None = None
        applied = 0
        while applied < diffs_wanted:
            data = buffered.pop(0) if buffered else (await ws.receive_json(timeout=10))["data"]
            assert "pu" not in data and "T" not in data, "spot depth events carry neither pu nor T"
            if previous is None:
                if data["u"] <= book.last_update_id:
                    continue
                assert data["U"] <= book.last_update_id + 1 <= data["u"]
            else:
                assert data["U"] == previous + 1, "the simulator's spot diffs must chain"
            _apply(book, data)
            previous = data["u"]
            applied += 1
        return book, previous  # type: ignore[return-value]


async def test_spot_replay_when_synced_with_spot_procedure_then_equals_simulator_book_and_spot_rest_answers() -> None:
    server, client, session = await _start(ReplaySource(SPOT_BTC), speed=4)
    try:
        book, last = await _sync_spot_book(client, "BTCUSDT", diffs_wanted=8)
        await _assert_same_book(client, "BTCUSDT", book, last)
        status, state = await client.sim("GET", "/_sim/state")
        assert state["market"] == "spot"
        status, server_time, _ = await client.public("/api/v3/time")
        assert status == 200 and abs(server_time["serverTime"] - time.time() * 1000) < 5000
        url = client.base.replace("http", "ws") + "/stream?streams=btcusdt@trade/btcusdt@markPrice@1s"
        async with client.session.ws_connect(url) as ws:
            trades = [(await ws.receive_json(timeout=10)) for _ in range(5)]
        assert {t["stream"] for t in trades} == {"btcusdt@trade"}, "spot has no mark price stream"
        assert all(t["data"]["M"] is True and "X" not in t["data"] for t in trades)
        ids = [t["data"]["t"] for t in trades]
        assert ids == list(range(ids[0], ids[0] + 5)), "spot trade ids are consecutive"
        status, rows, _ = await client.public("/api/v3/historicalTrades", symbol="BTCUSDT", fromId=ids[1], limit=3)
        assert status == 200 and [row["id"] for row in rows] == ids[1:4]
        status, ticker, _ = await client.public("/api/v3/ticker/price", symbol="BTCUSDT")
        assert status == 200 and set(ticker) == {"symbol", "price"} and Decimal(ticker["price"]) > 0
        status, info, _ = await client.public("/api/v3/exchangeInfo")
        assert status == 200 and info["symbols"][0]["quoteAsset"] == "USDT"
        # Orders go to the USD-M paths under spot's own rules: cent ticks, and fills reported at
        # the exact book prices (a USD-M 0.1 tick would cut 61828.26 to 61828.2).
        status, info, _ = await client.public("/fapi/v1/exchangeInfo")
        price_filter = next(f for f in info["symbols"][0]["filters"] if f["filterType"] == "PRICE_FILTER")
        assert Decimal(price_filter["tickSize"]) == Decimal("0.01")
        await client.sim("POST", "/_sim/pause")
        status, depth, _ = await client.public("/api/v3/depth", symbol="BTCUSDT", limit=5)
        asks = [(Decimal(p), Decimal(q)) for p, q in depth["asks"]]
        into_second = min(asks[1][1], Decimal("0.001"))  # >= 61 USDT in all: above the 5 USDT minimum
        quantity = asks[0][1] + into_second
        status, body, _ = await client.signed(
            "POST", "/fapi/v1/order", symbol="BTCUSDT", side="BUY", type="MARKET", quantity=str(quantity)
        )
        assert status == 200, body
        status, trades, _ = await client.signed("GET", "/fapi/v1/userTrades", symbol="BTCUSDT")
        assert [(Decimal(t["price"]), Decimal(t["qty"])) for t in trades] == [
            (asks[0][0], asks[0][1]),
            (asks[1][0], into_second),
        ]
    finally:
        await session.close()
        await server.close()


async def test_spot_replay_when_several_symbols_loop_then_chain_unbroken_and_every_symbol_served() -> None:
    server, client, session = await _start(ReplaySource(CRYPTOFEED_SPOT), speed=20)
    try:
        # A 30 s loop lasts 1.5 s at speed 20, ~15 windows of 100 ms: 45 diffs cross two loop joins.
        book, last = await _sync_spot_book(client, "NKNUSDT", diffs_wanted=45)
        await client.sim("POST", "/_sim/pause")
        await _assert_same_book(client, "NKNUSDT", book, last)
        for symbol in ("BLZETH", "LRCBTC", "RUNEEUR"):
            status, snapshot, _ = await client.public("/api/v3/depth", symbol=symbol, limit=5)
            assert status == 200 and len(snapshot["bids"]) == 5, symbol
        status, body, _ = await client.public("/api/v3/depth", symbol="NOPEUSDT")
        assert status == 400 and body["code"] == -1121
    finally:
        await session.close()
        await server.close()

"""Standard Binance USD-M client libraries, unchanged, against a real simulator process (SPEC §10).

Two independent clients from PyPI drive the simulator exactly as they would drive Binance: Binance's
own connector (`binance-sdk-derivatives-trading-usds-futures`) and `python-binance`. Only their base
URLs point at the simulator. Each test is a call a trader's tool makes; a client that fails to talk
to the simulator, or reads a field it does not find, fails the test.
"""

from __future__ import annotations

import asyncio
import json
import time
import warnings
from collections.abc import Callable, Iterator
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

import binance_common.utils
import pytest
import requests

with warnings.catch_warnings():
    # python-binance imports a name that `websockets` marks deprecated; the warning is not ours.
    warnings.simplefilter("ignore", DeprecationWarning)
    from binance import AsyncClient, BinanceSocketManager
    from binance import Client as PythonBinance
    from binance.exceptions import BinanceAPIException
from binance_common.configuration import ConfigurationRestAPI, ConfigurationWebSocketStreams
from binance_common.errors import BadRequestError, RateLimitBanError, TooManyRequestsError
from binance_sdk_derivatives_trading_usds_futures.derivatives_trading_usds_futures import DerivativesTradingUsdsFutures
from binance_sdk_derivatives_trading_usds_futures.rest_api.models import (
    KlineCandlestickDataIntervalEnum,
    NewAlgoOrderAlgoTypeEnum,
    NewAlgoOrderSideEnum,
    NewAlgoOrderTypeEnum,
    NewOrderSideEnum,
    NewOrderTimeInForceEnum,
    NewOrderTypeEnum,
)

from entrypoints.harness.venue import running_venue_sim
from tests.support.polling import eventually, eventually_blocking

KEY, SECRET = "bulwark-sim-key", "bulwark-sim-secret"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def venue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One simulator process (synthetic market, BTCUSDT and ETHUSDT) for the module."""
    with running_venue_sim(tmp_path_factory.mktemp("sim-clients"), "--source", "synthetic") as url:
        yield url


def sim(venue: str, method: str, path: str, body: Any = None) -> Any:
    """The simulator's own control API."""
    response = requests.request(method, venue + path, json=body, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def python_binance(venue: str) -> Iterator[Callable[..., PythonBinance]]:
    """Makes python-binance clients of the simulator; closes them and the event loop they take."""
    # The synchronous client runs on the thread's event loop, creating one when there is none:
    # give it one this test owns, so it is closed afterwards.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    clients: list[PythonBinance] = []

    def make(secret: str = SECRET) -> PythonBinance:
        client = PythonBinance(KEY, secret, ping=False, requests_params={"timeout": 10})
        client.FUTURES_URL = venue + "/fapi"
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close_connection()
    asyncio.set_event_loop(None)
    loop.close()


def official(venue: str, secret: str = SECRET) -> DerivativesTradingUsdsFutures:
    config = ConfigurationRestAPI(api_key=KEY, api_secret=secret, base_path=venue, timeout=10_000, retries=0)
    return DerivativesTradingUsdsFutures(config_rest_api=config)


def resting_price(venue: str, symbol: str, side: str) -> Decimal:
    """A price 3 % away from the mark on the passive side, on the tick grid: the order rests."""
    mark = Decimal(
        requests.get(f"{venue}/fapi/v1/premiumIndex", params={"symbol": symbol}, timeout=10).json()["markPrice"]
    )
    info = requests.get(f"{venue}/fapi/v1/exchangeInfo", timeout=10).json()
    rules = next(s for s in info["symbols"] if s["symbol"] == symbol)
    tick = Decimal(next(f for f in rules["filters"] if f["filterType"] == "PRICE_FILTER")["tickSize"])
    factor = Decimal("0.97") if side == "BUY" else Decimal("1.03")
    return (mark * factor / tick).to_integral_value(rounding=ROUND_DOWN) * tick


# ===================================================================== python-binance
def test_python_binance_market_data_when_read_then_binance_shaped(
    venue: str, python_binance: Callable[..., PythonBinance]
) -> None:
    client = python_binance()
    assert client.futures_ping() == {}
    assert abs(client.futures_time()["serverTime"] - time.time() * 1000) < 5_000
    info = client.futures_exchange_info()
    assert {s["symbol"] for s in info["symbols"]} == {"BTCUSDT", "ETHUSDT"}
    book = client.futures_order_book(symbol="BTCUSDT", limit=10)
    assert len(book["bids"]) == 10 and Decimal(book["bids"][0][0]) < Decimal(book["asks"][0][0])
    mark = client.futures_mark_price(symbol="BTCUSDT")
    assert Decimal(mark["markPrice"]) > 0 and "lastFundingRate" in mark
    assert Decimal(client.futures_open_interest(symbol="BTCUSDT")["openInterest"]) > 0
    klines = eventually_blocking(lambda: client.futures_klines(symbol="BTCUSDT", interval="1m", limit=5))
    open_time, high, low, volume = klines[-1][0], Decimal(klines[-1][2]), Decimal(klines[-1][3]), klines[-1][5]
    assert open_time % 60_000 == 0 and high >= low and Decimal(volume) >= 0
    assert klines[-1][6] == open_time + 59_999
    day = client.futures_ticker(symbol="BTCUSDT")
    assert Decimal(day["highPrice"]) >= Decimal(day["lowPrice"]) > 0 and day["count"] > 0


def test_python_binance_account_when_read_then_balance_positions_brackets_fees_and_mode(
    venue: str, python_binance: Callable[..., PythonBinance]
) -> None:
    client = python_binance()
    balance = client.futures_account_balance()
    assert next(b for b in balance if b["asset"] == "USDT")["availableBalance"]
    account = client.futures_account()
    assert account["canTrade"] is True and Decimal(account["totalWalletBalance"]) > 0
    positions = client.futures_position_information(symbol="ETHUSDT")
    assert positions[0]["symbol"] == "ETHUSDT" and positions[0]["positionSide"] == "BOTH"
    brackets = client.futures_leverage_bracket(symbol="BTCUSDT")
    assert brackets["brackets"][0]["initialLeverage"] == 125
    assert len(client.futures_leverage_bracket()) == 2
    rates = client.futures_commission_rate(symbol="BTCUSDT")
    assert Decimal(rates["takerCommissionRate"]) > Decimal(rates["makerCommissionRate"]) > 0
    assert client.futures_get_position_mode() == {"dualSidePosition": False}
    assert client.futures_v1_get_rate_limit_order() == [
        {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
        {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
    ]


def test_python_binance_leverage_when_changed_then_positions_show_it_and_bad_value_refused(
    venue: str, python_binance: Callable[..., PythonBinance]
) -> None:
    client = python_binance()
    answer = client.futures_change_leverage(symbol="ETHUSDT", leverage=7)
    assert answer["leverage"] == 7 and answer["symbol"] == "ETHUSDT" and int(answer["maxNotionalValue"]) > 0
    assert client.futures_position_information(symbol="ETHUSDT")[0]["leverage"] == "7"
    with pytest.raises(BinanceAPIException) as refused:
        client.futures_change_leverage(symbol="ETHUSDT", leverage=500)
    assert (refused.value.status_code, refused.value.code) == (400, -4028)


def test_python_binance_orders_when_placed_queried_cancelled_and_batched_then_venue_agrees(
    venue: str, python_binance: Callable[..., PythonBinance]
) -> None:
    client = python_binance()
    price = resting_price(venue, "BTCUSDT", "BUY")
    placed = client.futures_create_order(
        symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="GTC", quantity="0.01", price=str(price)
    )
    assert placed["status"] == "NEW"
    order_id = placed["orderId"]
    assert client.futures_get_order(symbol="BTCUSDT", orderId=order_id)["status"] == "NEW"
    assert order_id in [o["orderId"] for o in client.futures_get_open_orders(symbol="BTCUSDT")]
    assert client.futures_cancel_order(symbol="BTCUSDT", orderId=order_id)["status"] == "CANCELED"
    history = client.futures_get_all_orders(symbol="BTCUSDT")
    assert next(o for o in history if o["orderId"] == order_id)["status"] == "CANCELED"

    batch = client.futures_place_batch_order(
        batchOrders=[
            {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.01",
             "price": str(price), "newClientOrderId": "pb-batch-1"},
            {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.01",
             "price": str(price + Decimal("0.05"))},
        ]
    )  # fmt: skip
    assert batch[0]["clientOrderId"] == "pb-batch-1" and batch[0]["status"] == "NEW"
    assert batch[1]["code"] == -1111  # finer than the price precision: refused alone, the batch goes on
    # python-binance signs a list parameter as Python prints it ("[1, 2]") but sends it percent-encoded;
    # Binance refuses such a signature (-1022) since 2026-01-15 and so does the simulator: send JSON text.
    id_list = json.dumps([batch[0]["orderId"], 1], separators=(",", ":"))
    cancelled = client.futures_cancel_orders(symbol="BTCUSDT", orderIdList=id_list)
    assert cancelled[0]["status"] == "CANCELED" and cancelled[1]["code"] == -2011

    client.futures_create_order(
        symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="GTC", quantity="0.01", price=str(price)
    )
    armed = client.futures_countdown_cancel_all(symbol="BTCUSDT", countdownTime=300)
    assert armed == {"symbol": "BTCUSDT", "countdownTime": "300"}
    eventually_blocking(lambda: not client.futures_get_open_orders(symbol="BTCUSDT"), timeout_s=15)


def test_python_binance_conditional_order_when_placed_then_algo_service_queried_and_cancelled(
    venue: str, python_binance: Callable[..., PythonBinance]
) -> None:
    client = python_binance()
    trigger = resting_price(venue, "ETHUSDT", "SELL")  # a buy stop 3 % above the market waits
    # python-binance sends conditional types to /fapi/v1/algoOrder, as Binance requires since 2025-12-09.
    placed = client.futures_create_order(
        symbol="ETHUSDT", side="BUY", type="STOP_MARKET", stopPrice=str(trigger), quantity="0.05"
    )
    assert (
        placed["algoStatus"] == "NEW" and placed["orderType"] == "STOP_MARKET" and placed["algoType"] == "CONDITIONAL"
    )
    assert client.futures_get_order(symbol="ETHUSDT", algoId=placed["algoId"])["triggerPrice"] == str(trigger)
    assert [o["algoId"] for o in client.futures_get_open_orders(symbol="ETHUSDT", conditional=True)] == [
        placed["algoId"]
    ]
    cancelled = client.futures_cancel_order(symbol="ETHUSDT", algoId=placed["algoId"])
    assert cancelled["algoId"] == placed["algoId"]
    history = client.futures_get_all_orders(symbol="ETHUSDT", conditional=True)
    assert next(o for o in history if o["algoId"] == placed["algoId"])["algoStatus"] == "CANCELED"
    assert client.futures_get_open_orders(symbol="ETHUSDT", conditional=True) == []


def test_python_binance_errors_when_signature_clock_or_order_wrong_then_binance_codes(
    venue: str, python_binance: Callable[..., PythonBinance]
) -> None:
    with pytest.raises(BinanceAPIException) as bad_signature:
        python_binance(secret="not-the-secret").futures_account()
    assert (bad_signature.value.status_code, bad_signature.value.code) == (400, -1022)
    skewed = python_binance()
    skewed.timestamp_offset = -60_000  # a clock one minute behind: outside the 5 s recvWindow
    with pytest.raises(BinanceAPIException) as skew:
        skewed.futures_account()
    assert (skew.value.status_code, skew.value.code) == (400, -1021)
    client = python_binance()
    with pytest.raises(BinanceAPIException) as unknown:
        client.futures_get_order(symbol="BTCUSDT", orderId=1)
    assert (unknown.value.status_code, unknown.value.code) == (400, -2013)
    with pytest.raises(BinanceAPIException) as cancel_unknown:
        client.futures_cancel_order(symbol="BTCUSDT", orderId=1)
    assert (cancel_unknown.value.status_code, cancel_unknown.value.code) == (400, -2011)
    with pytest.raises(BinanceAPIException) as no_such_path:
        client.futures_position_information(version=1)  # Binance serves positionRisk as v2 and v3 only
    assert (no_such_path.value.status_code, no_such_path.value.code) == (404, -5000)
    assert no_such_path.value.message == "Path /fapi/v1/positionRisk, Method GET is invalid"


def test_python_binance_rate_limit_and_ban_when_venue_refuses_then_429_and_418(
    venue: str, python_binance: Callable[..., PythonBinance]
) -> None:
    client = python_binance()
    sim(venue, "POST", "/_sim/faults", {"kind": "http_429", "symbol": "ETHUSDT"})
    with pytest.raises(BinanceAPIException) as limited:
        client.futures_order_book(symbol="ETHUSDT")
    assert (limited.value.status_code, limited.value.code) == (429, -1003)
    assert limited.value.response.headers["Retry-After"]
    sim(venue, "POST", "/_sim/faults", {"kind": "http_418", "symbol": "ETHUSDT", "params": {"retry_after_s": 1}})
    with pytest.raises(BinanceAPIException) as banned:
        client.futures_order_book(symbol="ETHUSDT")
    assert (banned.value.status_code, banned.value.code) == (418, -1003)
    time.sleep(1.2)  # the ban is over after its Retry-After
    assert client.futures_order_book(symbol="ETHUSDT")["bids"]


async def test_python_binance_user_stream_when_order_placed_then_order_trade_update(venue: str) -> None:
    client = AsyncClient(KEY, SECRET, requests_params={"timeout": 10})
    client.FUTURES_URL = venue + "/fapi"
    try:
        sockets = BinanceSocketManager(client)
        sockets.FSTREAM_URL = venue.replace("http", "ws") + "/"
        price = resting_price(venue, "ETHUSDT", "SELL")
        async with sockets.futures_user_socket() as stream:
            await asyncio.sleep(0.3)
            order = await client.futures_create_order(
                symbol="ETHUSDT", side="SELL", type="LIMIT", timeInForce="GTC", quantity="0.05", price=str(price)
            )
            event = await _next_order_event(stream.recv, order["orderId"])
            assert event["o"]["X"] == "NEW" and event["o"]["s"] == "ETHUSDT"
            await client.futures_cancel_order(symbol="ETHUSDT", orderId=order["orderId"])
            event = await _next_order_event(stream.recv, order["orderId"])
            assert event["o"]["X"] == "CANCELED"
    finally:
        await client.close_connection()


def test_clients_when_request_weight_exhausted_then_429_then_banned_418(
    tmp_path: Path, python_binance: Callable[..., PythonBinance]
) -> None:
    """A real overrun, not a scheduled fault: a venue with a 20-per-minute weight limit that bans
    (2 minutes) a client sending on after two 429s; both libraries see Binance's statuses."""
    args = ("--source", "synthetic", "--weight-limit", "20", "--ban-after-429", "2", "--ban-escalation", "1")
    with running_venue_sim(tmp_path, *args) as limited:
        into = time.time() % 60
        if into > 54:
            time.sleep(60.2 - into)  # the weight counts in fixed wall-clock minutes, as on Binance
        client = python_binance()
        client.FUTURES_URL = limited + "/fapi"
        statuses: list[tuple[int, int]] = []
        for _ in range(8):
            try:
                client.futures_order_book(symbol="BTCUSDT", limit=100)  # weight 5
                statuses.append((200, 0))
            except BinanceAPIException as refused:
                statuses.append((refused.status_code, refused.code))
        assert statuses == [(200, 0)] * 4 + [(429, -1003)] * 3 + [(418, -1003)], statuses
        with pytest.raises(RateLimitBanError):
            official(limited).rest_api.order_book(symbol="BTCUSDT")


async def test_python_binance_kline_stream_when_subscribed_then_running_candle_pushed(venue: str) -> None:
    client = AsyncClient(KEY, SECRET, requests_params={"timeout": 10})
    try:
        sockets = BinanceSocketManager(client)
        sockets.FSTREAM_URL = venue.replace("http", "ws") + "/"
        # USD-M routes kline streams through /market (python-binance's default category).
        async with sockets.futures_multiplex_socket(["ethusdt@kline_1m"]) as stream:
            frame = await asyncio.wait_for(stream.recv(), timeout=10)
        candle = frame["data"]["k"]
        assert frame["stream"] == "ethusdt@kline_1m" and frame["data"]["e"] == "kline"
        assert candle["i"] == "1m" and candle["T"] == candle["t"] + 59_999 and candle["x"] is False
        assert Decimal(candle["h"]) >= Decimal(candle["l"]) > 0
    finally:
        await client.close_connection()


# ===================================================================== Binance's own connector
def test_official_market_data_when_read_then_models_parse(venue: str) -> None:
    rest = official(venue).rest_api
    assert rest.check_server_time().data().server_time > 0
    info = rest.exchange_information().data()
    assert {s.symbol for s in info.symbols} == {"BTCUSDT", "ETHUSDT"}
    assert {f.rate_limit_type for f in info.rate_limits} == {"REQUEST_WEIGHT", "ORDERS"}
    book = rest.order_book(symbol="ETHUSDT", limit=5).data()
    assert len(book.bids) == 5
    assert Decimal(rest.mark_price(symbol="ETHUSDT").data().actual_instance.mark_price) > 0
    assert Decimal(rest.open_interest(symbol="ETHUSDT").data().open_interest) > 0
    klines = eventually_blocking(
        lambda: rest.kline_candlestick_data(
            symbol="ETHUSDT", interval=KlineCandlestickDataIntervalEnum.INTERVAL_1m, limit=3
        ).data()
    )
    assert len(klines[-1].actual_instance if hasattr(klines[-1], "actual_instance") else klines[-1]) == 12


def test_official_account_when_read_then_models_parse(venue: str) -> None:
    rest = official(venue).rest_api
    assert any(b.asset == "USDT" for b in rest.futures_account_balance_v3().data())
    assert rest.account_information_v3().data().total_wallet_balance
    assert rest.position_information_v3(symbol="BTCUSDT").data() is not None
    brackets = rest.notional_and_leverage_brackets(symbol="BTCUSDT").data()
    assert brackets is not None
    assert rest.user_commission_rate(symbol="BTCUSDT").data().maker_commission_rate == "0.0002"
    assert rest.get_current_position_mode().data().dual_side_position is False
    order_limits = rest.query_user_rate_limit().data()
    rows = {(row.interval, row.interval_num, row.limit) for row in order_limits}
    assert rows == {("SECOND", 10, 300), ("MINUTE", 1, 1200)}
    changed = rest.change_initial_leverage(symbol="BTCUSDT", leverage=10).data()
    assert changed.leverage == 10


def test_official_orders_when_placed_queried_cancelled_and_batched_then_models_parse(venue: str) -> None:
    rest = official(venue).rest_api
    price = float(resting_price(venue, "ETHUSDT", "BUY"))
    placed = rest.new_order(
        symbol="ETHUSDT",
        side=NewOrderSideEnum.BUY,
        type=NewOrderTypeEnum.LIMIT,
        time_in_force=NewOrderTimeInForceEnum.GTC,
        quantity=0.05,
        price=price,
    ).data()
    assert placed.status == "NEW"
    assert rest.query_order(symbol="ETHUSDT", order_id=placed.order_id).data().status == "NEW"
    assert placed.order_id in [o.order_id for o in rest.current_all_open_orders(symbol="ETHUSDT").data()]
    assert rest.cancel_order(symbol="ETHUSDT", order_id=placed.order_id).data().status == "CANCELED"
    assert placed.order_id in [o.order_id for o in rest.all_orders(symbol="ETHUSDT").data()]
    cancelled = rest.cancel_multiple_orders(symbol="ETHUSDT", order_id_list=[placed.order_id]).data()
    assert cancelled is not None
    armed = rest.auto_cancel_all_open_orders(symbol="ETHUSDT", countdown_time=0).data()
    assert armed.symbol == "ETHUSDT"
    with pytest.raises(BadRequestError) as unknown:
        rest.query_order(symbol="ETHUSDT", order_id=1)
    assert unknown.value.status_code == -2013  # the connector puts Binance's code there
    with pytest.raises(BadRequestError) as cancel_unknown:
        rest.cancel_order(symbol="ETHUSDT", order_id=1)
    assert cancel_unknown.value.status_code == -2011


def test_official_conditional_order_when_placed_then_algo_models_parse(venue: str) -> None:
    rest = official(venue).rest_api
    trigger = float(resting_price(venue, "BTCUSDT", "BUY"))  # a sell stop 3 % below the market waits
    placed = rest.new_algo_order(
        algo_type=NewAlgoOrderAlgoTypeEnum.CONDITIONAL,
        symbol="BTCUSDT",
        side=NewAlgoOrderSideEnum.SELL,
        type=NewAlgoOrderTypeEnum.STOP_MARKET,
        quantity=0.01,
        trigger_price=trigger,
    ).data()
    assert placed.algo_status == "NEW" and placed.algo_id
    assert rest.query_algo_order(algo_id=placed.algo_id).data().algo_status == "NEW"
    assert placed.algo_id in [o.algo_id for o in rest.current_all_algo_open_orders(symbol="BTCUSDT").data()]
    assert rest.cancel_algo_order(algo_id=placed.algo_id).data().algo_id == placed.algo_id
    assert rest.query_algo_order(algo_id=placed.algo_id).data().algo_status == "CANCELED"


def test_official_errors_when_signature_clock_wrong_or_limited_then_typed_errors(
    venue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(BadRequestError) as bad_signature:
        official(venue, secret="not-the-secret").rest_api.account_information_v3()
    assert bad_signature.value.status_code == -1022
    rest = official(venue).rest_api
    with monkeypatch.context() as clock:
        # The connector's clock one minute behind: outside the 5 s recvWindow.
        clock.setattr(binance_common.utils, "get_timestamp", lambda: int(time.time() * 1000) - 60_000)
        with pytest.raises(BadRequestError) as skew:
            rest.account_information_v3()
    assert skew.value.status_code == -1021
    sim(venue, "POST", "/_sim/faults", {"kind": "http_429", "symbol": "BTCUSDT"})
    with pytest.raises(TooManyRequestsError):
        rest.order_book(symbol="BTCUSDT")
    sim(venue, "POST", "/_sim/faults", {"kind": "http_418", "symbol": "BTCUSDT", "params": {"retry_after_s": 1}})
    with pytest.raises(RateLimitBanError):
        rest.order_book(symbol="BTCUSDT")
    time.sleep(1.2)


async def test_official_user_stream_when_order_placed_then_event_on_private_stream(venue: str) -> None:
    client = DerivativesTradingUsdsFutures(
        config_rest_api=ConfigurationRestAPI(api_key=KEY, api_secret=SECRET, base_path=venue, timeout=10_000),
        config_ws_streams=ConfigurationWebSocketStreams(stream_url=venue.replace("http", "ws")),
    )
    listen_key = client.rest_api.start_user_data_stream().data().listen_key
    connection = await client.websocket_streams.create_connection()
    received: list[Any] = []
    try:
        stream = await connection.user_data(listen_key)
        stream.on("message", received.append)
        await asyncio.sleep(0.5)
        price = resting_price(venue, "BTCUSDT", "SELL")
        order = await asyncio.to_thread(
            lambda: client.rest_api.new_order(
                symbol="BTCUSDT",
                side=NewOrderSideEnum.SELL,
                type=NewOrderTypeEnum.LIMIT,
                time_in_force=NewOrderTimeInForceEnum.GTC,
                quantity=0.01,
                price=float(price),
            ).data()
        )

        def seen() -> bool:
            return any(order.order_id == _order_id(event) for event in received)

        await eventually(seen, timeout_s=10, failure=lambda: f"user stream saw {received!r}")
        await asyncio.to_thread(lambda: client.rest_api.cancel_order(symbol="BTCUSDT", order_id=order.order_id))
    finally:
        await connection.close_connection()


# ===================================================================== helpers
async def _next_order_event(receive: Any, order_id: int) -> dict[str, Any]:
    while True:
        event = await asyncio.wait_for(receive(), timeout=10)
        if event.get("e") == "ORDER_TRADE_UPDATE" and event["o"]["i"] == order_id:
            return event


def _order_id(event: Any) -> int | None:
    """The order id of a user-data event as the official connector hands it over (model or dict)."""
    instance = getattr(event, "actual_instance", event)
    if hasattr(instance, "to_dict"):
        instance = instance.to_dict()
    if isinstance(instance, str):
        instance = json.loads(instance)
    order = instance.get("o") if isinstance(instance, dict) else None
    return order.get("i") if isinstance(order, dict) else None


# ===================================================================== account modes
def test_python_binance_account_modes_when_read_and_changed_then_venue_answers(
    python_binance: Callable[..., PythonBinance],
) -> None:
    client = python_binance()
    assert client.futures_get_multi_assets_mode() == {"multiAssetsMargin": False}
    assert client.futures_change_margin_type(symbol="ETHUSDT", marginType="ISOLATED") == {"code": 200, "msg": "success"}
    assert client.futures_change_margin_type(symbol="ETHUSDT", marginType="CROSSED")["code"] == 200
    with pytest.raises(BinanceAPIException) as unchanged:
        client.futures_change_position_mode(dualSidePosition="false")
    assert unchanged.value.code == -4059  # already one-way: "No need to change position side."


def test_official_account_modes_when_read_then_models_parse(venue: str) -> None:
    rest = official(venue).rest_api
    assert rest.get_current_multi_assets_mode().data().multi_assets_margin is False

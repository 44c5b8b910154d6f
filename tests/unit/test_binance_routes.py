"""Binance USD-M's stream routes: which path carries which stream."""

from __future__ import annotations

import pytest

from libs.binance.routes import Route, group_by_route, routed_base, stream_route, user_stream_url


@pytest.mark.parametrize(
    ("stream", "route"),
    [
        ("btcusdt@depth@100ms", Route.PUBLIC),
        ("btcusdt@depth", Route.PUBLIC),
        ("btcusdt@bookTicker", Route.PUBLIC),
        ("btcusdt@aggTrade", Route.MARKET),
        ("btcusdt@markPrice@1s", Route.MARKET),
        ("btcusdt@forceOrder", Route.MARKET),
        ("btcusdt@kline_1m", Route.MARKET),
        ("!markPrice@arr", Route.MARKET),
    ],
)
def test_stream_route_when_classified_then_binance_path(stream: str, route: Route) -> None:
    assert stream_route(stream) == route


def test_stream_route_when_not_a_stream_then_clear_error() -> None:
    with pytest.raises(ValueError, match="not a stream name"):
        stream_route("abc123listenkey")


def test_group_by_route_when_default_set_then_depth_public_rest_market() -> None:
    streams = ["btcusdt@depth@100ms", "btcusdt@aggTrade", "btcusdt@markPrice@1s", "btcusdt@forceOrder", "ethusdt@depth"]
    assert group_by_route(streams) == {
        Route.PUBLIC: ["btcusdt@depth@100ms", "ethusdt@depth"],
        Route.MARKET: ["btcusdt@aggTrade", "btcusdt@markPrice@1s", "btcusdt@forceOrder"],
    }


def test_urls_when_routed_or_not() -> None:
    assert routed_base("wss://fstream.binance.com/", Route.MARKET) == "wss://fstream.binance.com/market"
    assert routed_base("wss://fstream.binance.com", None) == "wss://fstream.binance.com"
    assert user_stream_url("wss://x", "KEY") == "wss://x/private/ws/KEY"
    assert user_stream_url("wss://x/", "KEY", routed=False) == "wss://x/ws/KEY"

"""Venue I/O of market-data: the REST client and the combined stream, built from settings."""

from __future__ import annotations

from collections.abc import Iterable

from libs.binance.client import BinanceRestClient
from libs.binance.stream import CombinedStream
from libs.settings import Settings

MARKET_WS_LINK = "market-ws"
SILENCE_TIMEOUT_S = 5.0
PING_INTERVAL_S = 5.0


def stream_names(symbol: str) -> list[str]:
    """The combined-stream channels market-data subscribes to for one symbol."""
    lower = symbol.lower()
    return [f"{lower}@depth@100ms", f"{lower}@aggTrade", f"{lower}@markPrice@1s", f"{lower}@forceOrder"]


def rest_client(settings: Settings) -> BinanceRestClient:
    """Public-endpoint REST client (market data needs no key; SPEC FM-N5 10 s timeout)."""
    return BinanceRestClient(settings.venue_rest_url, settings.venue_api_key, timeout_s=10.0)


def market_stream(settings: Settings, symbols: Iterable[str]) -> CombinedStream:
    """One combined stream carrying every channel of every symbol."""
    names = [name for symbol in symbols for name in stream_names(symbol)]
    return CombinedStream(
        settings.venue_ws_url, names, silence_timeout_s=SILENCE_TIMEOUT_S, ping_interval_s=PING_INTERVAL_S
    )

"""market-data with one connection per route (Binance USD-M routes streams by path): the
`market-ws` link is up only while every route's connection is, and says which one is down."""

from __future__ import annotations

from typing import Any

from libs.logging import get_logger
from libs.reconnect import DEGRADED_AFTER_ATTEMPTS
from proto.enums import ConnectionState
from proto.messages import AlertRaised, LinkStateChanged
from services.market_data import adapters
from services.market_data.frames import MarketKind
from services.market_data.handlers import MarketDataService
from tests.unit.test_market_data_quality import VENUE, FakeRest, start_clock


def make() -> tuple[MarketDataService, list[Any]]:
    published: list[Any] = []
    clock = start_clock()
    rest = FakeRest()
    rest.clock = clock

    async def publish(subject: str, message: Any, msg_id: str | None) -> int:
        published.append(message)
        return len(published)

    async def kv_put(key: str, value: bytes) -> int:
        return 1

    service = MarketDataService(
        venue=VENUE,
        symbols=("BTCUSDT",),
        publish=publish,
        kv_put=kv_put,
        rest=rest,  # type: ignore[arg-type]
        open_stream=lambda url: None,  # type: ignore[arg-type,return-value]
        route_streams={"market": lambda url: None},  # type: ignore[dict-item]
        log=get_logger("test"),
        clock=clock,
    )
    return service, published


async def test_link_when_market_route_down_then_link_down_and_reason_names_the_route() -> None:
    service, published = make()
    depth, market = service.stream, service.route_streams[0]
    assert service.links.down == {"": 0, "market": 0}, "down until its first connection"
    await depth._on_connected("ws://a")
    assert service.links.link_state == ConnectionState.DISCONNECTED, "trades, marks, liquidations still missing"
    await market._on_connected("ws://a")
    assert service.links.link_state == ConnectionState.SUSPECT
    await market._on_disconnected("no data for 5.0s")
    assert service.links.link_state == ConnectionState.DISCONNECTED
    last = [m for m in published if isinstance(m, LinkStateChanged)][-1]
    assert last.reason == "(market): no data for 5.0s"
    for attempt in range(DEGRADED_AFTER_ATTEMPTS):
        await market._on_attempt_failed(attempt, "connect failed: refused", "ws://a", all_failed=False)
    assert service.links.link_state == ConnectionState.DEGRADED
    assert "md.reconnect_failing.binance-usdm.market" in {m.key for m in published if isinstance(m, AlertRaised)}
    assert service.links.books_up("BTCUSDT"), "the depth's connection is untouched: its books go on"
    await market._on_connected("ws://a")
    assert service.links.link_state == ConnectionState.SUSPECT and not service.links.down


def test_stream_groups_when_routed_usdm_then_public_and_market_else_one_connection() -> None:
    groups = adapters.stream_groups(("BTCUSDT",), MarketKind.USDM, routed=True)
    assert {str(route): names for route, names in groups.items()} == {
        "public": ["btcusdt@depth@100ms"],
        "market": ["btcusdt@aggTrade", "btcusdt@markPrice@1s", "btcusdt@forceOrder"],
    }
    assert list(adapters.stream_groups(("BTCUSDT",), MarketKind.USDM, routed=False)) == [None]
    assert list(adapters.stream_groups(("BTCUSDT",), MarketKind.SPOT, routed=True)) == [None], "spot never routes"
    stream = adapters.market_stream(
        "ws://v", (), route=groups[next(iter(groups))] and next(iter(groups)), names=["x@depth"]
    )
    assert stream.url == "ws://v/public/stream?streams=x@depth"

"""market-data under the venue's connection limits: more streams than one connection allows are
spread over several (each its own books, reconnects and link report), and a venue that bans the IP
gets no WebSocket connect until its Retry-After has passed (FM-N2)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from libs.binance.stream import StreamClosed, parse_frame
from libs.clock import ManualClock
from libs.logging import get_logger
from libs.ratelimit import BudgetState, RateBudget
from proto.enums import ConnectionState
from proto.messages import AlertRaised, BookResyncStarted, LinkStateChanged
from services.market_data import adapters
from services.market_data.frames import MarketKind
from services.market_data.handlers import MarketDataService
from tests.unit.test_market_data_quality import VENUE, FakeRest, ScriptedVenue

S = 1_000_000_000
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "BNBUSDT")


def test_stream_connections_when_over_the_limit_then_spread_each_within_it_and_symbols_kept_together() -> None:
    connections = adapters.stream_connections(SYMBOLS, MarketKind.USDM, routed=True, max_streams=4)
    assert [(name, str(route)) for name, route, _ in connections] == [
        ("", "public"),
        ("public-2", "public"),
        *[("market" if n == 1 else f"market-{n}", "market") for n in range(1, 6)],
    ]
    assert all(1 <= len(names) <= 4 for _, _, names in connections)
    every = [name for _, _, names in connections for name in names]
    assert sorted(every) == sorted(n for s in SYMBOLS for n in adapters.stream_names(s)), "each stream once"
    # A symbol's market streams (trades, mark, liquidations) share one connection.
    assert connections[2][2] == ["btcusdt@aggTrade", "btcusdt@markPrice@1s", "btcusdt@forceOrder"]
    unrouted = adapters.stream_connections(SYMBOLS, MarketKind.USDM, routed=False, max_streams=8)
    assert [(name, len(names)) for name, _, names in unrouted] == [("", 8), ("ws-2", 8), ("ws-3", 4)]
    assert len(adapters.stream_connections(SYMBOLS, MarketKind.USDM)) == 2, "Binance's 1024: one per route"
    for bad in (0, 1025):
        with pytest.raises(ValueError, match="BULWARK_MD_WS_MAX_STREAMS"):
            adapters.stream_connections(SYMBOLS, max_streams=bad)


class Service:
    """A market-data service over fake connections and a fake REST venue, on a manual clock."""

    def __init__(self, *, max_streams: int = 4, budget: RateBudget | None = None, routed: bool = True) -> None:
        self.clock = ManualClock(1_700_000_000 * S)
        self.published: list[Any] = []
        rest = FakeRest()
        rest.clock = self.clock
        self.connections = adapters.stream_connections(SYMBOLS, MarketKind.USDM, routed=routed, max_streams=max_streams)

        async def publish(subject: str, message: Any, msg_id: str | None) -> int:
            self.published.append(message)
            return len(self.published)

        async def kv_put(key: str, value: bytes) -> int:
            return 1

        self.service = MarketDataService(
            venue=VENUE,
            symbols=SYMBOLS,
            publish=publish,
            kv_put=kv_put,
            rest=rest,  # type: ignore[arg-type]
            open_stream=lambda url: None,  # type: ignore[arg-type,return-value]
            route_streams={name: (lambda url: None) for name, _, _ in self.connections[1:]},  # type: ignore[misc]
            connection_streams={name: names for name, _, names in self.connections},
            log=get_logger("test"),
            clock=self.clock,
            budget=budget,
        )
        self.streams = {stream.route: stream for stream in [self.service.stream, *self.service.route_streams]}

    def since(self, mark: int, kind: type) -> list[Any]:
        return [message for message in self.published[mark:] if isinstance(message, kind)]


def depth(symbol: str, first: int, final: int, prev: int) -> Any:
    data = {"e": "depthUpdate", "E": 1, "T": 1, "s": symbol, "U": first, "u": final, "pu": prev}
    data |= {"b": [["100.0", "3"]], "a": []}
    return parse_frame(msgspec.json.encode({"stream": f"{symbol.lower()}@depth@100ms", "data": data}).decode())


async def test_connections_when_one_drops_then_only_its_symbols_resync_and_the_link_names_them() -> None:
    fake = Service()
    service = fake.service
    for name, stream in fake.streams.items():
        await stream._on_connected(f"ws://venue/{name}")
    await asyncio.sleep(0.05)  # every book's snapshot (update id 10) is fetched
    for symbol in SYMBOLS:
        await service.handle_frame(depth(symbol, 11, 12, 10))
    assert all(sync.synced for sync in service.books.syncs.values())
    second = fake.streams["public-2"]
    assert second.book_symbols == ("BNBUSDT",) and fake.streams[""].book_symbols == SYMBOLS[:4]

    mark = len(fake.published)
    await second._on_disconnected("no data for 5.0s")
    down = fake.since(mark, LinkStateChanged)[-1]
    assert down.current == ConnectionState.DISCONNECTED and down.symbols == ["BNBUSDT"]
    assert down.reason == "(public-2): no data for 5.0s"
    assert [s for s in SYMBOLS if service.links.books_up(s)] == list(SYMBOLS[:4])
    await second._on_connected("ws://venue/public-2")
    resynced = {message.symbol for message in fake.since(mark, BookResyncStarted)}
    assert resynced == {"BNBUSDT"}, "the other connections' books go on untouched"
    assert all(service.books.syncs[s].synced for s in SYMBOLS[:4])
    assert service.links.link_state == ConnectionState.SUSPECT

    # A market connection down: the data of its one symbol is missing, no book resyncs.
    mark = len(fake.published)
    await fake.streams["market-3"]._on_disconnected("closed by peer (code 1001)")
    assert fake.since(mark, LinkStateChanged)[-1].symbols == ["SOLUSDT"]
    assert not fake.since(mark, BookResyncStarted)
    await service.close()


def banned(remaining_s: float) -> StreamClosed:
    """The venue's refusal of a connect while the IP is banned: 418 at the upgrade, with Retry-After."""
    return StreamClosed("connect refused: HTTP 418", status=418, retry_after_s=max(1, int(remaining_s)))


async def test_ws_connect_when_venue_bans_the_ip_then_no_attempt_until_retry_after_and_link_down() -> None:
    clock = ManualClock(1_700_000_000 * S)
    budget = RateBudget(VENUE, clock)
    fake = Service(max_streams=1024, budget=budget, routed=False)
    fake.service.runtime.clock = clock
    venue = ScriptedVenue(fake.service, clock, ws_up_at_s=30, refusal=banned)
    await venue.run(horizon_s=300)
    # One refused connect starts the ban; the next attempt comes when its Retry-After has passed.
    assert venue.attempts == [0.0, 30.0]
    assert budget.bans == 1 and budget.state == BudgetState.DEGRADED
    links = [m for m in fake.published if isinstance(m, LinkStateChanged) and m.link == "market-ws"]
    assert links and all(m.current != ConnectionState.CONNECTED for m in links)
    assert "md.ip_banned.binance-usdm" in {m.key for m in fake.published if isinstance(m, AlertRaised)}


async def test_ws_connect_when_a_ban_is_already_known_then_waits_it_out_before_the_first_attempt() -> None:
    clock = ManualClock(1_700_000_000 * S)
    budget = RateBudget(VENUE, clock)
    budget.on_banned(20)  # e.g. a REST 418, or one shared by another process
    fake = Service(max_streams=1024, budget=budget, routed=False)
    fake.service.runtime.clock = clock
    venue = ScriptedVenue(fake.service, clock, ws_up_at_s=0, refusal=banned)
    await venue.run()
    assert venue.attempts == [20.0], "no connect while banned: it would be refused and lengthen the ban"

"""A live market mirrored from another Binance USD-M venue: the paper venue's source.

The simulator started with `--source mirror --mirror-rest-url URL --mirror-ws-url URL` keeps its
books, trades, marks and liquidations in step with that venue (the real one, or a simulator
elsewhere): REST for the rules (`exchangeInfo`), the starting books and open interest; the
public depth stream (synced by `domain.book_follower`) and the market streams (aggregate trades,
mark price, forced orders) for everything after. Orders sent to the simulator are filled by its
own matching engine against that live book; nothing is ever sent to the mirrored venue, which is
asked only public, unsigned questions (the simulator holds no key of it).

A lost connection is reconnected with a growing pause, and every book is snapshotted again: the
mirror never serves a book that skipped a diff.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import aiohttp

from libs.binance.client import BinanceRestClient
from libs.binance.errors import VenueError
from libs.binance.routes import group_by_route, routed_base
from libs.binance.stream import CombinedStream, StreamClosed
from libs.instruments import RulesParseError, parse_exchange_info
from libs.recordings import USDM
from services.venue_sim.domain.book import OrderBook
from services.venue_sim.domain.book_follower import BookFollower
from services.venue_sim.domain.market_events import (
    DepthEvent,
    Level,
    LiquidationEvent,
    MarketEvent,
    MarkEvent,
    Script,
    StartBook,
    TradeEvent,
    starting_open_interest,
)
from services.venue_sim.domain.rules import SymbolSpec, spec_for

SNAPSHOT_LIMIT = 1000
RECONNECT_PAUSES_S = (0.5, 1.0, 2.0, 5.0, 10.0)
LINK_ERRORS = (StreamClosed, OSError, aiohttp.ClientError, asyncio.TimeoutError, VenueError)

Handle = Callable[[MarketEvent], None]
Reset = Callable[[str, StartBook], None]


class MirrorError(RuntimeError):
    """The mirrored venue cannot be followed (unreachable at start, unknown symbol)."""


def _levels(raw: Any) -> tuple[Level, ...]:
    return tuple((Decimal(price), Decimal(quantity)) for price, quantity in raw)


def parse_frame(stream: str, data: Any) -> MarketEvent | None:
    """The market event of one stream frame of the mirrored venue, None for a frame of no use.

    Raises:
        ValueError: a frame of a known kind that does not read (a field missing or not a number).
    """
    if not isinstance(data, dict):
        raise ValueError(f"{stream}: not an object")
    try:
        match data.get("e"):
            case "depthUpdate":
                return DepthEvent(
                    str(data["s"]),
                    int(data["U"]),
                    int(data["u"]),
                    int(data["pu"]),
                    _levels(data["b"]),
                    _levels(data["a"]),
                    max(0, int(data.get("E", 0)) - int(data.get("T", data.get("E", 0)))),
                )
            case "aggTrade":
                return TradeEvent(
                    str(data["s"]), int(data["l"]), Decimal(data["p"]), Decimal(data["q"]), bool(data["m"])
                )
            case "markPriceUpdate":
                return MarkEvent(
                    str(data["s"]), Decimal(data["p"]), Decimal(data.get("i") or data["p"]), Decimal(data.get("r") or 0)
                )
            case "forceOrder":
                order = data["o"]
                price = Decimal(order.get("ap") or order["p"])
                return LiquidationEvent(str(order["s"]), str(order["S"]), price, Decimal(order.get("z") or order["q"]))
            case _:
                return None
    except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
        raise ValueError(f"{stream}: {type(exc).__name__}: {exc}") from exc


def market_streams(symbols: Sequence[str]) -> list[str]:
    """The streams a mirror follows per symbol: depth diffs, aggregate trades, mark price, forced orders."""
    names = []
    for symbol in symbols:
        lower = symbol.lower()
        names += [f"{lower}@depth@100ms", f"{lower}@aggTrade", f"{lower}@markPrice@1s", f"{lower}@forceOrder"]
    return names


class MirrorSource:
    """A `MarketSource` whose market is another venue's, followed live (`follow`), not scripted.

    Args:
        rest_url: REST base of the mirrored venue.
        ws_url: WebSocket base of the mirrored venue.
        specs: rules per symbol (from its `exchangeInfo`).
        starts: starting book per symbol (its depth snapshots).
        open_interest: open interest per symbol at start.
        routed: the venue routes streams by path (`/public`, `/market`) as Binance USD-M does.
        log: structured logger.
    """

    market = USDM

    def __init__(
        self,
        rest_url: str,
        ws_url: str,
        specs: dict[str, SymbolSpec],
        starts: dict[str, StartBook],
        open_interest: dict[str, Decimal],
        log: Any,
        routed: bool = True,
    ) -> None:
        self.rest_url = rest_url
        self.ws_url = ws_url
        self._specs = specs
        self._starts = starts
        self._open_interest = open_interest
        self.log = log
        self.routed = routed
        self.followers = {symbol: BookFollower(symbol) for symbol in specs}
        self._snapshots: dict[str, asyncio.Task[None]] = {}

    @classmethod
    async def connect(
        cls, rest_url: str, ws_url: str, symbols: Sequence[str], log: Any, *, routed: bool = True
    ) -> MirrorSource:
        """Read the mirrored venue's rules, books and open interest of `symbols`.

        Raises:
            MirrorError: the venue does not answer, or does not list a symbol.
        """
        wanted = sorted({symbol.upper() for symbol in symbols})
        try:
            async with BinanceRestClient(rest_url) as client:
                rules = parse_exchange_info(await client.exchange_info(), symbols=frozenset(wanted))
                missing = [symbol for symbol in wanted if symbol not in rules]
                if missing:
                    raise MirrorError(f"{rest_url} does not list {', '.join(missing)}")
                specs, starts, interest = {}, {}, {}
                for symbol in wanted:
                    specs[symbol] = _spec(symbol, rules[symbol])
                    starts[symbol] = _start_book(await client.depth(symbol, SNAPSHOT_LIMIT))
                    try:
                        interest[symbol] = Decimal((await client.open_interest(symbol))["openInterest"])
                    except (VenueError, KeyError, InvalidOperation):
                        interest[symbol] = starting_open_interest(symbol)
        except (*LINK_ERRORS, RulesParseError, KeyError, ValueError) as exc:
            if isinstance(exc, MirrorError):
                raise
            raise MirrorError(f"cannot mirror {rest_url}: {type(exc).__name__}: {exc}") from exc
        return cls(rest_url, ws_url, specs, starts, interest, log, routed=routed)

    # ----------------------------------------------------------------- MarketSource
    @property
    def symbols(self) -> Sequence[str]:
        return sorted(self._specs)

    def spec(self, symbol: str) -> SymbolSpec:
        return self._specs[symbol]

    def start_book(self, symbol: str) -> StartBook:
        return self._starts[symbol]

    def has_marks(self, symbol: str) -> bool:
        return True  # the mirrored venue's mark price stream

    def open_interest(self, symbol: str) -> Decimal:
        return self._open_interest[symbol]

    def script(self, symbol: str, book: OrderBook) -> Script:
        return iter(())  # nothing scripted: `follow` feeds the market as it happens

    # ----------------------------------------------------------------- live
    async def follow(self, handle: Handle, reset: Reset) -> None:
        """Follow the mirrored venue forever: `handle` gets each event, `reset` each new snapshot."""
        groups = (
            group_by_route(market_streams(self.symbols)) if self.routed else {None: market_streams(self.symbols)}  # type: ignore[dict-item]
        )
        try:
            await asyncio.gather(
                *(
                    self._follow_link(routed_base(self.ws_url, route), streams, handle, reset)
                    for route, streams in groups.items()
                )
            )
        finally:
            for task in self._snapshots.values():
                task.cancel()

    async def _follow_link(self, base: str, streams: list[str], handle: Handle, reset: Reset) -> None:
        depth_symbols = {name.split("@", 1)[0].upper() for name in streams if "@depth" in name}
        failures = 0
        while True:
            try:
                async with CombinedStream(base, streams, silence_timeout_s=30.0, ping_interval_s=20.0) as stream:
                    self.log.info("mirror_connected", url=base, streams=len(streams))
                    for symbol in depth_symbols:
                        self.followers[symbol].restart()
                        self._resync(symbol, handle, reset)
                    async for frame in stream:
                        failures = 0
                        self._on_frame(frame.stream, frame.data, frame.error, handle, reset)
            except asyncio.CancelledError:
                raise
            except LINK_ERRORS as exc:
                pause = RECONNECT_PAUSES_S[min(failures, len(RECONNECT_PAUSES_S) - 1)]
                failures += 1
                self.log.warning(
                    "mirror_link_lost", url=base, error=f"{type(exc).__name__}: {exc}"[:300], retry_s=pause
                )
                await asyncio.sleep(pause)

    def _on_frame(self, stream: str | None, data: Any, error: str | None, handle: Handle, reset: Reset) -> None:
        if error is not None or stream is None:
            self.log.warning("mirror_frame_unreadable", error=error)
            return
        try:
            event = parse_frame(stream, data)
        except ValueError as exc:
            self.log.warning("mirror_frame_unreadable", stream=stream, error=str(exc)[:300])
            return
        if event is None or event.symbol not in self.followers:
            return
        if isinstance(event, DepthEvent):
            steps = self.followers[event.symbol].on_depth(event)
            if steps is None:
                self.log.warning("mirror_book_gap", symbol=event.symbol, action_taken="new snapshot")
                self._resync(event.symbol, handle, reset)
                return
            for step in steps:
                handle(step)
            return
        handle(event)

    def _resync(self, symbol: str, handle: Handle, reset: Reset) -> None:
        running = self._snapshots.get(symbol)
        if running is None or running.done():
            self._snapshots[symbol] = asyncio.create_task(
                self._snapshot(symbol, handle, reset), name=f"mirror-{symbol}"
            )

    async def _snapshot(self, symbol: str, handle: Handle, reset: Reset) -> None:
        """Fetch a snapshot until one bridges the buffered diffs; reset the book to it."""
        failures = 0
        async with BinanceRestClient(self.rest_url) as client:
            while True:
                # Diffs must be buffered before the snapshot is taken, or it cannot be bridged.
                await asyncio.sleep(0.2 if failures == 0 else RECONNECT_PAUSES_S[min(failures, 4)])
                try:
                    start = _start_book(await client.depth(symbol, SNAPSHOT_LIMIT))
                except (*LINK_ERRORS, KeyError, ValueError, InvalidOperation) as exc:
                    failures += 1
                    self.log.warning(
                        "mirror_snapshot_failed", symbol=symbol, error=f"{type(exc).__name__}: {exc}"[:300]
                    )
                    continue
                steps = self.followers[symbol].on_snapshot(start.last_update_id)
                if steps is None:
                    failures += 1
                    continue
                reset(symbol, start)
                for step in steps:
                    handle(step)
                self.log.info("mirror_book_synced", symbol=symbol, last_update_id=start.last_update_id)
                return


def _spec(symbol: str, rules: Any) -> SymbolSpec:
    """The simulator's rules of a symbol from the mirrored venue's (its own table where one is missing)."""
    fallback = spec_for(symbol)
    step = rules.step_size or fallback.step_size
    return SymbolSpec(
        symbol=symbol,
        base_asset=fallback.base_asset,
        tick_size=rules.tick_size or fallback.tick_size,
        step_size=step,
        min_qty=rules.min_qty or step,
        max_qty=rules.max_qty or fallback.max_qty,
        min_notional=rules.min_notional if rules.min_notional is not None else fallback.min_notional,
    )


def _start_book(snapshot: Any) -> StartBook:
    return StartBook(int(snapshot["lastUpdateId"]), _levels(snapshot["bids"]), _levels(snapshot["asks"]))

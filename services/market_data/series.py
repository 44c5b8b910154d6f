"""The series of market-data besides the books: trades (FM-D2 id sequence: duplicates dropped,
small gaps backfilled over REST, large ones resync the book), mark prices and liquidations, open
interest polled over REST, the FM-D5 sanity rules on all of them (a > 20 % price jump published
only when a second REST source confirms it), and the FM-N1 re-sync of mark and OI after a reconnect.
"""

from __future__ import annotations

import functools
import time
from decimal import Decimal

from proto.enums import AlertSeverity
from proto.messages import Liquidation, MarkPrice, Trade
from services.market_data import frames
from services.market_data.alerts import Alerts
from services.market_data.books import Books
from services.market_data.frames import BadFrame, MarketKind
from services.market_data.publishing import Publisher
from services.market_data.quality import (
    OpenInterestSanity,
    PriceSanity,
    TradeAction,
    TradeCheck,
    TradeSequence,
    Verdict,
    VolumeSanity,
    confirms,
    reconnect_findings,
)
from services.market_data.rest import VENUE_CALL_ERRORS, VenueRest
from services.market_data.runtime import Runtime

OI_POLL_INTERVAL_S = 10.0


class Series:
    """Trades, marks, liquidations and open interest of every symbol, checked and published.

    Args:
        runtime: the service's shared context.
        venue: venue name on the messages.
        symbols: upper-case symbols.
        market: spot has no mark price, funding or open interest (nothing polled, nothing
            re-synced), plain `@trade` trades backfilled from `historicalTrades`, and the REST
            ticker price as the second source of FM-D5.
        publisher: where the messages go.
        alerts: alerts and flags.
        rest: the venue REST API.
        books: the books a large trade gap resyncs.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        venue: str,
        symbols: tuple[str, ...],
        market: MarketKind,
        publisher: Publisher,
        alerts: Alerts,
        rest: VenueRest,
        books: Books,
    ) -> None:
        self._runtime = runtime
        self._venue = venue
        self._symbols = symbols
        self._market = market
        self._publisher = publisher
        self._alerts = alerts
        self._rest = rest
        self._books = books
        self.trades = {symbol: TradeSequence() for symbol in symbols}
        self.price_checks = {(symbol, series): PriceSanity() for symbol in symbols for series in ("trade", "mark")}
        self.volume_checks = {symbol: VolumeSanity() for symbol in symbols}
        self.oi_checks = {symbol: OpenInterestSanity() for symbol in symbols}
        self.last_mark: dict[str, Decimal] = {}
        self.last_oi: dict[str, Decimal] = {}
        self._confirming: set[tuple[str, str]] = set()

    def reset_sequences(self, symbols: tuple[str, ...] | None = None) -> None:
        """A (re)connection carrying `symbols` (None: all): trade ids seen before say nothing about
        the new stream (FM-N1)."""
        for symbol in self._symbols if symbols is None else symbols:
            self.trades[symbol] = TradeSequence()

    # ------------------------------------------------------------------ trades

    async def on_trade(self, symbol: str, channel: str, trade: Trade) -> None:
        """A (time-checked) trade: FM-D2 id sequence (duplicate, backfill, resync), FM-D5 checks, publish."""
        sequence = self.trades[symbol].on_trade(trade.trade_id)
        if sequence.action == TradeAction.DUPLICATE:
            self._alerts.count("trade_duplicate")
            return
        if sequence.action == TradeAction.BACKFILL:
            self._runtime.spawn(
                self.backfill(symbol, sequence.missing_from, sequence.missing_to, channel), f"backfill-{symbol}"
            )
        elif sequence.action == TradeAction.RESYNC:
            await self._trade_gap_resync(symbol, sequence)
        for finding in self.volume_checks[symbol].check(trade.quantity):
            await self._alerts.flag(symbol, finding.check, finding.verdict.value, finding.detail, str(trade.quantity))
        await self._publish_price(symbol, "trade", trade.price, trade)

    async def _trade_gap_resync(self, symbol: str, sequence: TradeCheck) -> None:
        missing = sequence.missing_to - sequence.missing_from + 1
        await self._alerts.flag(symbol, "trade_gap", "rejected", f"{missing} trade ids missing: book resync")
        if await self._books.resync(symbol, f"trade gap of {missing} ids"):
            self._runtime.log.warning("trade_gap", symbol=symbol, missing=missing, action_taken="resync book")

    async def backfill(self, symbol: str, first: int, last: int, channel: str = "aggTrade") -> None:
        """FM-D2: fetch the few missing trades over REST (aggregate or plain, like the stream) and publish them."""
        limit = last - first + 1
        api = self._rest.api
        try:
            if channel == "trade":
                rows = await self._rest.call(
                    "historical_trades", lambda: api.historical_trades(symbol, from_id=first, limit=limit)
                )
                parse = frames.trade_from_trade
            else:
                rows = await self._rest.call(
                    "aggregate_trades", lambda: api.aggregate_trades(symbol, from_id=first, limit=limit)
                )
                parse = frames.trade_from_agg_trade
            if not isinstance(rows, list):
                raise BadFrame(f"{channel} backfill answer is not a list")
            trades = [parse(self._venue, row, symbol) for row in rows]
        except VENUE_CALL_ERRORS as exc:
            await self._alerts.flag(symbol, "trade_gap", "warning", f"backfill of {first}..{last} failed: {exc}"[:300])
            return
        found = [trade for trade in trades if first <= trade.trade_id <= last]
        self._runtime.log.info("trades_backfilled", symbol=symbol, first=first, last=last, found=len(found))
        await self._publisher.emit(list(found))
        if len(found) < last - first + 1:
            await self._alerts.flag(
                symbol, "trade_gap", "warning", f"backfill found {len(found)} of {last - first + 1}"
            )

    # ------------------------------------------------------------------ marks and liquidations

    async def on_mark(self, symbol: str, mark: MarkPrice) -> None:
        """A (time-checked) mark price, through the FM-D5 price rules."""
        await self._publish_price(symbol, "mark", mark.mark_price, mark)

    async def on_liquidation(self, liquidation: Liquidation) -> None:
        """A liquidation: published as it is (no sanity rule applies)."""
        await self._publisher.emit([liquidation])

    # ------------------------------------------------------------------ FM-D5 prices

    async def _publish_price(self, symbol: str, series: str, price: Decimal, message: Trade | MarkPrice) -> None:
        """FM-D5 price rules: reject, hold for confirmation, flag, or publish."""
        checks = self.price_checks[(symbol, series)]
        findings = checks.check(price)
        for finding in findings:
            match finding.verdict:
                case Verdict.REJECTED:
                    await self._alerts.flag(
                        symbol, finding.check, "rejected", f"{series}: {finding.detail}", str(price)
                    )
                    await self._alerts.raise_alert(
                        f"md.implausible_price.{symbol}",
                        AlertSeverity.P2,
                        f"{symbol}: implausible {series} price rejected",
                        transient=True,
                        detail=finding.detail,
                    )
                    return
                case Verdict.WARNING:
                    await self._alerts.flag(symbol, finding.check, "warning", f"{series}: {finding.detail}", str(price))
                    self._hold_for_confirmation(symbol, series, price, message)
                    return
                case Verdict.FLAG:
                    await self._alerts.flag(symbol, finding.check, "flag", f"{series}: {finding.detail}", str(price))
        checks.accept(price)
        if series == "mark":
            self.last_mark[symbol] = price
        await self._publisher.emit([message])

    def _hold_for_confirmation(self, symbol: str, series: str, price: Decimal, message: Trade | MarkPrice) -> None:
        if (symbol, series) in self._confirming:
            self._alerts.count("held_during_confirmation")
            return
        self._confirming.add((symbol, series))
        self._runtime.spawn(self._confirm(symbol, series, price, message), f"confirm-{symbol}-{series}")

    async def _confirm(self, symbol: str, series: str, price: Decimal, message: Trade | MarkPrice) -> None:
        """A > 20 % jump is published only when the REST mark price (spot: last price) agrees with it (FM-D5)."""
        checks = self.price_checks[(symbol, series)]
        source = "price" if self._market == MarketKind.SPOT else "mark"
        try:
            reference = checks.reference()
            try:
                second = await self._second_source_price(symbol)
            except VENUE_CALL_ERRORS as exc:
                await self._alerts.flag(
                    symbol, "price_jump", "rejected", f"{series}: cannot confirm: {exc}"[:300], str(price)
                )
                return
            if reference is not None and confirms(reference, price, second):
                checks.rebase(price)
                if series == "mark":
                    self.last_mark[symbol] = price
                await self._alerts.flag(
                    symbol, "price_jump", "confirmed", f"{series}: REST {source} {second}", str(price)
                )
                await self._publisher.emit([message])
                return
            await self._alerts.flag(
                symbol, "price_jump", "rejected", f"{series}: REST {source} {second} disagrees", str(price)
            )
            await self._alerts.raise_alert(
                f"md.unconfirmed_jump.{symbol}",
                AlertSeverity.P2,
                f"{symbol}: {series} price jump not confirmed by REST; rejected",
                transient=True,
                price=str(price),
                rest_mark=str(second),
            )
        finally:
            self._confirming.discard((symbol, series))

    async def _second_source_price(self, symbol: str) -> Decimal:
        """FM-D5's second source: the REST mark price (USD-M) or the REST last price (spot: no mark)."""
        api = self._rest.api
        if self._market == MarketKind.SPOT:
            ticker = await self._rest.call("ticker_price", lambda: api.ticker_price(symbol))
            return frames.price_from_ticker(ticker)
        premium = await self._rest.call("premium_index", lambda: api.premium_index(symbol))
        return frames.mark_from_premium_index(self._venue, symbol, premium, self._runtime.clock()).mark_price

    # ------------------------------------------------------------------ open interest and re-sync

    async def poll_open_interest_forever(self, interval_s: float = OI_POLL_INTERVAL_S) -> None:
        """Publish every symbol's open interest from REST every `interval_s` (longer while rate limited).

        Spot has no open interest: returns at once.
        """
        if self._market == MarketKind.SPOT:
            return
        budget = self._rest.budget
        while not self._runtime.closed:
            started = time.monotonic()
            for symbol in self._symbols:
                await self.poll_open_interest(symbol)
            factor = budget.polling_factor() if budget is not None else 1.0
            await self._runtime.sleep(max(0.0, interval_s * factor - (time.monotonic() - started)))

    async def poll_open_interest(self, symbol: str) -> None:
        """One open-interest poll, through the FM-D5 rules."""
        try:
            raw = await self._rest.call("open_interest", lambda: self._rest.api.open_interest(symbol))
            message = frames.open_interest_from_rest(self._venue, symbol, raw, self._runtime.clock())
        except BadFrame as exc:
            await self._alerts.flag(symbol, "oi", "rejected", str(exc))
            return
        except VENUE_CALL_ERRORS as exc:
            self._runtime.log.warning("open_interest_failed", symbol=symbol, error=str(exc)[:300])
            return
        for finding in self.oi_checks[symbol].check(message.open_interest):
            await self._alerts.flag(
                symbol, finding.check, finding.verdict.value, finding.detail, str(message.open_interest)
            )
        self.last_oi[symbol] = message.open_interest
        await self._publisher.emit([message])

    async def resync_market_state(self, symbols: tuple[str, ...] | None = None) -> None:
        """FM-N1 after a reconnect carrying `symbols` (None: all): fresh mark/funding/OI, compared
        with the last known values."""
        api = self._rest.api
        for symbol in self._symbols if symbols is None else symbols:
            try:
                premium = await self._rest.call("premium_index", functools.partial(api.premium_index, symbol))
                mark = frames.mark_from_premium_index(self._venue, symbol, premium, self._runtime.clock())
                oi_raw = await self._rest.call("open_interest", functools.partial(api.open_interest, symbol))
                oi = frames.open_interest_from_rest(self._venue, symbol, oi_raw, self._runtime.clock())
            except VENUE_CALL_ERRORS as exc:
                self._runtime.log.warning("post_reconnect_resync_failed", symbol=symbol, error=str(exc)[:300])
                continue
            for check, title in reconnect_findings(
                self.last_mark.get(symbol), mark.mark_price, self.last_oi.get(symbol), oi.open_interest
            ):
                await self._alerts.raise_alert(
                    f"md.{check}.{symbol}", AlertSeverity.P1, f"{symbol}: {title}", transient=True
                )
            # REST is the second source itself: the sanity reference moves to what it says.
            self.price_checks[(symbol, "mark")].rebase(mark.mark_price)
            self.last_mark[symbol] = mark.mark_price
            self.last_oi[symbol] = oi.open_interest
            self.oi_checks[symbol].last = oi.open_interest
            await self._publisher.emit([mark, oi])

"""The venue's trading rules, fetched from it and published for every component: `exchangeInfo`
at start, again every `refresh_s`, and at once after the venue refused an order for a rule
(`libs.instruments.RULES_ERROR_CODES` on an `OrderRejected` of this venue), each configured symbol
written to KV `rules.<venue>.<symbol>` (`proto.kv.SymbolRulesValue`).

The position process owns it because it owns this venue's order REST and sees its rejections
first; risk, the gateway (through risk) and the strategies read the KV values. A configured symbol
the venue does not list is written with status `NOT_LISTED`, so orders for it are refused with
the reason rather than sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from libs.binance.errors import VenueError, VenueTimeout, VenueUnreachable
from libs.bus import Bus
from libs.clock import Clock
from libs.errors import TransientError
from libs.instruments import RULES_ERROR_CODES, RulesParseError, parse_exchange_info
from libs.logging import Logger
from proto import subjects
from proto.codec import decode
from proto.kv import SymbolRulesValue, encode_value
from proto.messages import OrderRejected

REFRESH_S = 300.0
"""Rules change rarely (a new tick size, a halted symbol); a venue answer says so at once anyway."""
RETRY_S = 5.0
"""After a failed fetch: try again this soon."""
MIN_INTERVAL_S = 2.0
"""A burst of rejected orders fetches the rules once, not once per order."""
NOT_LISTED = "NOT_LISTED"

FETCH_FAILURES = (VenueError, VenueTimeout, VenueUnreachable, TransientError, RulesParseError, OSError)


class VenueRulesKeeper:
    """Keeps KV `rules.<venue>.<symbol>` in step with the venue's `exchangeInfo`."""

    def __init__(
        self,
        bus: Bus,
        fetch: Callable[[], Awaitable[Any]],
        venue: str,
        symbols: tuple[str, ...],
        log: Logger,
        clock: Clock,
        *,
        refresh_s: float = REFRESH_S,
        retry_s: float = RETRY_S,
        min_interval_s: float = MIN_INTERVAL_S,
    ) -> None:
        """
        Args:
            bus: where the values are written and the venue's rejections are heard.
            fetch: the venue's `exchangeInfo` call (`BinanceRestClient.exchange_info`).
            venue: the venue's name (the KV keys and the rejections' subjects).
            symbols: the configured symbols to publish.
            log: structured log.
            clock: wall clock (ns), stamped on each value.
            refresh_s: periodic refresh.
            retry_s: wait after a failed fetch.
            min_interval_s: shortest time between two fetches.
        """
        self.bus = bus
        self.fetch = fetch
        self.venue = venue
        self.symbols = symbols
        self.log = log
        self.clock = clock
        self.refresh_s = refresh_s
        self.retry_s = retry_s
        self.min_interval_s = min_interval_s
        self.rules: dict[str, SymbolRulesValue] = {}
        self.fetches = 0
        self.wake = asyncio.Event()
        self.pending_reason = "start"

    async def refresh(self, reason: str) -> bool:
        """Fetch the rules once and publish every configured symbol's; False when the venue could
        not be asked or answered something unreadable (the previous values stay)."""
        try:
            info = await self.fetch()
            now = self.clock()
            rules = parse_exchange_info(info, venue=self.venue, fetched_ns=now, symbols=frozenset(self.symbols))
        except FETCH_FAILURES as exc:
            self.log.warning(
                "venue_rules_fetch_failed",
                venue=self.venue,
                reason=reason,
                error=f"{type(exc).__name__}: {exc}"[:300],
                action_taken=f"keep the previous rules, retry in {self.retry_s:g}s",
            )
            return False
        self.fetches += 1
        for symbol in self.symbols:
            value = rules.get(symbol) or SymbolRulesValue(
                symbol=symbol, status=NOT_LISTED, venue=self.venue, fetched_ns=now
            )
            try:
                await self.bus.kv_put(subjects.key_symbol_rules(self.venue, symbol), encode_value(value))
            except (NatsError, TimeoutError, OSError) as exc:
                self.log.warning(
                    "venue_rules_publish_failed",
                    venue=self.venue,
                    symbol=symbol,
                    error=f"{type(exc).__name__}: {exc}"[:300],
                    action_taken=f"retry in {self.retry_s:g}s",
                )
                return False
            changed = self.rules.get(symbol)
            if changed is None or msgspec.structs.replace(changed, fetched_ns=now) != value:
                self.log.info(
                    "venue_rules_published",
                    venue=self.venue,
                    symbol=symbol,
                    status=value.status,
                    tick_size=str(value.tick_size),
                    step_size=str(value.step_size),
                    min_notional=str(value.min_notional),
                    reason=reason,
                )
            if value.status != "TRADING":
                self.log.error("venue_symbol_not_trading", venue=self.venue, symbol=symbol, status=value.status)
            self.rules[symbol] = value
        return True

    async def on_rejected(self, msg: Msg) -> None:
        """An order this venue refused: a rules error wakes the keeper to fetch at once."""
        try:
            message = decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        if isinstance(message, OrderRejected) and message.venue_code in RULES_ERROR_CODES:
            self.pending_reason = f"venue code {message.venue_code} on {message.client_order_id}"
            self.wake.set()

    async def run(self) -> None:
        """Fetch now, then on every wake-up and every `refresh_s`, for the life of the process."""
        subscription = None
        try:
            subscription = await self.bus.subscribe_core(
                subjects.evt_order("rejected", self.venue, "*"), self.on_rejected
            )
        except (NatsError, OSError) as exc:
            self.log.warning(
                "venue_rules_rejections_unheard",
                venue=self.venue,
                error=f"{type(exc).__name__}: {exc}"[:300],
                action_taken=f"refresh every {self.refresh_s:g}s only",
            )
        try:
            while True:
                reason, self.pending_reason = self.pending_reason, "periodic"
                self.wake.clear()
                ok = await self.refresh(reason)
                await asyncio.sleep(self.min_interval_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), (self.refresh_s if ok else self.retry_s))
        finally:
            if subscription is not None:
                with contextlib.suppress(NatsError, OSError):
                    await subscription.unsubscribe()

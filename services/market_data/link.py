"""The market links' state (SPEC FM-N1, with FM-D3/FM-D4 degradations): the pure rules
(`market_link_state`, `CleanWindow`) and `Links`, which holds the stream and REST link states and
publishes every change of them, or of the causes of a degradation, as an event and a KV record.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from libs.reconnect import DEGRADED_AFTER_ATTEMPTS
from proto import subjects
from proto.enums import ConnectionState, LinkDegradeCause
from proto.kv import LinkValue
from proto.messages import LinkStateChanged
from services.market_data.adapters import MARKET_WS_LINK
from services.market_data.alerts import Alerts
from services.market_data.publishing import Publisher
from services.market_data.runtime import Runtime

DEGRADE_REASON_RECONNECTS = "reconnect attempts failing"
DEGRADE_REASON_CORRUPTION = LinkDegradeCause.CORRUPTION.value
DEGRADE_REASON_CLOCK = LinkDegradeCause.CLOCK.value


def market_link_state(
    *, connected: bool, failed_attempts: int, clean: bool, degraded_reasons: Collection[str]
) -> ConnectionState:
    """The market link's state, derived from independent conditions (SPEC FM-N1, FM-D3, FM-D4).

    Several causes can degrade a link at once (corruption, clock offset, failing reconnects), and
    each clears on its own; a derived value keeps their overlap right where a sequential table
    could not. Order of precedence: down (DEGRADED after `DEGRADED_AFTER_ATTEMPTS` failed
    attempts, else DISCONNECTED), any degrade reason, then SUSPECT until the post-connect clean
    window has passed, then CONNECTED.
    """
    if not connected:
        return ConnectionState.DEGRADED if failed_attempts >= DEGRADED_AFTER_ATTEMPTS else ConnectionState.DISCONNECTED
    if degraded_reasons:
        return ConnectionState.DEGRADED
    return ConnectionState.CONNECTED if clean else ConnectionState.SUSPECT


class CleanWindow:
    """FM-N1: after a (re)connect the link counts as healthy only after `duration_s` and, for every
    symbol, `min_updates` consecutive fresh book updates (each within `fresh_s` of the previous)."""

    def __init__(self, symbols: Iterable[str], *, duration_s: float = 3.0, min_updates: int = 3, fresh_s: float = 1.0):
        self.symbols = tuple(symbols)
        self._duration_ns = int(duration_s * 1e9)
        self._fresh_ns = int(fresh_s * 1e9)
        self.min_updates = min_updates
        self.started_ns: int | None = None
        self.passed = False
        """Latched once clean: a later book resync does not make the connection suspect again."""
        self._runs: dict[str, int] = {}
        self._last: dict[str, int] = {}

    def start(self, now_ns: int) -> None:
        """A connection was (re)established: the window starts over."""
        self.started_ns = now_ns
        self.passed = False
        self._runs = dict.fromkeys(self.symbols, 0)
        self._last = {}

    def on_update(self, symbol: str, now_ns: int) -> None:
        """One book update of `symbol` was applied."""
        if self.started_ns is None or symbol not in self._runs:
            return
        last = self._last.get(symbol)
        self._runs[symbol] = self._runs[symbol] + 1 if last is not None and now_ns - last <= self._fresh_ns else 1
        self._last[symbol] = now_ns

    def on_break(self, symbol: str) -> None:
        """The symbol's book broke (gap, resync): its run starts over."""
        if symbol in self._runs:
            self._runs[symbol] = 0
            self._last.pop(symbol, None)

    def is_clean(self, now_ns: int) -> bool:
        """True once the window has passed with enough fresh updates of every symbol."""
        if self.passed:
            return True
        if self.started_ns is None or now_ns - self.started_ns < self._duration_ns:
            return False
        self.passed = all(run >= self.min_updates for run in self._runs.values())
        return self.passed


class Links:
    """The stream (`market-ws`) and REST (`market-rest`) link states of one venue, and what derives them.

    Args:
        runtime: the service's shared context.
        venue: venue name on the events and keys.
        symbols: the symbols every link event names.
        publisher: where the events go.
        alerts: for the KV records.
    """

    def __init__(
        self, runtime: Runtime, venue: str, symbols: tuple[str, ...], publisher: Publisher, alerts: Alerts
    ) -> None:
        self._runtime = runtime
        self._venue = venue
        self._symbols = symbols
        self._publisher = publisher
        self._alerts = alerts
        self.link_state: ConnectionState | None = None
        self.rest_link_state: ConnectionState | None = None
        self.down: dict[str, int] = {}
        """Every stream connection (by name: `""` the first, `market`, `public-2`, ...) that is down
        now → its failed attempts since; the link is down while any of them is."""
        self.carried: dict[str, tuple[str, ...]] = {}
        """Connection name → the symbols its streams name (whose data is missing while it is down)."""
        self.book_connection: dict[str, str] = {}
        """Symbol → the name of the connection carrying its depth (its book lives and dies with it)."""
        self.generations: dict[str, int] = {}
        """Symbol → connections of its depth's connection so far (the first is not a reconnect); a
        snapshot fetch of an older one stops."""
        self.clean_window = CleanWindow(symbols)
        self.degraded: dict[str, str] = {}
        """Degradation causes of the stream link now, with their detail."""
        self._causes: dict[str, tuple[str, ...]] = {}
        """Per link, the degradation causes last published with its state."""
        self._named: tuple[str, ...] = symbols
        """The symbols the last market link event named."""

    def register(self, name: str, symbols: tuple[str, ...], book_symbols: tuple[str, ...]) -> None:
        """A stream connection exists: down until its first connect, carrying `symbols`' data and
        `book_symbols`' depth."""
        self.down[name] = 0
        self.carried[name] = symbols
        for symbol in book_symbols:
            self.book_connection[symbol] = name

    @property
    def connected(self) -> bool:
        """Every stream connection is up now."""
        return not self.down

    @connected.setter
    def connected(self, value: bool) -> None:
        self.down = {} if value else dict.fromkeys(self.carried, 0)

    def connection_up(self, name: str) -> None:
        """A connection (re)connected: its books start a new generation."""
        self.down.pop(name, None)
        for symbol, carrier in self.book_connection.items():
            if carrier == name:
                self.generations[symbol] = self.generations.get(symbol, 0) + 1

    def books_up(self, symbol: str) -> bool:
        """The connection carrying `symbol`'s depth is up (snapshots are fetched only then)."""
        carrier = self.book_connection.get(symbol)
        return carrier is not None and carrier not in self.down

    def generation_of(self, symbol: str) -> int:
        """How many times `symbol`'s depth connection connected so far."""
        return self.generations.get(symbol, 0)

    def affected_symbols(self) -> tuple[str, ...]:
        """The symbols whose data a down connection carries (all of them when none is down)."""
        if not self.down:
            return self._symbols
        missing = {symbol for name in self.down for symbol in self.carried.get(name, self._symbols)}
        return tuple(symbol for symbol in self._symbols if symbol in missing)

    async def set_link(
        self,
        link: str,
        state: ConnectionState,
        reason: str,
        *,
        causes: tuple[str, ...] = (),
        symbols: tuple[str, ...] | None = None,
    ) -> None:
        """Publish a link's state when it, the causes of its degradation, or the symbols it names
        changed (the watchdog weighs the causes: the clock alone halts trading; corruption on top
        of it is EMERGENCY_MODE; the state-builder takes the named symbols STALE while it is down)."""
        current = self.link_state if link == MARKET_WS_LINK else self.rest_link_state
        named = self._symbols if symbols is None else symbols
        unchanged = state == current and causes == self._causes.get(link, ())
        if link == MARKET_WS_LINK:
            unchanged = unchanged and named == self._named
        if unchanged or self._runtime.closed:
            return
        if link == MARKET_WS_LINK:
            self.link_state = state
            self._named = named
        else:
            self.rest_link_state = state
        self._causes[link] = causes
        self._runtime.log.info("link_state_changed", link=link, previous=current, current=state, reason=reason)
        event = LinkStateChanged(
            venue=self._venue,
            link=link,
            previous=current,
            current=state,
            reason=reason,
            symbols=list(named),
            causes=list(causes),
        )
        await self._alerts.kv(
            subjects.key_link(self._venue, link),
            LinkValue(state=state, reason=reason, causes=list(causes), ts_ns=event.ts_event_ns),
        )
        await self._publisher.emit([event])

    async def refresh(self, reason: str) -> None:
        """Publish the market link's state when its conditions changed it."""
        state = market_link_state(
            connected=self.connected,
            failed_attempts=max(self.down.values(), default=0),
            clean=self.clean_window.is_clean(self._runtime.clock()),
            degraded_reasons=self.degraded,
        )
        causes: tuple[str, ...] = ()
        if state == ConnectionState.DEGRADED and self.degraded and self.connected:
            reason = "; ".join(f"{name}: {detail}" for name, detail in self.degraded.items())
            causes = tuple(sorted(self.degraded))
        elif state == ConnectionState.CONNECTED and self.link_state == ConnectionState.SUSPECT:
            reason = "clean window passed"
        # While a connection is down, the event names only the symbols whose data it carries: the
        # other connections' symbols go on (their books stay VALID).
        await self.set_link(MARKET_WS_LINK, state, reason, causes=causes, symbols=self.affected_symbols())

    async def degrade(self, name: str, detail: str) -> None:
        """Add (or update) a degradation cause of the stream link."""
        self.degraded[name] = detail
        await self.refresh(detail)

    async def undegrade(self, name: str, reason: str) -> None:
        """Remove a degradation cause of the stream link."""
        if self.degraded.pop(name, None) is not None:
            await self.refresh(reason)

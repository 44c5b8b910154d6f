"""Paper strategies in risk: which strategies trade on paper (KV `strategy_mode.<name>`, set by the
gateway at an operator's enable) and what that means for an order of theirs.

A paper strategy's orders go to the paper order link, never the venue. This system's paper order
link is its order link when it runs on paper (`bulwark up --paper`, `BULWARK_PAPER`), or else the
paper venue beside the live ones (`BULWARK_PAPER_VENUE`, `bulwark up --paper-link`: a paper
simulator mirroring the main venue's market, traded by its own position process): risk routes a
paper strategy's orders there and keeps that venue out of live routing, live exposure and holders,
and the CB-1/CB-3 loss breakers (`state`). A system with neither denies every order of a paper
strategy (fail closed: it must never trade live by mistake). On paper an order is not held back
by its strategy's open CB-3 breaker: paper is how a strategy disabled by CB-3 comes back (the
breaker closes only at a live enable).
"""

from __future__ import annotations

from functools import partial

from libs.bus import Bus
from libs.kv_watch import KeyWatch, watch_keys
from libs.logging import Logger
from proto import subjects
from proto.enums import StrategyMode
from proto.kv import StrategyModeValue, decode_value
from proto.messages import EnableStrategy, SubmitOrder


class PaperModes:
    """Order mode of every strategy (default live) and whether there is a paper order link.

    Args:
        paper_link: the system trades on paper (its order link is the paper simulator).
        venue: the paper venue beside the live ones ("" none): a paper strategy's orders go there.
    """

    def __init__(self, paper_link: bool = False, venue: str = "") -> None:
        self.paper_link = paper_link
        self.venue = "" if paper_link else venue
        """The paper venue paper strategies' orders are routed to ("" when the whole system is on paper)."""
        self.modes: dict[str, StrategyMode] = {}

    def mode(self, strategy: str | None) -> StrategyMode:
        """The order mode of `strategy` (an order without one, an operator's, is live)."""
        return self.modes.get(strategy, StrategyMode.LIVE) if strategy is not None else StrategyMode.LIVE

    def on_enabled(self, command: EnableStrategy) -> None:
        """An operator enabled a strategy, live or on paper."""
        self.modes[command.strategy] = command.mode

    def denial(self, order: SubmitOrder) -> str | None:
        """Why this order may not go out at all (a paper strategy without a paper order link), else None."""
        if self.mode(order.strategy) == StrategyMode.PAPER and not self.has_link:
            return (
                f"strategy {order.strategy} trades on paper and this system has no paper order link "
                "(`bulwark up --paper` or `--paper-link`): its orders never go to the venue"
            )
        return None

    def on_paper(self, order: SubmitOrder) -> bool:
        """Does this order go to the paper order link as a paper strategy's order?"""
        return self.has_link and self.mode(order.strategy) == StrategyMode.PAPER

    @property
    def has_link(self) -> bool:
        """A paper strategy's orders have somewhere to go: the whole system or a paper venue."""
        return self.paper_link or bool(self.venue)

    def routed_venue(self, order: SubmitOrder) -> str | None:
        """The paper venue this order is routed to (a paper strategy's, or one naming the paper
        venue itself, e.g. a flatten there), None for an order that takes the live routing."""
        if not self.venue:
            return None
        if order.venue == self.venue or self.on_paper(order):
            return self.venue
        return None

    def on_record(self, key: str, raw: bytes | None, log: Logger) -> None:
        """A strategy's persisted mode (KV `strategy_mode.<name>`), at risk's start or when it changed.

        The record decides over the `EnableStrategy` event (core NATS, which may come after the
        strategy's first signal, or not at all across a reconnect). A deleted record keeps what
        risk heard; an unreadable one is paper (`recorded_mode`).
        """
        strategy = key.removeprefix(subjects.KEY_STRATEGY_MODE_PREFIX)
        if raw is None:
            return
        mode, readable = recorded_mode(raw)
        if not readable:
            log.warning("strategy_mode_unreadable", strategy=strategy, action_taken="treated as paper")
        self.modes[strategy] = mode

    async def confirm(self, bus: Bus, strategy: str, log: Logger) -> None:
        """Read `strategy`'s persisted mode before deciding one of its orders, where live and paper run
        side by side (a paper venue beside the live ones): the one place a stale mode could send a
        paper strategy's order live. The watch (`follow`) delivers the change long before the
        strategy's next signal in practice; this read makes it certain whatever the delivery order
        (e.g. the watch catching up after a reconnect). A failed read keeps the mode heard."""
        if not self.venue:
            return  # no live and paper side by side: a mode change cannot race an order here
        try:
            entry = await bus.kv_get(subjects.key_strategy_mode(strategy))
        except Exception as exc:  # noqa: BLE001 - any bus failure: keep the mode heard
            log.warning("strategy_mode_read_failed", strategy=strategy, error=str(exc)[:200])
            return
        if entry is not None:
            self.on_record(subjects.key_strategy_mode(strategy), entry[0], log)

    async def follow(self, bus: Bus, log: Logger) -> KeyWatch:
        """Keep every strategy's persisted mode in memory (a KV watch on `strategy_mode.*`).

        Returns once the modes stored at the start are applied, so an order consumer started
        after it decides the first signal on the persisted mode. The gateway persists a mode
        before it publishes the enable, and a strategy signals only after its enable, so the
        change reaches risk well before that strategy's next signal, without a read per order.
        """
        return await watch_keys(bus, subjects.key_strategy_mode("*"), partial(self.on_record, log=log), log)


def recorded_mode(raw: bytes) -> tuple[StrategyMode, bool]:
    """(mode, readable) of a `strategy_mode.<name>` record.

    An unreadable record is paper: without a paper order link its orders are denied, rather than
    risk sending a paper strategy's orders live.
    """
    value = decode_value(StrategyModeValue, raw)
    return (value.mode, True) if value is not None else (StrategyMode.PAPER, False)

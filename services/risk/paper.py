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

from collections.abc import Iterable

from libs.bus import Bus
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

    async def refresh(self, bus: Bus, strategy: str, log: Logger) -> None:
        """Read `strategy`'s persisted mode again before deciding one of its orders.

        The gateway persists the mode before it publishes the enable, and a strategy signals only
        after its enable, so the record is never older than the signal, while the `EnableStrategy`
        event (core NATS) may arrive after the signal, or not at all across a reconnect: the record
        decides. An unreadable record is paper; a failed read or no record keeps what risk heard.
        """
        try:
            entry = await bus.kv_get(subjects.key_strategy_mode(strategy))
        except Exception as exc:  # noqa: BLE001 - any bus failure: keep the mode heard
            log.warning("strategy_mode_read_failed", strategy=strategy, error=str(exc)[:200])
            return
        if entry is None:
            return
        value = decode_value(StrategyModeValue, entry[0])
        self.modes[strategy] = value.mode if value is not None else StrategyMode.PAPER

    async def load(self, bus: Bus, strategies: Iterable[str], log: Logger) -> None:
        """Read every configured strategy's persisted mode (an unreadable one is taken as paper: without
        a paper order link its orders are denied rather than risk sending a paper strategy live)."""
        for name in strategies:
            entry = await bus.kv_get(subjects.key_strategy_mode(name))
            if entry is None:
                continue
            value = decode_value(StrategyModeValue, entry[0])
            if value is None:
                log.warning("strategy_mode_unreadable", strategy=name, action_taken="treated as paper")
            self.modes[name] = value.mode if value is not None else StrategyMode.PAPER

"""market-data's calls to the venue's REST API (SPEC FM-N2, FM-N5): every call goes through the
venue circuit breaker, and the breaker's and the request budget's transitions are published with
the REST link state they imply. Also the REST ping that tells a reconnect wait the venue is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from libs.binance.client import RequestThrottled
from libs.binance.errors import VenueError, VenueTimeout, VenueUnreachable
from libs.breaker import BreakerOpen, BreakerState, BreakerTransition, CircuitBreaker
from libs.ratelimit import BudgetState, RateBudget
from proto import subjects
from proto.enums import AlertSeverity, ConnectionState
from services.market_data.adapters import MARKET_REST_LINK
from services.market_data.alerts import Alerts
from services.market_data.frames import BadFrame
from services.market_data.link import Links
from services.market_data.publishing import Publisher
from services.market_data.runtime import Runtime

T = TypeVar("T")

VENUE_CALL_ERRORS = (VenueError, VenueUnreachable, VenueTimeout, BreakerOpen, BadFrame)
"""What a venue call (and parsing its answer) can raise that the caller handles."""


class RestPort(Protocol):
    """The venue REST client market-data uses (`libs.binance.client.BinanceRestClient`)."""

    async def depth(self, symbol: str, limit: int = 1000) -> dict: ...

    async def open_interest(self, symbol: str) -> dict: ...

    async def premium_index(self, symbol: str) -> dict: ...

    async def server_time_ms(self) -> int: ...

    async def aggregate_trades(self, symbol: str, *, from_id: int, limit: int = 500) -> list[dict]: ...

    async def historical_trades(self, symbol: str, *, from_id: int, limit: int = 500) -> list[dict]: ...

    async def ticker_price(self, symbol: str) -> dict: ...

    async def ping(self) -> dict: ...


class VenueRest:
    """The venue's REST API behind the breaker, with budget and breaker transitions published.

    Args:
        runtime: the service's shared context.
        api: the REST client.
        venue: venue name (alert keys).
        publisher: where breaker events go.
        alerts: alerts and KV records.
        links: the REST link state is set here.
        budget: the venue's request budget the client uses; None: none.
        breaker: the per-venue circuit breaker (FM-N5); None: no breaker.
    """

    def __init__(
        self,
        runtime: Runtime,
        api: RestPort,
        *,
        venue: str,
        publisher: Publisher,
        alerts: Alerts,
        links: Links,
        budget: RateBudget | None,
        breaker: CircuitBreaker | None,
    ) -> None:
        self._runtime = runtime
        self.api = api
        self._venue = venue
        self._publisher = publisher
        self._alerts = alerts
        self._links = links
        self.budget = budget
        self.breaker = breaker

    async def call(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        """One REST call through the venue breaker (FM-N5); budget and breaker changes are published.

        Raises:
            BreakerOpen: the breaker refused the call (nothing was sent).
            VenueError | VenueUnreachable | VenueTimeout | RequestThrottled: what the call raised.
        """
        if self.breaker is not None:
            allowed, transition = self.breaker.allow()
            await self.on_breaker(transition)
            if not allowed:
                raise BreakerOpen(self.breaker.name, self.breaker.retry_after_s())
        try:
            result = await call()
        except RequestThrottled:
            raise  # refused by our own budget: nothing reached the venue
        except VenueError as exc:
            # A definite answer: the venue is up unless it is a 5xx (429/418 belong to the budget).
            if exc.status >= 500:
                await self._breaker_failure(f"{operation}: HTTP {exc.status}")
            elif exc.status not in (418, 429):
                await self._breaker_success()
            raise
        except (VenueUnreachable, VenueTimeout) as exc:
            await self._breaker_failure(f"{operation}: {type(exc).__name__}")
            if isinstance(exc, VenueUnreachable):
                await self._alerts.raise_alert(
                    f"md.venue_unreachable.{self._venue}",
                    AlertSeverity.P1,
                    "venue REST unreachable on every endpoint",
                    transient=True,
                    error=str(exc)[:300],
                )
            raise
        else:
            await self._breaker_success()
            return result
        finally:
            await self.after_rest()

    async def probe(self, timeout_s: float) -> bool:
        """One REST ping: True when the venue answered it.

        Through the breaker (an open one means no probe) and the budget (the client sends it at
        the lowest priority and never waits for budget). A failed probe is not a breaker failure
        while the breaker is CLOSED: three probes a second during an outage would open it by their
        own rate within two seconds and then hold every snapshot for the whole cool-down after the
        venue came back. In HALF_OPEN the probe is a trial call like any other, so its failure
        re-opens the breaker; an answer always counts as a success.
        """
        if self.breaker is not None:
            allowed, transition = self.breaker.allow()
            await self.on_breaker(transition)
            if not allowed:
                return False
        try:
            await asyncio.wait_for(self.api.ping(), max(0.05, timeout_s))
        except RequestThrottled:
            return False  # our own budget refused (ban, back-off, weight): nothing was sent
        except (VenueError, VenueUnreachable, VenueTimeout, TimeoutError) as exc:
            if self.breaker is not None and self.breaker.state == BreakerState.HALF_OPEN:
                await self._breaker_failure(f"ping: {type(exc).__name__}")
            return False
        else:
            await self._breaker_success()
            return True
        finally:
            await self.after_rest()

    async def _breaker_failure(self, reason: str) -> None:
        if self.breaker is not None:
            await self.on_breaker(self.breaker.record_failure(reason))

    async def _breaker_success(self) -> None:
        if self.breaker is not None:
            await self.on_breaker(self.breaker.record_success())

    async def on_breaker(self, transition: BreakerTransition | None) -> None:
        """Publish a breaker transition (event, KV record, alert) and the REST link state it implies."""
        if transition is None:
            return
        self._runtime.log.warning("breaker_state_changed", **transition.fields())
        metrics = self._runtime.metrics
        if metrics is not None and transition.current == BreakerState.OPEN and transition.previous != BreakerState.OPEN:
            metrics.breaker_tripped(transition.name)
        event = transition.event()
        await self._alerts.kv(subjects.key_breaker(transition.name), transition.record(event.ts_event_ns))
        await self._publisher.emit([event])
        key = f"md.breaker.{transition.name}"
        if transition.current == BreakerState.OPEN:
            await self._alerts.raise_alert(
                key, AlertSeverity.P1, f"venue breaker {transition.name} open", reason=transition.reason
            )
        elif transition.current == BreakerState.CLOSED:
            await self._alerts.resolve(key, "breaker closed")
        await self.after_rest()

    async def tick(self) -> None:
        """Timers: budget transitions, and a breaker whose cool-down ended."""
        await self.after_rest()
        if self.breaker is not None:
            _, transition = self.breaker.allow()
            await self.on_breaker(transition)

    async def after_rest(self) -> None:
        """Publish budget transitions (FM-N2) and the REST link state they and the breaker imply."""
        budget_state = BudgetState.NORMAL
        if self.budget is not None:
            for transition in self.budget.drain_transitions():
                self._runtime.log.warning(
                    "rate_budget_changed",
                    previous=transition.previous.value,
                    current=transition.current.value,
                    reason=transition.reason,
                )
                ban_key, limit_key = f"md.ip_banned.{self._venue}", f"md.rate_limited.{self._venue}"
                if transition.current == BudgetState.BANNED:
                    await self._alerts.raise_alert(
                        ban_key, AlertSeverity.P1, "venue IP ban (418): no requests until it ends"
                    )
                elif transition.previous == BudgetState.BANNED:
                    await self._alerts.resolve(ban_key, transition.reason)
                if transition.current == BudgetState.DEGRADED and transition.previous != BudgetState.BANNED:
                    await self._alerts.raise_alert(limit_key, AlertSeverity.P2, "venue rate limits (429) persist")
                elif transition.current == BudgetState.NORMAL:
                    await self._alerts.resolve(limit_key, transition.reason)
            budget_state = self.budget.state
        breaker_open = self.breaker is not None and self.breaker.state == BreakerState.OPEN
        if breaker_open:
            state, reason = ConnectionState.DISCONNECTED, "venue breaker open"
        elif budget_state in (BudgetState.BANNED, BudgetState.DEGRADED):
            state, reason = ConnectionState.DEGRADED, f"rate budget {budget_state.value}"
        elif budget_state == BudgetState.THROTTLED:
            state, reason = ConnectionState.SUSPECT, "rate limited (429): request rate halved"
        else:
            state, reason = ConnectionState.CONNECTED, "requests answered"
        await self._links.set_link(MARKET_REST_LINK, state, reason)

    def details(self) -> dict[str, Any]:
        """Heartbeat details: the budget and the breaker."""
        return {
            "budget": self.budget.view() if self.budget is not None else None,
            "breaker": self.breaker.state.value if self.breaker is not None else None,
        }

"""Orders beyond memory: was an approval handled before, and which client order id is still free
for an order this service names itself (never send twice, SPEC §6, FM-C7).

Finished orders leave memory after the retention; the Postgres projection answers for them.
"""

from __future__ import annotations

import asyncpg

from libs.errors import DependencyUnavailable, PermanentError, TransientError
from libs.ids import client_order_id_for
from libs.orders_model import OrderRecord
from libs.store_errors import WriteFailure, classify_write_error, describe

from .core import Core

APPROVAL_CLOCK_MARGIN_NS = 5_000_000_000
"""Clock difference tolerated between risk (stamps approvals) and this service (stamps orders) when
deciding from memory alone that an approval was never handled (SPEC FM-D3 alerts above 1 s)."""


class OrderLookup:
    """Answers about orders that may exist without being in memory."""

    def __init__(self, core: Core) -> None:
        self.core = core

    async def known_elsewhere(self, coid: str) -> OrderRecord | None:
        """The projection's record of an order not in memory (None: no such order).

        Raises:
            asyncpg.PostgresError, OSError: Postgres could not be asked.
        """
        found: OrderRecord | None = await self.core.projections.find_order(coid)
        if found is not None:
            self.core.log.info(
                "order_found_in_projection", client_order_id=coid, status=found.status.value, venue=found.venue
            )
        return found

    async def approval_seen_before(self, coid: str, approved_ns: int) -> OrderRecord | None:
        """Was this approval, whose order is not in memory, handled before? (never send twice, §6, FM-C7)

        The projection answers (indexed lookup). If Postgres is down, memory answers alone when it
        can: an approval newer than every order that ever left memory (plus a clock margin) would
        have its order in memory had it been handled, so it was not. Otherwise nothing is decided:
        the approval is retried later (nak), never sent blind.

        Raises:
            DependencyUnavailable: Postgres is down and memory cannot tell (the consumer waits).
            PermanentError: Postgres refuses the lookup itself (a bad id): dead-lettered.
            TransientError: another Postgres failure; retried a bounded number of times.
        """
        try:
            return await self.known_elsewhere(coid)
        except (asyncpg.PostgresError, OSError) as exc:
            if approved_ns > self.core.ledger.evicted_until_ns + APPROVAL_CLOCK_MARGIN_NS:
                self.core.log.warning(
                    "order_lookup_unavailable",
                    client_order_id=coid,
                    error=f"{type(exc).__name__}: {exc}"[:300],
                    action_taken="newer than every evicted order: never handled, handled now",
                )
                return None
            # By what the error means (`libs.store_errors`): an outage is waited for (the consumer
            # holds this approval, in order), a lookup Postgres refuses (a bad id) is dead-lettered.
            failure = classify_write_error(exc)
            if failure is WriteFailure.BAD_ROW:
                raise PermanentError(f"{coid}: lookup refused by Postgres: {describe(exc, 300)}") from exc
            message = (
                f"{coid}: not in memory and Postgres is unavailable ({type(exc).__name__}); "
                "whether it was already sent is unknown, retried later"
            )
            if failure is WriteFailure.DEPENDENCY_DOWN:
                raise DependencyUnavailable("postgres", message) from exc
            raise TransientError(message) from exc

    async def fresh_key(self, stem: str) -> str:
        """`<stem>:<n>` for the first n whose client order id is neither in memory nor in the
        projection (orders found there are taken back into memory), for orders this service names
        itself (protective, protect-close, flatten backstop). Postgres down: memory alone decides;
        the attempts of a current protection or flatten are never evicted (`pinned_orders`)."""
        orders = self.core.ledger.orders
        attempt = 0
        while True:
            key = f"{stem}:{attempt}"
            coid = client_order_id_for(key)
            if coid not in orders:
                try:
                    found = await self.known_elsewhere(coid)
                except (asyncpg.PostgresError, OSError) as exc:
                    self.core.log.warning("order_lookup_unavailable", client_order_id=coid, error=repr(exc)[:300])
                    return key
                if found is None:
                    return key
                if found.venue == self.core.venue:  # another venue's order stays that process's: the id is taken
                    orders[coid] = found
            attempt += 1

"""Protective levels (FM-C2): the stop-loss and take-profit an entry asked for, per symbol, kept in
the ledger and durably in KV (`protection.<venue>.<symbol>`), so that a restarted process (or the
backup's takeover) still protects the position. Written before any order relies on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import msgspec
from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError

from .core import Core
from .domain import Protection


class ProtectionLevels:
    """The levels protecting each symbol's position: in memory (`ledger.protections`) and in KV.

    Args:
        core: the shared state and effects.
    """

    def __init__(self, core: Core) -> None:
        self.core = core

    def _key(self, symbol: str) -> str:
        return f"protection.{self.core.venue}.{symbol}"

    async def remember(self, protection: Protection) -> None:
        """Remember (durably, in KV) the levels that protect the symbol's position."""
        self.core.ledger.protections[protection.symbol] = protection
        value = {
            "entry": protection.entry,
            "stop_loss": str(protection.stop_loss) if protection.stop_loss is not None else None,
            "take_profit": str(protection.take_profit) if protection.take_profit is not None else None,
        }
        await self.core.bus.kv_put(self._key(protection.symbol), msgspec.json.encode(value))
        self.core.protect_dirty.add(protection.symbol)

    async def forget(self, symbol: str) -> None:
        """Drop the symbol's levels (its position is flat and its entry finished)."""
        self.core.ledger.protections.pop(symbol, None)
        kv = await self.core.bus.kv()
        try:
            await kv.delete(self._key(symbol))
        except KeyNotFoundError:
            pass
        self.core.log.info("protection_cleared", symbol=symbol)

    async def load(self, fallback: Sequence[Protection] = ()) -> None:
        """Protective levels from KV (written before use, so authoritative); `fallback` (a snapshot's)
        only for a symbol whose KV record cannot be read."""
        core = self.core
        protections: dict[str, Protection] = {}
        core.ledger.protections = protections
        saved = {p.symbol: p for p in fallback}
        for symbol in core.symbols:
            try:
                entry = await core.bus.kv_get(self._key(symbol))
            except (NatsError, TimeoutError) as exc:
                core.log.warning("protection_read_failed", symbol=symbol, error=repr(exc), action_taken="snapshot's")
                if symbol in saved:
                    protections[symbol] = saved[symbol]
                continue
            if entry is None:
                continue
            try:
                raw = msgspec.json.decode(entry[0])
                protections[symbol] = Protection(
                    str(raw["entry"]),
                    symbol,
                    Decimal(raw["stop_loss"]) if raw.get("stop_loss") else None,
                    Decimal(raw["take_profit"]) if raw.get("take_profit") else None,
                )
            except (msgspec.DecodeError, KeyError, TypeError, ArithmeticError) as exc:
                core.log.error("protection_record_invalid", symbol=symbol, error=repr(exc), action_taken="ignored")

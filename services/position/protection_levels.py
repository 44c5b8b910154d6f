"""Protective levels (FM-C2): the stop-loss and take-profit an entry asked for, per symbol, kept in
the ledger and durably in KV (`protection.<venue>.<symbol>`, a `proto.kv.ProtectionValue`), so that
a restarted process (or the backup's takeover) still protects the position. Written before any
order relies on them.
"""

from __future__ import annotations

from collections.abc import Sequence

from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError

from proto import subjects
from proto.kv import ProtectionValue, decode_value, encode_value

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
        return subjects.key_protection(self.core.venue, symbol)

    async def remember(self, protection: Protection) -> None:
        """Remember (durably, in KV) the levels that protect the symbol's position."""
        self.core.ledger.protections[protection.symbol] = protection
        value = ProtectionValue(
            entry=protection.entry, stop_loss=protection.stop_loss, take_profit=protection.take_profit
        )
        await self.core.bus.kv_put(self._key(protection.symbol), encode_value(value))
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
            value = decode_value(ProtectionValue, entry[0])
            if value is None:
                core.log.error(
                    "protection_record_invalid",
                    symbol=symbol,
                    raw=entry[0][:200].decode(errors="replace"),
                    action_taken="ignored",
                )
                continue
            protections[symbol] = Protection(value.entry, symbol, value.stop_loss, value.take_profit)

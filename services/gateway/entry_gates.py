"""`can_enter` and `blocked_by` of `/v1/status`, per symbol and venue (pure): what risk answers to
`svc.risk.entry_gates` (the gates of its own decisions), plus what keeps each venue's position
process from sending an entry it approved, as that process reports it in its heartbeat (its lease,
its reconciliation, the preflight gate of its order link).

Nothing is guessed here: a risk that does not answer blocks every entry (nothing is approved
without it, FM-C6), and a position process that is silent blocks its venue (FM-C9).
"""

from __future__ import annotations

from typing import Any

import msgspec

from libs.heartbeat import ComponentView
from proto.enums import ComponentState
from proto.kv import PreflightValue
from proto.replies import EntryBlocker, EntryGatesReply

RISK_SILENT = EntryBlocker(gate="risk", reason="risk is not answering: no order is approved until it does (FM-C6)")


def position_blockers(
    venue: str, component: str, view: ComponentView | None, preflight: PreflightValue | None
) -> list[EntryBlocker]:
    """What keeps `component` (the position process of `venue`) from sending an approved entry now.

    Args:
        venue: the venue it trades.
        component: its component name (`position`, `position-<venue>`).
        view: its latest heartbeat as the gateway tracks it (None: never heard).
        preflight: the venue's latest preflight from KV, for since-when (None: not known).
    """
    if view is None or view.state == ComponentState.DOWN:
        return [
            EntryBlocker(
                gate="position",
                reason=f"{component} is DOWN (no heartbeat): orders for {venue} wait until it is back (FM-C9)",
            )
        ]
    details = view.details
    found = []
    lease = details.get("lease")
    if lease is not None and lease != "held":
        found.append(
            EntryBlocker(gate="lease", reason=f"{component} lease {lease}: it sends nothing to the venue (SPEC §8)")
        )
    if details.get("reconciled") is False:
        found.append(
            EntryBlocker(
                gate="reconciliation",
                reason=f"{component} has not reconciled with {venue} yet: no orders go out until it has (SPEC §6)",
            )
        )
    gate = details.get("preflight_gate")
    if gate is not None and gate != "PASSED":
        reason = str(details.get("preflight_gate_reason") or f"venue preflight {gate}")
        since = preflight.ts_ns if preflight is not None and preflight.venue == venue and preflight.ts_ns else None
        found.append(EntryBlocker(gate="preflight", reason=f"{component}: {reason}", since_ns=since))
    return found


def shown(blockers: list[EntryBlocker]) -> list[dict[str, Any]]:
    return [msgspec.to_builtins(blocker) for blocker in blockers]


def can_enter(
    reply: EntryGatesReply | None, symbols: list[str], venues: dict[str, list[EntryBlocker]], main_venue: str
) -> dict[str, dict[str, Any]]:
    """Per symbol: `can_enter`, every reason it cannot (`blocked_by`), the venue a new entry goes to
    (`entry_venue`) and the same per venue (`venues`: `can_enter`, `blocked_by`).

    Args:
        reply: risk's entry gates (None: risk did not answer).
        symbols: every configured symbol.
        venues: what blocks each venue's position process (`position_blockers`), main venue first.
        main_venue: where an entry goes when risk cannot say.
    """
    answer: dict[str, dict[str, Any]] = {}
    for symbol in symbols:
        gates = reply.symbols.get(symbol) if reply is not None else None
        common = list(gates.blocked_by) if gates is not None else [RISK_SILENT]
        per_venue = {}
        for venue, position in venues.items():
            own = list(gates.venues[venue].blocked_by) if gates is not None and venue in gates.venues else []
            blocked = common + own + position
            per_venue[venue] = {"can_enter": not blocked, "blocked_by": shown(blocked)}
        entry_venue = gates.entry_venue if gates is not None else main_venue
        chosen = per_venue.get(entry_venue) or {"can_enter": False, "blocked_by": shown(common)}
        answer[symbol] = {
            "can_enter": chosen["can_enter"],
            "blocked_by": chosen["blocked_by"],
            "entry_venue": entry_venue,
            "venues": per_venue,
        }
    return answer

"""Outgoing stream frames and the damage frame faults do to them: a collapsed book (`depth_collapse`),
a corrupted message (`corrupt`: data-level or text-level)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from libs.decimals import plain

CORRUPT_MODES = ("invalid_json", "missing_field", "wrong_type", "truncated")


@dataclass(slots=True)
class Frame:
    """One outgoing stream frame; `corrupt` names how to mangle its serialised text."""

    data: dict[str, Any]
    corrupt: str | None = None


def collapse_depth(data: dict[str, Any], factor: Decimal) -> dict[str, Any]:
    """A depth update whose every quantity is scaled by `factor` (removed levels stay removed).

    Binance depth updates carry absolute quantities per level, so once the fault ends every level
    the market touches again is reported at its true size: the book heals by itself.
    """

    def scale(levels: Any) -> Any:
        if not isinstance(levels, list):
            return levels
        scaled = []
        for level in levels:
            try:
                price, quantity = level[0], Decimal(str(level[1]))
            except (IndexError, TypeError, InvalidOperation):
                scaled.append(level)  # not a [price, qty] pair: leave it for the client to reject
                continue
            # A quantity of 0 deletes the level: a collapse shrinks levels, it never deletes or invents them.
            reduced = quantity * factor if quantity > 0 else quantity
            if quantity > 0 and reduced <= 0:
                reduced = Decimal("0.001")
            scaled.append([price, plain(reduced)])
        return scaled

    return dict(data, b=scale(data.get("b")), a=scale(data.get("a")))


def corrupt_frame(data: dict[str, Any], mode: str) -> Frame:
    """A frame damaged the way `mode` says (data-level modes change the dict now)."""
    match mode:
        case "missing_field":
            damaged = dict(data)
            for key in ("u", "p", "E"):
                if key in damaged:
                    del damaged[key]
                    break
            return Frame(damaged)
        case "wrong_type":
            damaged = dict(data)
            for key in ("u", "p", "E"):
                if key in damaged:
                    damaged[key] = [damaged[key]] if isinstance(damaged[key], str) else "not-a-number"
                    break
            return Frame(damaged)
        case _:
            return Frame(data, corrupt=mode)


def corrupt_text(text: str, mode: str) -> str:
    """Mangle serialised JSON text (invalid_json / truncated)."""
    if mode == "truncated":
        return text[: max(1, len(text) // 2)]
    return text.replace('"', "'", 3).rstrip("}") + ",,"

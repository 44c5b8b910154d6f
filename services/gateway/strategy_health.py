"""How a strategy has been faring, for `/v1/strategies`: crashes in the FM-C2 window and restarts.

The sources are the strategy's own: the running process reports `crashes_in_window` on its
heartbeat (`details`); its persisted crash history (KV `strategy.<name>.crashes`, the crash times
still inside the window) answers when the process is silent. Restarts are the heartbeats' process
changes (`restarts.RestartCounter`). Pure: the route reads the sources and passes them in.
"""

from __future__ import annotations

from typing import Any

from libs.heartbeat import ComponentView
from proto.enums import ComponentState
from proto.kv import StrategyCrashesValue

CRASH_WINDOW_S = 600
"""FM-C2's window: more than 3 crashes inside it fail the strategy (the strategy service's
`CRASH_WINDOW_NS`; SPEC FM-C2)."""


def crash_fields(view: ComponentView | None, history: StrategyCrashesValue | None, now_ns: int) -> dict[str, Any]:
    """`crashes_in_window`, `crash_window_s` and `last_crash_ns` of one strategy.

    Args:
        view: its component as the heartbeats tell it (None: never heard).
        history: its persisted crash history (None: never written or unreadable).
        now_ns: now, UTC ns (what the window is counted back from).
    """
    window_ns = CRASH_WINDOW_S * 1_000_000_000
    recent = sorted(ts for ts in (history.crashes if history is not None else ()) if now_ns - ts <= window_ns)
    heard = (view.details or {}).get("crashes_in_window") if view is not None else None
    live = view is not None and view.state != ComponentState.DOWN and isinstance(heard, int)
    if live:
        count: int | None = heard
    elif history is not None:
        count = len(recent)
    else:
        count = None
    return {
        "crashes_in_window": count,
        "crash_window_s": CRASH_WINDOW_S,
        "last_crash_ns": recent[-1] if recent else None,
    }

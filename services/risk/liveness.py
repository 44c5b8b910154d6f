"""Lost dependencies (FM-C1), pure: is the state-builder alive, and is a reported hot state too old."""

from __future__ import annotations

from dataclasses import dataclass

from proto.enums import HotStateStatus

STATE_BUILDER_TIMEOUT_NS = 3_000_000_000
"""No heartbeat and no answer from the state-builder for this long: it is dead (SPEC FM-C1)."""
HOT_STATE_MAX_AGE_MS = 5_000
"""A symbol whose last book update is older than this (as the state-builder reports it) is not VALID."""


@dataclass
class StateBuilderWatch:
    """Is the state-builder alive? Fed with the (monotonic) times it was last heard from.

    It is heard from through its heartbeat `hb.state-builder` and its answers to `svc.state-builder.*`.
    Never heard from counts as dead (fail closed).
    """

    timeout_ns: int = STATE_BUILDER_TIMEOUT_NS
    last_seen_ns: int | None = None

    def heard(self, now_ns: int) -> bool:
        """Record a sign of life; True when it was dead until now (a revival)."""
        revived = not self.alive(now_ns)
        self.last_seen_ns = now_ns
        return revived

    def alive(self, now_ns: int) -> bool:
        return self.last_seen_ns is not None and now_ns - self.last_seen_ns <= self.timeout_ns

    def down_reason(self, now_ns: int) -> str | None:
        """Why the state-builder counts as dead, None while it is alive."""
        if self.alive(now_ns):
            return None
        if self.last_seen_ns is None:
            return "state-builder not heard from (no heartbeat, no answer): hot state treated as INVALID"
        silent_s = (now_ns - self.last_seen_ns) / 1e9
        return f"state-builder silent for {silent_s:.1f}s (no heartbeat, no answer): hot state treated as INVALID"


def reply_hot_state(status: HotStateStatus, age_ms: int | None) -> HotStateStatus:
    """A symbol's hot state as the state-builder reported it, INVALID when its data is too old."""
    if status == HotStateStatus.VALID and age_ms is not None and age_ms > HOT_STATE_MAX_AGE_MS:
        return HotStateStatus.INVALID
    return status

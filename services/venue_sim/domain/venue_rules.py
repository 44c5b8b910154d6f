"""The rules a live Binance USD-M connection lives under, as the simulator enforces them (pure,
time as integer ns passed in): WebSocket connection lifetime, ping/pong, incoming-message rate and
streams per connection, the listenKey's validity, and IP bans that escalate while a client keeps
sending. Binance's numbers are the defaults; tests shorten them."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

NS_PER_S = 1_000_000_000
MAX_BAN_S = 3 * 86_400
"""Binance escalates IP bans from 2 minutes up to 3 days."""


@dataclass(frozen=True, slots=True)
class ConnectionRules:
    """Limits of a WebSocket connection and of the user-data stream (Binance USD-M's by default)."""

    lifetime_s: float = 86_400.0
    """A connection is closed once it is this old (Binance: 24 h)."""
    pong_timeout_s: float = 600.0
    """A connection that sent no pong for this long is closed (Binance: 10 min)."""
    max_incoming_per_s: int = 10
    """Incoming messages (pings, pongs, commands) per second; more closes the connection."""
    max_streams: int = 1024
    """Streams one connection may listen to."""
    listen_key_validity_s: float = 3_600.0
    """A listenKey expires this long after its creation or last keep-alive (Binance: 60 min)."""


class MessageRate:
    """Incoming messages of one connection in the last second."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._times: deque[int] = deque()

    def allow(self, now_ns: int) -> bool:
        """Count one message; False when it makes more than `limit` within one second."""
        self._times.append(now_ns)
        while self._times and self._times[0] <= now_ns - NS_PER_S:
            self._times.popleft()
        return len(self._times) <= self.limit


class IpBan:
    """The venue's ban of the client's IP (HTTP 418): every request is refused until it ends, and
    each request sent during it bans the IP longer (`escalation` times the last duration, at most
    3 days), as Binance does with clients that do not back off. `escalation` 1 keeps bans fixed."""

    def __init__(self, escalation: float = 2.0) -> None:
        self.escalation = escalation
        self.until_ns: int | None = None
        self.duration_s = 0.0
        self.bans = 0
        self.refused = 0
        """Requests refused because they came during a ban (not the one that started it)."""
        self.refused_ws_connects = 0
        """Of those, WebSocket connects refused at the upgrade."""

    def start(self, now_ns: int, duration_s: float) -> None:
        """Ban from now for `duration_s`."""
        self.duration_s = float(duration_s)
        self.until_ns = now_ns + int(duration_s * NS_PER_S)
        self.bans += 1

    def active(self, now_ns: int) -> bool:
        """Whether a ban is in force."""
        return self.until_ns is not None and now_ns < self.until_ns

    def refuse(self, now_ns: int, *, connect: bool = False) -> None:
        """A request (`connect`: a WebSocket connect) arrived during the ban: count it and escalate the ban."""
        self.refused += 1
        self.refused_ws_connects += connect
        if self.escalation > 1:
            self.start(now_ns, min(max(self.duration_s, 1.0) * self.escalation, MAX_BAN_S))
            self.bans -= 1  # the same ban, made longer

    def retry_after_s(self, now_ns: int) -> int:
        """Whole seconds until the ban ends (Binance's `Retry-After`)."""
        if self.until_ns is None:
            return 0
        return max(0, math.ceil((self.until_ns - now_ns) / NS_PER_S))

    def view(self, now_ns: int) -> dict[str, object]:
        """The ban's record for `GET /_sim/state`."""
        return {
            "banned": self.active(now_ns),
            "banned_until_ms": self.until_ns // 1_000_000 if self.active(now_ns) and self.until_ns else None,
            "ban_s": self.duration_s,
            "bans": self.bans,
            "refused_during_ban": self.refused,
            "refused_ws_connects": self.refused_ws_connects,
        }

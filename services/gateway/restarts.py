"""Process restarts of every component as the gateway sees them on the heartbeats.

Each heartbeat names its process (`pid`, `started_ns`). A process of a component that falls silent
for the heartbeat timeout while another process of the same component is heard is one restart (the
supervisor started it again, or a standby took the lease over). A standby heartbeating beside the
holder is no restart, nor is a component that went down and stays down. Counted since this gateway
started (`restarts_since_ns`). Pure: receive times are passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proto.messages import Heartbeat

Process = tuple[int, int]
"""(pid, started_ns): one process (a pid alone may be reused)."""


@dataclass
class ComponentProcesses:
    """The live processes of one component (last heard, ns) and the restarts counted."""

    heard: dict[Process, int] = field(default_factory=dict)
    current: Process | None = None
    restarts: int = 0
    last_restart_ns: int | None = None


@dataclass
class RestartCounter:
    """Restarts by component, from the heartbeats."""

    counting_since_ns: int
    """When counting began (the gateway's start): a restart before it is not known here."""
    timeout_ns: int = 3_000_000_000
    """A process silent this long is gone (the heartbeat timeout)."""
    _components: dict[str, ComponentProcesses] = field(default_factory=dict)

    def record(self, heartbeat: Heartbeat, received_ns: int) -> None:
        """Note the process behind a heartbeat; every other process of the component silent for the
        timeout is gone, and since this one answers, it was replaced: one restart each."""
        known = self._components.setdefault(heartbeat.component, ComponentProcesses())
        process = (heartbeat.pid, heartbeat.started_ns)
        known.heard[process] = received_ns
        known.current = process
        for other, heard_ns in list(known.heard.items()):
            if other != process and received_ns - heard_ns > self.timeout_ns:
                del known.heard[other]
                known.restarts += 1
                known.last_restart_ns = heartbeat.started_ns

    def restarts(self, component: str) -> int:
        """How many processes of the component were replaced since counting began."""
        known = self._components.get(component)
        return known.restarts if known is not None else 0

    def view(self, component: str) -> dict[str, Any]:
        """The fields `/v1/status` adds to a component: `restarts`, `last_restart_ns` (start of the
        process that replaced the last one gone), `started_ns` (the start of the process heard last;
        null before a heartbeat) and `restarts_since_ns`."""
        known = self._components.get(component) or ComponentProcesses()
        return {
            "restarts": known.restarts,
            "last_restart_ns": known.last_restart_ns,
            "started_ns": known.current[1] if known.current is not None else None,
            "restarts_since_ns": self.counting_since_ns,
        }

    def keep_only(self, components: set[str]) -> None:
        """Forget every component not in `components` (the heartbeat tracker forgot it), so names
        heard once on the bus do not accumulate."""
        for name in set(self._components) - components:
            del self._components[name]

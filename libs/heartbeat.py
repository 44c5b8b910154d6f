"""Heartbeats: components announce themselves every second; trackers decide who is up.

`HeartbeatTracker` is pure (time is passed in), so the gateway and the watchdog share one rule:
a component whose last heartbeat is older than the timeout (3 s) is DOWN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from proto import subjects
from proto.enums import ComponentState
from proto.messages import Heartbeat

if TYPE_CHECKING:
    from libs.settings import Settings


def expected_components(settings: Settings) -> tuple[str, ...]:
    """Every component that should heartbeat in this deployment: the core ones, one per strategy
    instance, and the backup venue's position process (`position-<venue>`) when a backup venue is
    configured (FM-N6). The gateway lists them and the watchdog declares them DOWN when silent."""
    backup = (subjects.position_component(settings.backup_venue, settings.venue),) if settings.backup_venue else ()
    # The paper venue's position process (`bulwark up --paper-link`): non-critical like the backup's.
    paper = (subjects.position_component(settings.paper_venue, settings.venue),) if settings.paper_venue else ()
    return (
        *subjects.CORE_COMPONENTS,
        *backup,
        *paper,
        *(subjects.strategy_component(name) for name in settings.strategies),
    )


@dataclass
class ComponentView:
    component: str
    state: ComponentState
    pid: int | None
    last_heartbeat_age_ms: int | None
    details: dict[str, Any] = field(default_factory=dict)
    metrics_url: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "pid": self.pid,
            "last_heartbeat_age_ms": self.last_heartbeat_age_ms,
            "metrics_url": self.metrics_url,
        }


FORGET_AFTER_NS = 24 * 3600 * 1_000_000_000
"""How long an unexpected component (a strategy instance removed, a stray name) stays listed DOWN."""


LEASE_DETAIL = "lease"
LEASE_HELD = "held"
"""`details["lease"]` of the process holding its component's single-writer lease (position, strategies):
a standby process heartbeats under the same component name with `standby`."""

Process = tuple[int, int]
"""(pid, started_ns): one process of a component."""


@dataclass
class HeartbeatTracker:
    """Last heartbeat of every process of every component, by receive time (ns).

    A component may run as several processes at once: an active one holding the component's
    single-writer lease and standbys waiting for it, all heartbeating under the component's name.
    The component is then what its lease holder reports (`current`), not whichever process was
    heard last, so its state, pid and details (the lease gate of `can_enter`) do not flip between them.
    """

    timeout_ns: int = 3_000_000_000
    expected: tuple[str, ...] = ()
    forget_after_ns: int = FORGET_AFTER_NS
    """A component that is not expected and silent this long is forgotten (its name no longer
    listed): names come from the bus, and the tracker must not grow with every one ever heard."""
    _processes: dict[str, dict[Process, tuple[Heartbeat, int]]] = field(default_factory=dict)

    def record(self, heartbeat: Heartbeat, received_ns: int) -> None:
        processes = self._processes.setdefault(heartbeat.component, {})
        processes[(heartbeat.pid, heartbeat.started_ns)] = (heartbeat, received_ns)
        # A process silent past the timeout while another one of the component speaks is gone
        # (a restart is a new process): forgotten, so the map stays as small as the live processes.
        for process, (_, heard_ns) in list(processes.items()):
            if received_ns - heard_ns > self.timeout_ns:
                del processes[process]

    def current(self, component: str, now_ns: int) -> tuple[Heartbeat, int] | None:
        """(heartbeat, received ns) that speaks for `component`: of its processes heard within the
        timeout, the latest one reporting the lease held; else the latest heard (None: never heard)."""
        processes = self._processes.get(component)
        if not processes:
            return None
        heard = sorted(processes.values(), key=lambda entry: entry[1])
        holders = [
            entry
            for entry in heard
            if now_ns - entry[1] <= self.timeout_ns and entry[0].details.get(LEASE_DETAIL) == LEASE_HELD
        ]
        return holders[-1] if holders else heard[-1]

    def view(self, now_ns: int) -> dict[str, ComponentView]:
        """Every expected or seen component with its state as of `now_ns` (see `forget_after_ns`)."""
        for name, processes in list(self._processes.items()):
            newest_ns = max((heard_ns for _, heard_ns in processes.values()), default=0)
            if name not in self.expected and now_ns - newest_ns > self.forget_after_ns:
                del self._processes[name]
        names = list(dict.fromkeys([*self.expected, *self._processes]))
        views: dict[str, ComponentView] = {}
        for name in names:
            entry = self.current(name, now_ns)
            if entry is None:
                views[name] = ComponentView(name, ComponentState.DOWN, None, None)
                continue
            heartbeat, received_ns = entry
            age_ns = max(0, now_ns - received_ns)
            state = ComponentState.DOWN if age_ns > self.timeout_ns else heartbeat.state
            views[name] = ComponentView(
                name, state, heartbeat.pid, age_ns // 1_000_000, dict(heartbeat.details), heartbeat.metrics_url
            )
        return views

    def down(self, now_ns: int) -> list[str]:
        return [name for name, view in self.view(now_ns).items() if view.state == ComponentState.DOWN]

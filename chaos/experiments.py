"""Chaos experiments: each injects a real failure into the running system and verifies recovery.

An experiment returns a JSON-able report with `passed` and the measurements it took.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libs.cli.main import fetch_json
from libs.runtime.launcher import load_credentials

Log = Callable[[str], None]


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    runner: Callable[[str, Path, Log], dict[str, Any]]

    def run(self, *, gateway: str, data_dir: Path, log: Log) -> dict[str, Any]:
        return self.runner(gateway, data_dir, log)


def _status(gateway: str, token: str) -> dict[str, Any]:
    result: dict[str, Any] = fetch_json(gateway.rstrip("/") + "/v1/status", token, timeout_s=3)
    return result


def _wait_restarted(gateway: str, token: str, component: str, old_pid: int, timeout_s: float) -> float | None:
    """Seconds until `component` heartbeats READY with a pid other than `old_pid`, or None."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            comp = _status(gateway, token)["components"].get(component, {})
        except OSError:
            comp = {}
        if comp.get("pid") not in (None, old_pid) and comp.get("state") == "READY":
            return time.monotonic() - start
        time.sleep(0.2)
    return None


def kill_each_service(gateway: str, data_dir: Path, log: Log) -> dict[str, Any]:
    """`kill -9` every service process once; each must come back heartbeating with a new pid."""
    token = os.environ.get("BULWARK_ADMIN_TOKEN") or load_credentials(data_dir).admin_token
    components = _status(gateway, token)["components"]
    results: dict[str, Any] = {}
    for name, comp in sorted(components.items()):
        pid = comp.get("pid")
        if not pid or comp.get("state") != "READY":
            results[name] = {"skipped": f"not READY (state {comp.get('state')})", "passed": False}
            continue
        log(f"kill -9 {name} (pid {pid})")
        os.kill(int(pid), signal.SIGKILL)
        elapsed = _wait_restarted(gateway, token, name, int(pid), timeout_s=60)
        results[name] = {"old_pid": pid, "restart_s": elapsed, "passed": elapsed is not None}
        outcome = f"back after {elapsed:.1f}s" if elapsed is not None else "NOT back within 60s"
        log(f"  {name}: {outcome}")
    return {"experiment": "kill-each-service", "results": results, "passed": all(r["passed"] for r in results.values())}


REGISTRY: dict[str, Experiment] = {
    "kill-each-service": Experiment(
        "kill-each-service",
        "kill -9 every service once; each must be restarted and heartbeat READY within 60 s",
        kill_each_service,
    ),
}

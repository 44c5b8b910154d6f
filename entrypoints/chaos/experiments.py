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

from entrypoints.access import sim_control_url
from entrypoints.launcher import load_credentials
from entrypoints.operator_api import fetch_json

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


def _load_under_kills(
    data_dir: Path, gateway: str, log: Log, targets: list[str], steps: int, seed: int
) -> dict[str, Any]:
    """Operator orders (entrypoints.harness.load) while `targets` are killed at seeded random steps; then
    the venue, `/v1/orders`, `/v1/positions` and the books must agree."""
    import asyncio
    import uuid

    from entrypoints.harness import load
    from entrypoints.launcher import supervisor_rpc
    from entrypoints.operator_api import running_endpoints

    creds = load_credentials(data_dir)
    token = os.environ.get("BULWARK_ADMIN_TOKEN") or creds.admin_token
    # `/_sim/state` and `/_sim/book` want the simulators' control token.
    venue = sim_control_url(data_dir, running_endpoints(data_dir).get("venue", "http://127.0.0.1:8100"), os.environ)

    async def infra_pid(name: str) -> int | None:
        def lookup() -> int | None:
            proxy = supervisor_rpc(data_dir)
            try:
                info = proxy.supervisor.getProcessInfo(f"infra:{name}")
            finally:
                proxy("close")()
            return int(info["pid"]) if info.get("statename") == "RUNNING" else None

        return await asyncio.to_thread(lookup)

    async def run() -> dict[str, Any]:
        prices = await load.reference_prices(venue)
        script = load.build_script(steps, seed, prices, key_prefix=f"chaos-{uuid.uuid4().hex[:8]}")
        plan = load.random_kill_plan(seed, len(script.steps), targets)
        checked = await load.run_checked(gateway, token, venue, script, plan, infra_pid=infra_pid, log=log)
        summary = checked.summary()
        summary["passed"] = not (checked.problems or checked.book_problems or checked.server_errors) and len(
            checked.report.kills
        ) == len(targets)
        return summary

    return asyncio.run(run())


def order_flow_kill(gateway: str, data_dir: Path, log: Log) -> dict[str, Any]:
    """`kill -9` every service at seeded random points while operator orders flow (issue 4)."""
    token = os.environ.get("BULWARK_ADMIN_TOKEN") or load_credentials(data_dir).admin_token
    targets = sorted(_status(gateway, token)["components"])
    seed = int(os.environ.get("BULWARK_CHAOS_SEED", "4"))
    return {"experiment": "order-flow-kill", **_load_under_kills(data_dir, gateway, log, targets, 60, seed)}


def infra_restart(gateway: str, data_dir: Path, log: Log) -> dict[str, Any]:
    """`kill -9` NATS, Postgres and Valkey (supervisord restarts them) while operator orders flow."""
    seed = int(os.environ.get("BULWARK_CHAOS_SEED", "11"))
    targets = ["nats", "postgres", "valkey"]
    return {"experiment": "infra-restart", **_load_under_kills(data_dir, gateway, log, targets, 40, seed)}


REGISTRY: dict[str, Experiment] = {
    "order-flow-kill": Experiment(
        "order-flow-kill",
        "operator orders while every service is killed -9 at random points; venue, orders, positions, books agree",
        order_flow_kill,
    ),
    "infra-restart": Experiment(
        "infra-restart",
        "operator orders while NATS, Postgres and Valkey are killed -9 and restarted; nothing lost or duplicated",
        infra_restart,
    ),
    "kill-each-service": Experiment(
        "kill-each-service",
        "kill -9 every service once; each must be restarted and heartbeat READY within 60 s",
        kill_each_service,
    ),
}

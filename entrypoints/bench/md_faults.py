"""`bulwark bench md-faults`: how fast market-data failures are detected and recovered, end to end.

Runs the whole system (`bulwark up` on free loopback ports, replaying the real recordings) and
injects faults through the venue simulator's `/_sim/faults`, reading the answers from the
gateway's audit log (`/v1/events`, the `HotStateStatusChanged` events and their `ts_event_ns`):

(a) stalled stream → symbol no longer VALID (trading halted for it);
    target <= the stale threshold (1000 ms) + 100 ms, measured from the injection;
(b) venue back after an outage → trading may resume: the symbol VALID again *and* the stream's
    clean window passed (`market-ws` CONNECTED, `LinkStateChanged`), whichever comes later (SPEC
    FM-N1: "resume trading only after a clean window"); target <= clean window (3 s) + 2 s,
    measured from the moment the outage is lifted. The symbol's VALID alone is reported too
    (`venue_back_to_valid`, no target): the system turns it VALID before the clean window;
(c) one dropped depth event → book rebuilt and VALID again;
    target <= 1 s, measured from the injection (the gap is only visible at the next event).

Each is repeated and reported as median and p99. The raw baseline taken in the same run is the
round trip of one `/v1/status` request, the resolution at which an operator can observe anything.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from entrypoints.harness.system import RunningSystem, start_system, stop_system

SYMBOL = "BTCUSDT"
EVENT = "HotStateStatusChanged"
LINK_EVENT = "LinkStateChanged"
MARKET_LINK = "market-ws"
TARGETS_MS = {"stall_to_halted": 1100.0, "venue_back_to_active": 5000.0, "drop_to_valid": 1000.0}
INFO = ("venue_back_to_valid",)
"""Measured and reported without a target."""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _summary(values: list[float], target_ms: float) -> dict[str, Any]:
    if not values:
        return {"samples": 0, "median_ms": None, "p99_ms": None, "target_ms": target_ms, "met": False}
    p99 = _percentile(values, 0.99)
    return {
        "samples": len(values),
        "median_ms": round(statistics.median(values), 1),
        "p99_ms": round(p99, 1),
        "max_ms": round(max(values), 1),
        "target_ms": target_ms,
        "met": p99 <= target_ms,
    }


def _info(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"samples": 0, "median_ms": None, "p99_ms": None}
    return {
        "samples": len(values),
        "median_ms": round(statistics.median(values), 1),
        "p99_ms": round(_percentile(values, 0.99), 1),
        "max_ms": round(max(values), 1),
    }


class _Probe:
    """Fault injection on the simulator and hot-state transitions read back from the gateway."""

    def __init__(self, system: RunningSystem) -> None:
        self.gateway = system.client(system.viewer_token)
        self.venue = httpx.Client(base_url=system.venue, timeout=10.0)

    def close(self) -> None:
        self.gateway.close()
        self.venue.close()

    def inject(self, kind: str, **fields: Any) -> str:
        response = self.venue.post("/_sim/faults", json={"kind": kind, **fields})
        response.raise_for_status()
        fault_id: str = response.json()["id"]
        return fault_id

    def lift(self, fault_id: str) -> None:
        self.venue.delete(f"/_sim/faults/{fault_id}").raise_for_status()

    def transition(
        self, since_ns: int, accept: Callable[[str], bool], timeout_s: float, symbol: str = SYMBOL
    ) -> int | None:
        """`ts_event_ns` of the first hot-state transition of `symbol` at or after `since_ns` into a
        state `accept`s, or None."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            response = self.gateway.get("/v1/events", params={"type": EVENT, "since_ns": since_ns, "limit": 200})
            if response.status_code == 200:
                hits = [
                    event["ts_event_ns"]
                    for event in response.json()["events"]
                    if event["payload"].get("symbol") == symbol and accept(event["payload"].get("current", ""))
                ]
                if hits:
                    return int(min(hits))
            time.sleep(0.1)
        return None

    def link_transition(self, since_ns: int, state: str, timeout_s: float, link: str = MARKET_LINK) -> int | None:
        """`ts_event_ns` of the first `LinkStateChanged` of `link` into `state` at or after `since_ns`, or None."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            response = self.gateway.get("/v1/events", params={"type": LINK_EVENT, "since_ns": since_ns, "limit": 200})
            if response.status_code == 200:
                hits = [
                    event["ts_event_ns"]
                    for event in response.json()["events"]
                    if event["payload"].get("link") == link and event["payload"].get("current") == state
                ]
                if hits:
                    return int(min(hits))
            time.sleep(0.1)
        return None

    def wait_valid(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            response = self.gateway.get("/v1/status")
            if response.status_code == 200 and response.json()["symbols"].get(SYMBOL, {}).get("hot_state") == "VALID":
                return
            time.sleep(0.2)
        raise TimeoutError(f"{SYMBOL} not VALID within {timeout_s} s")

    def status_round_trip_ms(self, samples: int = 20) -> float:
        timings = []
        for _ in range(samples):
            start = time.perf_counter()
            self.gateway.get("/v1/status").raise_for_status()
            timings.append((time.perf_counter() - start) * 1000)
        return statistics.median(timings)


def _not_valid(state: str) -> bool:
    return state in ("STALE", "INVALID")


def _valid(state: str) -> bool:
    return state == "VALID"


def _measure(probe: _Probe, repeats: int, log: Callable[[str], None]) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in (*TARGETS_MS, *INFO)}
    for round_index in range(repeats):
        probe.wait_valid()
        time.sleep(1.5)  # let the clean window of the previous round pass so transitions are fresh

        start = time.time_ns()
        stall = probe.inject("ws_stall", duration_s=2.0)
        halted = probe.transition(start, _not_valid, timeout_s=10)
        if halted is not None:
            samples["stall_to_halted"].append((halted - start) / 1e6)
        probe.lift(stall)
        probe.wait_valid()
        time.sleep(1.5)

        outage = probe.inject("outage")
        probe.transition(time.time_ns() - 1, _not_valid, timeout_s=10)
        time.sleep(1.0)
        back = time.time_ns()
        probe.lift(outage)
        valid = probe.transition(back, _valid, timeout_s=60)
        connected = probe.link_transition(back, "CONNECTED", timeout_s=60)
        if valid is not None:
            samples["venue_back_to_valid"].append((valid - back) / 1e6)
            if connected is not None:
                samples["venue_back_to_active"].append((max(valid, connected) - back) / 1e6)
        probe.wait_valid()
        time.sleep(1.5)

        start = time.time_ns()
        probe.inject("drop_depth", symbol=SYMBOL, count=1)
        broken = probe.transition(start, _not_valid, timeout_s=10)
        if broken is not None:
            rebuilt = probe.transition(broken, _valid, timeout_s=30)
            if rebuilt is not None:
                samples["drop_to_valid"].append((rebuilt - start) / 1e6)
        log(f"round {round_index + 1}/{repeats}: " + ", ".join(f"{k}={v[-1:]}" for k, v in samples.items()))
    return samples


def measure_md_faults(
    system: RunningSystem, repeats: int, log: Callable[[str], None] = lambda line: None
) -> dict[str, Any]:
    """Run the three measurements `repeats` times against a running system."""
    probe = _Probe(system)
    try:
        baseline_ms = probe.status_round_trip_ms()
        samples = _measure(probe, repeats, log)
    finally:
        probe.close()
    results = {name: _summary(samples[name], target) for name, target in TARGETS_MS.items()}
    info = {name: _info(samples[name]) for name in INFO}
    return {
        "symbol": SYMBOL,
        "repeats": repeats,
        "baseline_status_round_trip_ms": round(baseline_ms, 2),
        **results,
        **info,
        "all_targets_met": all(result["met"] for result in results.values()),
    }


def md_faults(repeats: int = 5) -> dict[str, Any]:
    """Start a fresh system, measure `repeats` rounds, stop it."""
    with tempfile.TemporaryDirectory(prefix="bulwark-bench-") as folder:
        base = Path(folder)
        system = start_system(base / "data", base / "bulwark-up.log")
        try:
            system.wait_all_ready()
            return measure_md_faults(system, repeats)
        finally:
            stop_system(system)


def format_md_faults(result: dict[str, Any]) -> str:
    lines = [f"md-faults on {result['symbol']}, {result['repeats']} rounds"]
    for name in TARGETS_MS:
        r = result[name]
        lines.append(
            f"  {name:<22} median {r['median_ms']} ms  p99 {r['p99_ms']} ms  "
            f"(target {r['target_ms']:g} ms: {'met' if r['met'] else 'NOT met'}, {r['samples']} samples)"
        )
    for name in INFO:
        r = result.get(name) or {}
        lines.append(f"  {name:<22} median {r.get('median_ms')} ms  p99 {r.get('p99_ms')} ms  (no target)")
    lines.append(f"  baseline: /v1/status round trip {result['baseline_status_round_trip_ms']} ms")
    return "\n".join(lines)

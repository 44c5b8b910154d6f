"""`bulwark bench recovery`: kill -9 → VALID of state-builder under market-data load (SPEC FM-C1).

A rig of real processes on loopback: the venue simulator replaying the real recordings,
market-data and state-builder as subprocesses, nats-server and Postgres from the pip wheels.
The state-builder is killed with SIGKILL and started again at once (what supervisord does),
and the time until its book query answers VALID again is measured, repeatedly, at two history
lengths of the MARKET_DATA stream. The history is grown by the live pipeline plus filler
messages (trades of a symbol nobody trades) published at full speed, so the stream holds a long
history without waiting hours: recovery time must not depend on it (FM-C1, bounded replay).

The rig is `entrypoints.bench.recovery_rig.RecoveryRig`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import asyncpg

from entrypoints.bench.recovery_position import PositionRecovery
from entrypoints.bench.recovery_rig import RecoveryRig, embedded_infra, summarize
from entrypoints.harness.embedded import EmbeddedInfra
from entrypoints.harness.venue import running_venue_sim


async def _run(histories: tuple[int, ...], kills: int, work: Path, servers: EmbeddedInfra, venue_url: str) -> dict:
    rig = RecoveryRig(
        servers.nats_url,
        servers.pg_dsn,
        work,
        venue_url,
        extra_env={"BULWARK_SNAPSHOT_EVERY_EVENTS": "2000", "BULWARK_SNAPSHOT_INTERVAL_S": "60"},
    )
    results: dict[str, Any] = {"histories": [], "position": {"histories": []}}
    pool = await asyncpg.create_pool(servers.pg_dsn, min_size=1, max_size=4)
    await rig.start()
    orders = PositionRecovery(rig, pool)
    try:
        results["first_valid_s"] = round(await rig.wait_valid(120.0), 3)
        await orders.start()
        results["position"]["first_accepting_s"] = round(await orders.wait_accepting(120.0), 3)
        for target in histories:
            held = await rig.grow_history(target)
            held_orders = await orders.grow_history(target)
            await rig.wait_valid(60.0)
            await asyncio.sleep(2.0)  # market data flows on, a snapshot is a few seconds old at most
            samples: list[float] = []
            for _ in range(kills):
                samples.append(await rig.kill_and_measure(60.0))
                await asyncio.sleep(1.0)
            results["histories"].append({"stream_messages": held, **summarize(samples)})
            await rig.wait_valid(60.0)
            baseline = [await orders.wait_accepting(30.0) for _ in range(5)]
            samples = []
            denials: dict[str, list[str]] = {}
            for index in range(kills):
                samples.append(await orders.kill_and_measure(60.0))
                if orders.last_denials:
                    denials[str(index)] = orders.last_denials
                await asyncio.sleep(1.0)
            results["position"]["histories"].append(
                {
                    "stream_messages": held_orders,
                    "order_latency_baseline_s": round(statistics.median(baseline), 3),
                    **summarize(samples),
                    # Sample index -> why risk denied its probe orders (market data not VALID, a
                    # reconnect's clean window): time spent there is the market's, not the restart's.
                    "risk_denials": denials,
                }
            )
    finally:
        await orders.stop()
        await rig.stop()
        await pool.close()
    return results


def recovery(
    histories: tuple[int, ...] = (10_000, 1_000_000), kills: int = 7, repeats: int | None = None
) -> dict[str, Any]:
    """kill -9 → VALID of state-builder and kill -9 → accepting orders of position (median, p99) at
    each history length, under replayed market data and a steady order flow.

    Args:
        histories: MARKET_DATA and ORDERS stream sizes (messages) to measure at.
        kills: kills per history size and service (`repeats`, from `bulwark bench recovery --repeats N`, wins).

    The rig's logs are removed afterwards unless `BULWARK_BENCH_DIR` names a folder to keep them in.
    """
    kills = repeats or kills
    keep = os.environ.get("BULWARK_BENCH_DIR")
    with contextlib.ExitStack() as stack:
        # BULWARK_BENCH_DIR keeps the services' logs (an outlier sample is explained there).
        work = Path(keep) if keep else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        with embedded_infra(work / "infra") as servers, running_venue_sim(work) as venue_url:
            result = asyncio.run(_run(histories, kills, work, servers, venue_url))
    result["target_s"] = 3.0
    result["passed"] = all(entry["p99_s"] < 3.0 for entry in (*result["histories"], *result["position"]["histories"]))
    return result


def format_result(result: dict[str, Any]) -> str:
    lines = [f"state-builder kill -9 -> VALID (target < {result['target_s']} s):"]
    for entry in result["histories"]:
        lines.append(
            f"  history {entry['stream_messages']:>8} msgs: median {entry['median_s']} s, "
            f"p99 {entry['p99_s']} s, max {entry['max_s']} s over {entry['kills']} kills"
        )
    lines.append(f"position kill -9 -> accepting orders (target < {result['target_s']} s):")
    for entry in result["position"]["histories"]:
        lines.append(
            f"  history {entry['stream_messages']:>8} msgs: median {entry['median_s']} s, "
            f"p99 {entry['p99_s']} s, max {entry['max_s']} s over {entry['kills']} kills "
            f"(order latency while running: {entry['order_latency_baseline_s']} s)"
        )
    return "\n".join(lines)

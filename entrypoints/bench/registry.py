"""Registered benchmarks. Each reports its measurement next to a raw baseline taken in the same
run, so results compare across machines as ratios."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from entrypoints.bench.backtest import backtest_speed, format_backtest
from entrypoints.bench.md_faults import format_md_faults, md_faults
from entrypoints.bench.md_throughput import format_md_throughput, md_throughput
from entrypoints.bench.recovery import format_result as format_recovery
from entrypoints.bench.recovery import recovery
from entrypoints.harness.embedded import EmbeddedInfra
from libs.bus import Bus
from proto import subjects
from proto.messages import DepthDiff


@dataclass(frozen=True)
class Benchmark:
    name: str
    description: str
    run: Callable[..., dict[str, Any]]
    format: Callable[[dict[str, Any]], str]


def _depth(index: int) -> DepthDiff:
    return DepthDiff(
        venue="binance-usdm",
        symbol="BTCUSDT",
        first_update_id=index * 10 + 1,
        final_update_id=index * 10 + 10,
        prev_final_update_id=index * 10,
        bids=[(Decimal("61800.20") - i, Decimal("0.5")) for i in range(20)],
        asks=[(Decimal("61800.30") + i, Decimal("0.5")) for i in range(20)],
    )


async def _bus_publish(count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        servers = EmbeddedInfra(Path(folder)).start(("nats",))
        bus = Bus("bench")
        try:
            await bus.connect(servers.nats_url)
            await bus.ensure_streams()
            messages = [_depth(i) for i in range(count)]
            start = time.perf_counter()
            for message in messages:
                await bus.publish_core("bench.core", message)
            await bus.nc.flush()
            core_s = time.perf_counter() - start
            start = time.perf_counter()
            for index, message in enumerate(messages):
                await bus.publish(subjects.md_depth("binance-usdm", "BTCUSDT"), message, msg_id=f"bench:{index}")
            durable_s = time.perf_counter() - start
        finally:
            await bus.close()
            servers.stop()
    return {
        "messages": count,
        "core_publish_per_s": round(count / core_s),
        "jetstream_publish_per_s": round(count / durable_s),
        "jetstream_vs_core_ratio": round(core_s / durable_s, 4),
        "jetstream_publish_p50_us": round(durable_s / count * 1e6, 1),
    }


def bus_publish(repeats: int = 2000) -> dict[str, Any]:
    """Acknowledged, fsync-every-write JetStream publishes against core NATS publishes (baseline)."""
    return asyncio.run(_bus_publish(repeats))


BENCHMARKS: dict[str, Benchmark] = {
    "md-throughput": Benchmark(
        "md-throughput",
        "market-data: md.* messages stored per second with pipelined vs one-at-a-time publishes",
        lambda repeats=None: md_throughput(),
        format_md_throughput,
    ),
    "recovery": Benchmark(
        "recovery",
        "kill -9 → VALID (state-builder) and → accepting orders (position), two history sizes",
        recovery,
        format_recovery,
    ),
    "md-faults": Benchmark(
        "md-faults",
        "stall→HALTED, venue back→ACTIVE, dropped depth→VALID through the running system (median, p99)",
        md_faults,
        format_md_faults,
    ),
    "backtest": Benchmark(
        "backtest",
        "backtest: market events replayed per second through a strategy vs the raw recording read rate",
        backtest_speed,
        format_backtest,
    ),
    "bus-publish": Benchmark(
        "bus-publish",
        "durable JetStream publish (sync always) vs core NATS publish, same messages, same server",
        bus_publish,
        lambda r: (
            f"{r['messages']} depth diffs: JetStream {r['jetstream_publish_per_s']}/s, "
            f"core {r['core_publish_per_s']}/s (ratio {r['jetstream_vs_core_ratio']})"
        ),
    ),
}

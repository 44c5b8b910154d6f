"""`bulwark bench recovery`: kill -9 → VALID of state-builder under market-data load (SPEC FM-C1).

A rig of real processes on loopback: the venue simulator replaying the real recordings,
market-data and state-builder as subprocesses, nats-server and Postgres from the pip wheels.
The state-builder is killed with SIGKILL and started again at once (what supervisord does),
and the time until its book query answers VALID again is measured, repeatedly, at two history
lengths of the MARKET_DATA stream. The history is grown by the live pipeline plus filler
messages (trades of a symbol nobody trades) published at full speed, so the stream holds a long
history without waiting hours: recovery time must not depend on it (FM-C1, bounded replay).

The rig (`RecoveryRig`) is also what tests/integration/test_recovery.py drives.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from libs.bus import Bus
from libs.testing.history import FILLER_PRICE, FILLER_QUANTITY, FILLER_SYMBOL
from libs.testing.infra import EmbeddedInfra
from libs.testing.venue import running_venue_sim
from proto import subjects
from proto.messages import Trade

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SYMBOLS = ("BTCUSDT", "ETHUSDT")


@dataclass
class ServiceProcess:
    """One service as a real subprocess, killed by pid."""

    module: str
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module],
                cwd=PROJECT_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                start_new_session=True,
            )

    def kill9(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


@dataclass
class RecoveryRig:
    """venue-sim + market-data + state-builder on a given NATS and Postgres.

    Args:
        nats_url: NATS server.
        pg_dsn: Postgres DSN (snapshots).
        work_dir: logs.
        venue_url: the venue simulator's base URL.
        extra_env: more `BULWARK_*` settings for both services (e.g. the snapshot policy).
    """

    nats_url: str
    pg_dsn: str
    work_dir: Path
    venue_url: str
    extra_env: dict[str, str] = field(default_factory=dict)
    market_data: ServiceProcess | None = None
    state_builder: ServiceProcess | None = None
    bus: Bus | None = None

    def _env(self) -> dict[str, str]:
        return {
            "BULWARK_NATS_URL": self.nats_url,
            "BULWARK_PG_DSN": self.pg_dsn,
            "BULWARK_SYMBOLS": ",".join(SYMBOLS),
            "BULWARK_VENUE_REST_URL": self.venue_url,
            "BULWARK_VENUE_WS_URL": self.venue_url.replace("http://", "ws://"),
            "BULWARK_LOG_LEVEL": "INFO",
            **self.extra_env,
        }

    async def start(self) -> None:
        self.bus = Bus("recovery-rig")
        await self.bus.connect(self.nats_url)
        await self.bus.ensure_streams()
        logs = self.work_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.market_data = ServiceProcess("services.market_data.main", self._env(), logs / "market-data.log")
        self.state_builder = ServiceProcess("services.state_builder.main", self._env(), logs / "state-builder.log")
        self.market_data.start()
        self.state_builder.start()

    async def stop(self) -> None:
        for service in (self.state_builder, self.market_data):
            if service is not None:
                service.stop()
        if self.bus is not None:
            await self.bus.close()

    async def book(self, symbol: str, depth: int = 20, timeout_s: float = 1.0) -> dict[str, Any] | None:
        """state-builder's served book, or None when no state-builder answers."""
        assert self.bus is not None
        try:
            reply = await self.bus.request(
                subjects.service_query(subjects.STATE_BUILDER, "book"),
                msgspec.json.encode({"symbol": symbol, "depth": depth}),
                timeout_s=timeout_s,
            )
        except Exception:  # noqa: BLE001 - no responder / timeout: the state-builder is down
            return None
        answer: dict[str, Any] = msgspec.json.decode(reply)
        return answer

    async def wait_valid(self, timeout_s: float, symbols: tuple[str, ...] = SYMBOLS) -> float:
        """Seconds until every symbol is served VALID (raises TimeoutError after `timeout_s`)."""
        started = time.monotonic()
        pending = set(symbols)
        while pending:
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"not VALID within {timeout_s}s: {sorted(pending)}")
            for symbol in list(pending):
                answer = await self.book(symbol, depth=1, timeout_s=0.5)
                if answer is not None and answer.get("status") == "VALID":
                    pending.discard(symbol)
            if pending:
                await asyncio.sleep(0.02)
        return time.monotonic() - started

    async def kill_and_measure(self, timeout_s: float = 30.0) -> float:
        """kill -9 the state-builder, start it again at once; seconds from the kill to all VALID."""
        assert self.state_builder is not None
        started = time.monotonic()
        self.state_builder.kill9()
        self.state_builder.start()
        await self.wait_valid(timeout_s)
        return time.monotonic() - started

    async def stream_messages(self) -> int:
        assert self.bus is not None
        first, last = await self.bus.stream_bounds(subjects.STREAM_MARKET_DATA.name)
        return last - first + 1 if last else 0

    async def grow_history(self, target: int, batch: int = 500) -> int:
        """Publish filler trades (a symbol nobody trades) until MARKET_DATA holds `target` messages."""
        assert self.bus is not None
        trade_id = 0
        while (current := await self.stream_messages()) < target:
            count = min(batch, target - current)
            items: list[tuple[str, Any, str | None]] = []
            for _ in range(count):
                trade_id += 1
                trade = Trade(
                    venue="binance-usdm",
                    symbol=FILLER_SYMBOL,
                    trade_id=trade_id,
                    price=FILLER_PRICE,
                    quantity=FILLER_QUANTITY,
                    buyer_is_maker=False,
                )
                items.append((subjects.md_trade("binance-usdm", FILLER_SYMBOL), trade, None))
            await self.bus.publish_many(items, timeout_s=30.0)
        return await self.stream_messages()


@contextlib.contextmanager
def _infra(folder: Path) -> Iterator[EmbeddedInfra]:
    servers = EmbeddedInfra(folder).start(("nats", "postgres"))
    try:
        yield servers
    finally:
        servers.stop()


def _summary(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    p99_index = min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))
    return {
        "kills": len(samples),
        "median_s": round(statistics.median(ordered), 3),
        "p99_s": round(ordered[p99_index], 3),
        "max_s": round(ordered[-1], 3),
        "samples_s": [round(sample, 3) for sample in samples],
    }


async def _run(histories: tuple[int, ...], kills: int, work: Path, servers: EmbeddedInfra, venue_url: str) -> dict:
    # Imported here: bench.recovery_position builds on this module's rig.
    from bench.recovery_position import PositionRecovery

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
            results["histories"].append({"stream_messages": held, **_summary(samples)})
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
                    **_summary(samples),
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
        with _infra(work / "infra") as servers, running_venue_sim(work) as venue_url:
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

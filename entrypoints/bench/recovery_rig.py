"""The recovery benchmarks' rig: real processes on loopback (the venue simulator replaying the real
recordings, market-data and state-builder as subprocesses, nats-server and Postgres from the pip wheels),
each killable with SIGKILL and restarted at once as supervisord would.

`RecoveryRig` is what `bulwark bench recovery` and tests/integration/test_recovery.py drive; the
position benchmark (`entrypoints.bench.recovery_position`) runs risk and position on top of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from entrypoints.harness.embedded import EmbeddedInfra
from entrypoints.harness.history import FILLER_PRICE, FILLER_QUANTITY, FILLER_SYMBOL
from libs.bus import Bus
from proto import subjects
from proto.messages import Trade

PROJECT_ROOT = Path(__file__).resolve().parents[2]
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
                subjects.SVC_STATE_BUILDER_BOOK,
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
def embedded_infra(folder: Path) -> Iterator[EmbeddedInfra]:
    servers = EmbeddedInfra(folder).start(("nats", "postgres"))
    try:
        yield servers
    finally:
        servers.stop()


def summarize(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    p99_index = min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))
    return {
        "kills": len(samples),
        "median_s": round(statistics.median(ordered), 3),
        "p99_s": round(ordered[p99_index], 3),
        "max_s": round(ordered[-1], 3),
        "samples_s": [round(sample, 3) for sample in samples],
    }

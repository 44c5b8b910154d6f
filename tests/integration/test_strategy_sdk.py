"""A strategy of one's own, in a folder outside the checkout, run as `bulwark up` runs strategies:
its own OS process (`python -m services.strategy.main --name NAME`), its class named in the TOML
as `kind = "file.py:Class"`. Its signals go through risk and position to the venue simulator
(real nats-server, Postgres and simulator: `order_system`'s fixture); a second one of its own
that raises is FAILED after the SPEC's crash count (FM-C2) while the first keeps trading.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from nats.aio.msg import Msg

from entrypoints.harness.embedded import EmbeddedInfra
from proto import subjects
from proto.codec import decode, encode
from proto.enums import ComponentState, Side
from proto.kv import StrategyStateValue, decode_value
from proto.messages import Heartbeat, Liquidation, SignalGenerated, StrategyCrashed
from tests.integration.order_system import (  # noqa: F401 - the *_fixture names are fixtures
    SYMBOL,
    VENUE,
    System,
    settings_overrides_fixture,
    system_fixture,
    venue_url_fixture,
)
from tests.support.market_feed import feed_taker_buying
from tests.support.polling import eventually

PROJECT_ROOT = Path(__file__).resolve().parents[2]

STRATEGY_FILE = '''
"""A desk's own strategy: buy after a run of taker buys (written on the SDK only)."""

from __future__ import annotations

from services.strategy import sdk


@sdk.parameters
class RunParameters(sdk.StrategyConfig):
    min_buys: int


class TakerRun(sdk.Strategy):
    config_class = RunParameters
    config: RunParameters
    memory_trades = 20

    def find_entry(self, symbol, now_ns, view):
        buys = [trade for trade in self.recent_trades(symbol) if trade.taker_buy]
        if len(buys) < self.config.min_buys:
            return None
        return sdk.Entry(symbol, sdk.Side.BUY, self.config.quantity_for(symbol), f"{len(buys)} taker buys")


class Raising(TakerRun):
    def observe_liquidation(self, symbol, ts_ns, side, price, quantity):
        raise ValueError("a bug in the desk's liquidation handler")
'''

CONFIG = """
[mine]
kind = "desk/run.py:TakerRun"
min_buys = 3
hold_s = 1
cooldown_s = 0.5
symbols = ["BTCUSDT"]

[buggy]
kind = "desk/run.py:Raising"
min_buys = 1000
symbols = ["BTCUSDT"]
"""


class Desk:
    """Strategy processes started like supervisord does, from a folder outside the checkout."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.processes: list[subprocess.Popen[bytes]] = []
        self.signals: list[SignalGenerated] = []
        self.crashes: list[StrategyCrashed] = []
        self.heartbeats: dict[str, Heartbeat] = {}

    def start(self, name: str) -> None:
        log = (self.tmp_path / f"{name}.log").open("ab")
        self.processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "services.strategy.main", "--name", name],
                cwd=self.tmp_path / "elsewhere",  # neither the checkout nor the TOML's folder
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        log.close()

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    async def on_event(self, msg: Msg) -> None:
        match decode(msg.data):
            case SignalGenerated() as signal:
                self.signals.append(signal)
            case StrategyCrashed() as crashed:
                self.crashes.append(crashed)
            case Heartbeat() as heartbeat:
                self.heartbeats[heartbeat.component] = heartbeat

    def log_tail(self, name: str) -> str:
        return "\n".join((self.tmp_path / f"{name}.log").read_text(errors="replace").splitlines()[-30:])


@pytest.fixture
def desk(tmp_path: Path, nats_url: str, infra: EmbeddedInfra) -> Iterator[Desk]:
    (tmp_path / "desk").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "desk" / "run.py").write_text(STRATEGY_FILE)
    (tmp_path / "strategies.toml").write_text(CONFIG)
    env = {
        **os.environ,
        "PYTHONPATH": str(PROJECT_ROOT),
        "BULWARK_NATS_URL": nats_url,
        "BULWARK_PG_DSN": infra.pg_dsn,
        "BULWARK_SYMBOLS": SYMBOL,
        "BULWARK_STRATEGIES": "mine,buggy",
        "BULWARK_STRATEGY_CONFIG": str(tmp_path / "strategies.toml"),
        "BULWARK_LOG_LEVEL": "INFO",
    }
    desk = Desk(tmp_path, env)
    try:
        yield desk
    finally:
        desk.stop()


async def test_own_strategy_when_run_as_a_process_then_trades_through_risk_and_a_raising_one_fails_alone(
    system: System, desk: Desk
) -> None:
    bus, pool = system.bus, system.pool
    for subject in (subjects.EVT_SIGNAL_ALL, subjects.EVT_STRATEGY_CRASHED_ALL, subjects.HEARTBEAT_ALL):
        await bus.subscribe_core(subject, desk.on_event)
    desk.start("mine")
    desk.start("buggy")

    async def state(name: str) -> str | None:
        entry = await bus.kv_get(subjects.key_strategy(name))
        value = decode_value(StrategyStateValue, entry[0] if entry else None)
        return value.state.value if value else None

    async def both_scanning() -> bool:
        return await state("mine") == "SCANNING" and await state("buggy") == "SCANNING"

    async def why() -> str:
        return f"mine:\n{desk.log_tail('mine')}\nbuggy:\n{desk.log_tail('buggy')}"

    await eventually(both_scanning, 60, failure=why)

    feeder = asyncio.create_task(feed_taker_buying(bus, VENUE, SYMBOL, Decimal("60000")))
    try:
        # Its entry and its exit went through risk and position to the venue, filled.
        async def filled_round_trip() -> list[Any]:
            rows = await pool.fetch(
                "SELECT * FROM orders WHERE source = 'STRATEGY' AND strategy = 'mine' ORDER BY created_ns"
            )
            done = [row for row in rows if row["status"] == "FILLED"]
            return done if len(done) >= 2 else []

        entry, exit_, *_ = await eventually(filled_round_trip, 45, failure=why)
        assert (entry["side"], entry["quantity"], entry["reduce_only"]) == ("BUY", Decimal("0.002"), False)
        assert (exit_["side"], exit_["reduce_only"]) == ("SELL", True)
        first = next(s for s in desk.signals if s.strategy == "mine")
        count, text = first.reason.split(" ", 1)  # the desk's own code decided it, on its own parameter
        assert text == "taker buys" and int(count) >= 3
        heartbeat = desk.heartbeats["strategy-mine"]
        assert heartbeat.state == ComponentState.READY and heartbeat.details["kind"] == "desk/run.py:TakerRun"

        # The raising one: FAILED after more than 3 crashes (FM-C2); the other one never noticed.
        for count in range(1, 5):
            liquidation = Liquidation(
                venue=VENUE, symbol=SYMBOL, side=Side.SELL, price=Decimal(60000), quantity=Decimal(1)
            )
            await bus.nc.publish(subjects.md_liquidation(VENUE, SYMBOL), encode(liquidation))

            async def counted(n: int = count) -> bool:
                return len([c for c in desk.crashes if c.strategy == "buggy"]) >= n

            await eventually(counted, 30, failure=why)
        crashes = [c for c in desk.crashes if c.strategy == "buggy"]
        assert [c.restarted_into for c in crashes] == ["SCANNING", "SCANNING", "SCANNING", "FAILED"]
        assert crashes[-1].error_type == "ValueError" and "run.py" in crashes[-1].stack_trace
        await eventually(lambda: _is(state("buggy"), "FAILED"), 15)
        before = len([s for s in desk.signals if s.strategy == "mine"])

        async def still_signalling() -> bool:
            return len([s for s in desk.signals if s.strategy == "mine"]) > before

        await eventually(still_signalling, 30, failure=why)
        assert not [c for c in desk.crashes if c.strategy == "mine"]
        assert all(process.poll() is None for process in desk.processes)  # contained: no process died
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)


async def _is(read: Any, expected: str) -> bool:
    return await read == expected

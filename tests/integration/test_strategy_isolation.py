"""FM-C2 with real processes on a real nats-server (JetStream + KV): two strategy instances, each its
own OS process. One is killed with SIGKILL and then crashes in its handler until it is FAILED; the
other keeps emitting signals the whole time, and FAILED survives a restart."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest_asyncio
from nats.aio.msg import Msg

from libs.bus import Bus, Delivery
from libs.clock import ManualClock, wall_clock
from libs.logging import get_logger
from proto import subjects
from proto.codec import decode, encode
from proto.enums import ConnectionState, HotStateStatus, Side
from proto.kv import StrategyCrashesValue, StrategyStateValue, decode_value
from proto.messages import (
    BookResyncStarted,
    EnableStrategy,
    Heartbeat,
    LinkStateChanged,
    Liquidation,
    SignalGenerated,
    StrategyCrashed,
    SymbolHotState,
    SymbolsReply,
    Trade,
)
from services.strategy.config import instance_config
from services.strategy.handlers import StrategyService
from services.strategy.runner import StrategyRunner
from tests.support.market_feed import feed_taker_buying
from tests.support.polling import eventually as poll_until

PROJECT_ROOT = Path(__file__).resolve().parents[2]
VENUE = "binance-usdm"
SYMBOL = "BTCUSDT"
CONFIG = """
[alpha]
kind = "imbalance"
min_trades = 3
setup_timeout_s = 0.5
cooldown_s = 0.5

[beta]
kind = "imbalance"
min_trades = 3
crash_on = "liquidation"
"""


eventually = functools.partial(poll_until, timeout_s=45.0)


class Harness:
    """Strategy processes started like supervisord does, plus a stand-in state-builder and market."""

    def __init__(self, nats_url: str, tmp_path: Path, bus: Bus) -> None:
        self.nats_url = nats_url
        self.tmp_path = tmp_path
        self.bus = bus
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.signals: list[SignalGenerated] = []
        self.crashes: list[StrategyCrashed] = []
        self.heartbeats: dict[str, int] = {}
        self.lease_roles: dict[int, str] = {}
        (tmp_path / "strategies.toml").write_text(CONFIG)

    def start(self, name: str, key: str | None = None, extra_env: dict[str, str] | None = None) -> int:
        """Start a strategy process running instance `name`, tracked as `key` (default: the name)."""
        key = key or name
        env = {
            **os.environ,
            "BULWARK_NATS_URL": self.nats_url,
            "BULWARK_SYMBOLS": SYMBOL,
            "BULWARK_STRATEGIES": "alpha,beta",
            "BULWARK_STRATEGY_CONFIG": str(self.tmp_path / "strategies.toml"),
            "BULWARK_LOG_LEVEL": "INFO",
            **(extra_env or {}),
        }
        log = (self.tmp_path / f"{key}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "services.strategy.main", "--name", name],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.processes[key] = process
        return process.pid

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.pop(name)
        process.send_signal(sig)
        process.wait(timeout=20)

    def stop_all(self) -> None:
        for name in list(self.processes):
            process = self.processes[name]
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
            del self.processes[name]

    async def on_event(self, msg: Msg) -> None:
        message = decode(msg.data)
        match message:
            case SignalGenerated():
                self.signals.append(message)
            case StrategyCrashed():
                self.crashes.append(message)
            case Heartbeat():
                self.heartbeats[message.component] = message.pid
                self.lease_roles[message.pid] = str(message.details.get("lease", ""))

    async def symbols(self, _: bytes) -> bytes:
        view = SymbolHotState(
            symbol=SYMBOL,
            hot_state=HotStateStatus.VALID,
            age_ms=5,
            last_update_id=1,
            best_bid=Decimal("60000.0"),
            best_ask=Decimal("60000.1"),
        )
        return encode(SymbolsReply(symbols={SYMBOL: view}))

    async def state(self, name: str) -> str | None:
        entry = await self.bus.kv_get(subjects.key_strategy(name))
        value = decode_value(StrategyStateValue, entry[0] if entry else None)
        return value.state.value if value else None

    async def crash_count(self, name: str) -> int:
        entry = await self.bus.kv_get(subjects.key_strategy_crashes(name))
        value = decode_value(StrategyCrashesValue, entry[0] if entry else None)
        return len(value.crashes) if value else 0

    def signals_of(self, name: str) -> int:
        return sum(1 for s in self.signals if s.strategy == name)

    async def describe(self, name: str, lines: int = 40) -> str:
        """What a failed wait on `name` needs to be understood: its state and its latest log events."""
        log = (self.tmp_path / f"{name}.log").read_text(errors="replace").splitlines()[-lines:]
        return f"state {await self.state(name)}, {self.signals_of(name)} signals; log tail:\n" + "\n".join(
            line[:400] for line in log
        )


@pytest_asyncio.fixture
async def harness(nats_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    bus = Bus("test-harness")
    await bus.connect(nats_url)
    await bus.ensure_streams()
    h = Harness(nats_url, tmp_path, bus)
    await bus.serve(subjects.SVC_STATE_BUILDER_SYMBOLS, h.symbols)
    for subject in (subjects.EVT_SIGNAL_ALL, subjects.EVT_STRATEGY_CRASHED_ALL, subjects.HEARTBEAT_ALL):
        await bus.subscribe_core(subject, h.on_event)
    feeder = asyncio.create_task(feed_taker_buying(bus, VENUE, SYMBOL, Decimal("60000.1")))
    try:
        yield h
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        await asyncio.to_thread(h.stop_all)
        await bus.close()


async def test_strategy_crashes_when_killed_and_raising_then_other_keeps_signalling_and_fourth_crash_fails(
    harness: Harness,
) -> None:
    h = harness
    alpha_pid = h.start("alpha")
    h.start("beta")

    async def both_running() -> bool:
        return await h.state("alpha") in ("SCANNING", "SETUP") and await h.state("beta") in ("SCANNING", "SETUP")

    await eventually(both_running)
    await eventually(lambda: _true(h.signals_of("alpha") >= 1))

    # Crash 1: kill -9 of beta's process. supervisord would restart it; the test does the same.
    h.kill("beta")
    before = h.signals_of("alpha")
    await eventually(lambda: _true(h.signals_of("alpha") > before))  # alpha did not notice
    h.start("beta")
    [died] = await eventually(lambda: _true([c for c in h.crashes if c.strategy == "beta"]))
    assert died.error_type == "ProcessDied" and died.input == "process-restart"
    assert died.restarted_into == "SCANNING" and died.crashes_in_window == 1
    await eventually(lambda: _equals(h.state("beta"), "SCANNING"))

    # Crashes 2-4: an exception in beta's liquidation handler (injected by its config).
    for expected in (2, 3, 4):
        liquidation = Liquidation(venue=VENUE, symbol=SYMBOL, side=Side.SELL, price=Decimal(60000), quantity=Decimal(1))
        await h.bus.nc.publish(subjects.md_liquidation(VENUE, SYMBOL), encode(liquidation))
        await eventually(lambda n=expected: _equals(h.crash_count("beta"), n))  # type: ignore[misc]
    await eventually(lambda: _true(len([c for c in h.crashes if c.strategy == "beta"]) == 4))
    beta_crashes = [c for c in h.crashes if c.strategy == "beta"]
    raised = beta_crashes[-1]
    assert raised.error_type == "InjectedCrash" and "InjectedCrash" in raised.stack_trace
    assert raised.input.startswith("Liquidation") and raised.crashes_in_window == 4
    assert [c.restarted_into for c in beta_crashes] == ["SCANNING", "SCANNING", "SCANNING", "FAILED"]
    await eventually(lambda: _equals(h.state("beta"), "FAILED"))

    # alpha: same process all along, still signalling; it never saw a crash.
    assert h.processes["alpha"].poll() is None and h.processes["alpha"].pid == alpha_pid
    before = h.signals_of("alpha")

    async def failure() -> str:
        return f"alpha stopped signalling: {await h.describe('alpha')}"

    await eventually(lambda: _true(h.signals_of("alpha") > before), failure=failure)
    assert not [c for c in h.crashes if c.strategy == "alpha"]

    # FAILED survives a restart of beta's process (clean stop, then start): it stays disabled.
    h.kill("beta", signal.SIGTERM)
    beta_pid = h.start("beta")
    await eventually(lambda: _true(h.heartbeats.get("strategy-beta") == beta_pid))
    await asyncio.sleep(1.0)
    assert await h.state("beta") == "FAILED"
    assert await h.crash_count("beta") == 4
    beta_signals = h.signals_of("beta")
    await asyncio.sleep(1.0)
    assert h.signals_of("beta") == beta_signals


async def _true(value: Any) -> Any:
    return value


async def _equals(read: Awaitable[Any], expected: Any) -> bool:
    return await read == expected


async def test_runner_when_link_drops_or_book_resyncs_then_events_cleared_and_setup_back_to_scanning(
    nats_url: str,
) -> None:

    bus = Bus("strategy-test")
    await bus.connect(nats_url)
    await bus.ensure_streams()
    try:

        async def symbols(_: bytes) -> bytes:
            view = SymbolHotState(
                symbol=SYMBOL,
                hot_state=HotStateStatus.VALID,
                age_ms=5,
                last_update_id=1,
                best_bid=Decimal("59450.0"),
                best_ask=Decimal("59450.1"),
            )
            return encode(SymbolsReply(symbols={SYMBOL: view}))

        await bus.serve(subjects.SVC_STATE_BUILDER_SYMBOLS, symbols)
        instance = instance_config("cascade-fade", {}, environ={})
        clock = ManualClock(wall_clock())  # behind the messages' stamps: they are handled at its time
        runner = StrategyRunner(bus, get_logger("strategy-cascade-fade"), instance, VENUE, clock)
        service = StrategyService(runner)
        await runner.start()
        assert await _state(bus, "cascade-fade") == "SCANNING"

        async def flush() -> None:
            price = Decimal(60000)
            await service.handle(
                Trade(venue=VENUE, symbol=SYMBOL, trade_id=1, price=price, quantity=Decimal(1), buyer_is_maker=True)
            )
            clock.advance_ms(10)
            for i in range(4):
                price -= Decimal(150)
                await service.handle(
                    Liquidation(venue=VENUE, symbol=SYMBOL, side=Side.SELL, price=price, quantity=Decimal(2))
                )
                await service.handle(
                    Trade(
                        venue=VENUE,
                        symbol=SYMBOL,
                        trade_id=2 + i,
                        price=price,
                        quantity=Decimal(2),
                        buyer_is_maker=True,
                    )
                )

        await flush()
        assert [e["phase"] for e in runner.strategy.active_events()] == ["ACTIVE"]
        link = LinkStateChanged(
            venue=VENUE,
            link="market-ws",
            previous=ConnectionState.CONNECTED,
            current=ConnectionState.DISCONNECTED,
            reason="socket closed",
            symbols=[SYMBOL],
        )
        await service.handle(link)
        assert runner.strategy.active_events() == []

        # An exhausted cascade leads to a SETUP; a book resync of that symbol drops it.
        await flush()
        clock.advance(3)  # no forced order for longer than quiet_s: the cascade is exhausted
        await service.tick()
        assert await _state(bus, "cascade-fade") == "SETUP"
        await service.handle(BookResyncStarted(venue=VENUE, symbol=SYMBOL, reason="gap"))
        assert await _state(bus, "cascade-fade") == "SCANNING"
        assert runner.strategy.active_events() == [] and runner.strategy.symbol is None
        await runner.stop()
    finally:
        await bus.close()


async def _state(bus: Bus, name: str) -> str | None:
    entry = await bus.kv_get(subjects.key_strategy(name))
    value = decode_value(StrategyStateValue, entry[0] if entry else None)
    return value.state.value if value else None


def _signals_logged(tmp_path: Path, key: str) -> int:
    return (tmp_path / f"{key}.log").read_text(errors="replace").count('"signal_generated"')


async def test_strategy_lease_when_two_instances_share_a_name_then_one_signals_and_standby_takes_over_after_kill(
    harness: Harness, tmp_path: Path
) -> None:
    h = harness
    ttl = {"BULWARK_STRATEGY_LEASE_TTL_S": "3"}
    first = h.start("alpha", key="alpha-1", extra_env=ttl)
    second = h.start("alpha", key="alpha-2", extra_env=ttl)
    await eventually(lambda: _true({h.lease_roles.get(first), h.lease_roles.get(second)} == {"held", "standby"}))
    holder, standby = ("alpha-1", "alpha-2") if h.lease_roles[first] == "held" else ("alpha-2", "alpha-1")
    standby_pid = second if holder == "alpha-1" else first
    await eventually(lambda: _true(h.signals_of("alpha") >= 2))
    await asyncio.sleep(1.0)
    # Only the holder ran the strategy: the standby logged no signal and stays standby.
    assert _signals_logged(tmp_path, holder) >= 1
    assert _signals_logged(tmp_path, standby) == 0
    assert h.lease_roles[standby_pid] == "standby"

    killed_at = time.monotonic()
    h.kill(holder)  # SIGKILL: no release, the standby waits for the lease to expire
    await eventually(lambda: _true(h.lease_roles.get(standby_pid) == "held"), timeout_s=30)
    takeover_s = time.monotonic() - killed_at
    before = h.signals_of("alpha")
    await eventually(lambda: _true(h.signals_of("alpha") > before))
    assert _signals_logged(tmp_path, standby) >= 1
    assert takeover_s < 15, f"takeover took {takeover_s:.1f}s"
    # The killed holder counts as a crash of the instance (FM-C2), recorded by the new holder.
    [died] = await eventually(lambda: _true([c for c in h.crashes if c.strategy == "alpha"]))
    assert died.error_type == "ProcessDied" and died.restarted_into == "SCANNING"


async def test_runner_when_hard_shutdown_then_disabled_and_stays_disabled_after_restart(nats_url: str) -> None:
    # SPEC §5: HARD_SHUTDOWN stops the trading services; only an operator brings a strategy back.
    bus = Bus("strategy-test")
    await bus.connect(nats_url)
    await bus.ensure_streams()
    try:
        await bus.kv_put(subjects.KEY_DEGRADATION_LEVEL, msgspec.json.encode({"level": "NORMAL", "ts_ns": 1}))
        name = "trend-hard-shutdown"
        instance = instance_config(name, {name: {"kind": "trend"}}, environ={})
        runner = StrategyRunner(bus, get_logger(f"strategy-{name}"), instance, VENUE, wall_clock)
        service = StrategyService(runner)
        await runner.start()
        await service.tick()
        assert await _state(bus, name) == "SCANNING"
        await bus.kv_put(subjects.KEY_DEGRADATION_LEVEL, msgspec.json.encode({"level": "HARD_SHUTDOWN", "ts_ns": 2}))
        await service.tick()
        assert await _state(bus, name) == "DISABLED"
        # An enable sent on the bus during HARD_SHUTDOWN is refused: no SCANNING, not even briefly.
        enable = EnableStrategy(strategy=name, operator="ops", reason="try")
        await service.on_command(enable, Delivery(subjects.cmd_strategy(name, "enable"), 1, 1, {}))
        assert await _state(bus, name) == "DISABLED" and runner.strategy.state.value == "DISABLED"
        await runner.stop()
        again = StrategyRunner(bus, get_logger(f"strategy-{name}"), instance, VENUE, wall_clock)
        await again.start()
        await StrategyService(again).tick()
        assert await _state(bus, name) == "DISABLED"
        await again.stop()
    finally:
        await bus.close()

"""Snapshots of risk, strategy and watchdog on real nats-server and Postgres (SPEC §8, FM-C1, FM-C3).

Each service runs in-process through `run_service` (or its `setup`), exactly as its main would, and is
restarted by stopping it and starting it again on the same bus and database. A restart must give the
same state as a run without one, read only the stream messages after the snapshot's sequence (the
count the service reports, not a time), and survive a corrupt snapshot or Postgres being down.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
from nats.aio.msg import Msg

from entrypoints import infra as infra_commands
from entrypoints.harness.embedded import EmbeddedInfra
from libs.bus import Bus
from libs.ids import client_order_id_for
from libs.logging import get_logger
from libs.runtime.service import ServiceContext, run_service
from libs.settings import Settings
from proto import subjects
from proto.codec import decode, encode
from proto.enums import HotStateStatus, OrderType, Side
from proto.envelope import Message
from proto.messages import (
    AlertRaised,
    AlertResolved,
    Heartbeat,
    HotStateRecord,
    Liquidation,
    MarkPrice,
    PositionChanged,
    ProjectionsVerified,
    SignalGenerated,
    SymbolHotState,
    SymbolsReply,
    Trade,
)
from services.risk.main import setup as risk_setup
from services.strategy.main import setup as strategy_setup
from services.strategy.snapshot import snapshot_component as strategy_snapshot_component
from services.watchdog.main import setup as watchdog_setup
from tests.support.polling import eventually as poll_until

VENUE = "binance-usdm"
SYMBOL = "BTCUSDT"
eventually = functools.partial(poll_until, timeout_s=20.0)


async def _corrupt_all(pool: asyncpg.Pool, component: str) -> int:
    """Flip one byte of every stored snapshot of `component`, as disk or a bad write would."""
    status = await pool.execute(
        "UPDATE snapshots SET state = set_byte(state, 0, (get_byte(state, 0) + 1) % 256) WHERE component = $1",
        component,
    )
    return int(status.rsplit(" ", 1)[-1])


async def _snapshots(pool: asyncpg.Pool, component: str) -> list[int]:
    rows = await pool.fetch("SELECT stream_seq FROM snapshots WHERE component = $1 ORDER BY id", component)
    return [int(row["stream_seq"]) for row in rows]


class Peer:
    """The test's own bus connection: plays the other services and records what goes by."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.seen: list[Message] = []
        self.heartbeats: dict[str, Heartbeat] = {}

    async def collect(self, msg: Msg) -> None:
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            message = decode(msg.data)
            if isinstance(message, Heartbeat):
                self.heartbeats[message.component] = message
            else:
                self.seen.append(message)

    def of_type(self, kind: type) -> list[Any]:
        return [m for m in self.seen if isinstance(m, kind)]


@contextlib.asynccontextmanager
async def _peer(nats_url: str) -> AsyncIterator[Peer]:
    bus = Bus("test-peer")
    await bus.connect(nats_url)
    await bus.ensure_streams()
    peer = Peer(bus)
    for subject in ("evt.>", "cmd.>", "hb.>"):
        await bus.subscribe_core(subject, peer.collect)
    try:
        yield peer
    finally:
        await bus.close()


@contextlib.asynccontextmanager
async def _service(component: str, setup: Any, settings: Settings) -> AsyncIterator[asyncio.Task[None]]:
    """One in-process run of a service; stopped cleanly (cleanups run) on exit."""
    task = asyncio.create_task(run_service(component, setup, settings=settings, needs_db=False))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --------------------------------------------------------------------------- risk


async def _valid_symbols(_: bytes) -> bytes:
    view = SymbolHotState(symbol=SYMBOL, hot_state=HotStateStatus.VALID, age_ms=0, last_update_id=1)
    return encode(SymbolsReply(symbols={SYMBOL: view}))


async def _risk_state(peer: Peer) -> dict[str, Any]:
    async def answer() -> Any:
        try:
            raw = await peer.bus.request(subjects.SVC_RISK_STATE, timeout_s=1.0)
        except Exception:
            return None
        return msgspec.json.decode(raw)

    return await eventually(answer)


def _comparable(state: dict[str, Any]) -> dict[str, Any]:
    return {key: state[key] for key in ("trading_state", "positions", "pending", "breakers")}


async def _kv(peer: Peer, key: str) -> Any:
    entry = await peer.bus.kv_get(key)
    return msgspec.json.decode(entry[0]) if entry else None


async def test_risk_restart_when_snapshot_then_same_state_bounded_replay_and_corruption_falls_back(
    infra: EmbeddedInfra, nats_url: str, pg_pool: asyncpg.Pool
) -> None:
    settings = Settings(
        nats_url=nats_url,
        pg_dsn=infra.pg_dsn,
        symbols=(SYMBOL,),
        risk_capital="100000",
        risk_pause_s=600.0,  # CB-2 stays tripped across the restarts
        risk_monitor_interval_s=0.5,
        strategies=("imbalance",),
        snapshot_every_events=3,
    )
    async with _peer(nats_url) as peer:
        bus = peer.bus
        await bus.serve(subjects.SVC_STATE_BUILDER_SYMBOLS, _valid_symbols)
        valid = HotStateRecord(status=HotStateStatus.VALID, reason="test")
        await bus.kv_put(subjects.key_hot_state(SYMBOL), encode(valid))

        async def position(quantity: str, realized: str, caused_by: str | None = None) -> None:
            await bus.publish(
                subjects.evt_position(VENUE, SYMBOL),
                PositionChanged(
                    venue=VENUE,
                    symbol=SYMBOL,
                    quantity=Decimal(quantity),
                    average_entry_price=Decimal(60000),
                    realized_pnl=Decimal(realized),
                    caused_by_client_order_id=caused_by,
                ),
            )

        async def signal() -> str:
            message = SignalGenerated(
                strategy="imbalance",
                symbol=SYMBOL,
                side=Side.BUY,
                order_type=OrderType.MARKET,
                quantity=Decimal("0.001"),
            )
            await bus.publish(subjects.evt_signal("imbalance", SYMBOL), message, msg_id=message.message_id)
            return client_order_id_for(message.message_id)

        async def orders_processed() -> bool:
            state = await _risk_state(peer)
            return state["orders_seq"] >= (await bus.stream_bounds(subjects.STREAM_ORDERS.name))[1]

        async with _service(subjects.RISK, risk_setup, settings):
            first = await _risk_state(peer)
            assert first["recovery"]["mode"] == "full-replay" and first["recovery"]["replayed"] == 0
            await bus.publish(
                subjects.md_mark(VENUE, SYMBOL),
                MarkPrice(venue=VENUE, symbol=SYMBOL, mark_price=Decimal(60000), funding_rate=Decimal("0.0001")),
            )
            await position("0", "0")
            realized = 0
            for _ in range(2):  # two losing round trips of the strategy: a loss streak of 2
                coid = await signal()
                await eventually(lambda c=coid: _approved(peer, c))  # type: ignore[misc]
                await position("0.001", str(realized), caused_by=coid)
                realized -= 1
                await position("0", str(realized))
            open_coid = await signal()  # a third trade stays open across the restart
            await eventually(lambda: _approved(peer, open_coid))
            await position("0.001", str(realized), caused_by=open_coid)
            unfilled = await signal()  # approvals are never filled here: pending exposure across the restart
            await eventually(lambda: _approved(peer, unfilled))
            await bus.publish(
                subjects.md_mark(VENUE, SYMBOL),
                MarkPrice(venue=VENUE, symbol=SYMBOL, mark_price=Decimal(60000), funding_rate=Decimal("0.05")),
            )
            await eventually(orders_processed)
            await eventually(lambda: _breaker_state(peer, "CB-2", "OPEN"))
            before = await _risk_state(peer)
            assert before["pending"][SYMBOL] == ["0.004", "0"] and before["positions"][SYMBOL] == "0.001"
            assert await _snapshots(pg_pool, "risk")

        _, last = await bus.stream_bounds(subjects.STREAM_ORDERS.name)
        async with _service(subjects.RISK, risk_setup, settings):
            after = await _risk_state(peer)
            recovery = after["recovery"]
            assert _comparable(after) == _comparable(before)
            assert recovery["mode"] == "snapshot" and recovery["corrupt_snapshots"] == 0
            # Bounded: only what follows the snapshot was read, not the whole ORDERS stream.
            assert recovery["replayed"] <= last - recovery["snapshot_seq"] < last
            # The trade opened before the restart is still the strategy's: its loss counts for CB-3 and CB-1.
            await position("0", str(realized - 1))

            async def third_loss_counted() -> bool:
                cb3 = await _kv(peer, subjects.key_breaker("CB-3-imbalance"))
                cb1 = await _kv(peer, subjects.key_breaker("CB-1"))
                return len(cb3["details"]["trades"]) == 3 and cb1["details"]["consecutive_losses"] == 3

            await eventually(third_loss_counted)
            await eventually(orders_processed)
            reference = _comparable(await _risk_state(peer))

        # Every snapshot corrupt: detected, alerted, and the whole ORDERS stream replayed instead.
        assert await _corrupt_all(pg_pool, "risk") >= 1
        async with _service(subjects.RISK, risk_setup, settings):
            state = await _risk_state(peer)
            assert state["recovery"]["mode"] == "full-replay" and state["recovery"]["corrupt_snapshots"] >= 1
            assert _comparable(state) == reference
            await eventually(lambda: _true(any(a.key == "snapshot-corrupt.risk" for a in peer.of_type(AlertRaised))))

        # Postgres down at start: no blocking; the log is replayed in full (FM-C3).
        down = dataclasses.replace(
            settings, pg_dsn=f"postgresql://bulwark@127.0.0.1:{infra_commands.free_port('127.0.0.1')}/x"
        )
        async with _service(subjects.RISK, risk_setup, down):
            state = await _risk_state(peer)
            assert state["recovery"]["snapshot_store"] == "unavailable"
            assert state["recovery"]["mode"] == "full-replay"
            assert _comparable(state) == reference


async def _approved(peer: Peer, coid: str) -> bool:
    return any(getattr(m, "order", None) is not None and m.order.client_order_id == coid for m in peer.seen)


async def _breaker_state(peer: Peer, breaker: str, wanted: str) -> bool:
    record = await _kv(peer, subjects.key_breaker(breaker))
    return record is not None and record["state"] == wanted


async def _true(value: Any) -> Any:
    return value


# --------------------------------------------------------------------------- strategy

STRATEGY_CONFIG = """
[cascade-fade]
kind = "cascade_fade"
setup_timeout_s = 600
cooldown_s = 0
max_entry_delay_s = 600
decay_s = 600
"""


async def test_strategy_restart_when_setup_on_decaying_cascade_then_both_survive_and_no_second_entry(
    infra: EmbeddedInfra, nats_url: str, pg_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    config = tmp_path / "strategies.toml"
    config.write_text(STRATEGY_CONFIG)
    settings = Settings(
        nats_url=nats_url,
        pg_dsn=infra.pg_dsn,
        symbols=(SYMBOL,),
        strategy_name="cascade-fade",
        strategies=("cascade-fade",),
        strategy_config=str(config),
        strategy_lease_ttl_s=2.0,
        snapshot_every_events=4,
    )
    component = subjects.strategy_component("cascade-fade")
    async with _peer(nats_url) as peer:
        bus = peer.bus

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

        async def details(wanted: dict[str, Any] | None = None) -> dict[str, Any]:
            async def match() -> Any:
                heartbeat = peer.heartbeats.get(component)
                if heartbeat is None or heartbeat.details.get("recovery") is None:
                    return None
                got = heartbeat.details
                return got if all(got.get(k) == v for k, v in (wanted or {}).items()) else None

            peer.heartbeats.pop(component, None)  # a fresh beat of the running instance
            return await eventually(match)

        async def publish_market(message: Message, subject: str) -> None:
            await bus.publish(subject, message)

        async def flush() -> None:
            price = Decimal(60000)
            await publish_market(
                Trade(venue=VENUE, symbol=SYMBOL, trade_id=1, price=price, quantity=Decimal(1), buyer_is_maker=True),
                subjects.md_trade(VENUE, SYMBOL),
            )
            for i in range(4):
                price -= Decimal(150)
                await publish_market(
                    Liquidation(venue=VENUE, symbol=SYMBOL, side=Side.SELL, price=price, quantity=Decimal(2)),
                    subjects.md_liquidation(VENUE, SYMBOL),
                )
                await publish_market(
                    Trade(
                        venue=VENUE,
                        symbol=SYMBOL,
                        trade_id=2 + i,
                        price=price,
                        quantity=Decimal(2),
                        buyer_is_maker=True,
                    ),
                    subjects.md_trade(VENUE, SYMBOL),
                )

        async with _service(component, strategy_setup, settings):
            await details({"state": "SCANNING"})
            await flush()  # a cascade: ACTIVE, DECAYING after 2 s quiet, then the fade entry (SETUP)
            before = await details({"state": "SETUP", "active_events": 1})
            signals = peer.of_type(SignalGenerated)
            assert len(signals) == 1
            assert await _snapshots(pg_pool, strategy_snapshot_component("cascade-fade"))

        _, last = await bus.stream_bounds(subjects.STREAM_MARKET_DATA.name)
        async with _service(component, strategy_setup, settings):
            after = await details()
            recovery = after["recovery"]
            assert (after["state"], after["symbol"], after["active_events"]) == (
                before["state"],
                before["symbol"],
                before["active_events"],
            )
            assert recovery["mode"] == "snapshot"
            assert recovery["replayed"] <= last - recovery["snapshot_seq"] < last
            await asyncio.sleep(2.0)  # several ticks on the same exhausted cascade
            assert len(peer.of_type(SignalGenerated)) == 1  # it was traded already: no second entry

        # Corrupt snapshots: detected and alerted; the strategy starts with an empty market memory.
        assert await _corrupt_all(pg_pool, strategy_snapshot_component("cascade-fade")) >= 1
        async with _service(component, strategy_setup, settings):
            state = await details()
            assert state["recovery"]["corrupt_snapshots"] >= 1 and state["recovery"]["mode"] == "fresh"
            await eventually(
                lambda: _true(any(a.key == f"snapshot-corrupt.{component}" for a in peer.of_type(AlertRaised)))
            )


# --------------------------------------------------------------------------- watchdog


@contextlib.asynccontextmanager
async def _watchdog(nats_url: str, pool: asyncpg.Pool, **overrides: Any) -> AsyncIterator[ServiceContext]:
    settings = Settings(nats_url=nats_url, heartbeat_timeout_s=1.0, strategies=(), **overrides)
    bus = Bus("watchdog")
    await bus.connect(nats_url)
    await bus.ensure_streams()
    ctx = ServiceContext(component="watchdog", settings=settings, log=get_logger("watchdog"), bus=bus, pool=pool)
    await watchdog_setup(ctx)
    try:
        yield ctx
    finally:
        for task in ctx._tasks:
            task.cancel()
        await asyncio.gather(*ctx._tasks, return_exceptions=True)
        for cleanup in ctx.cleanups:
            await cleanup()
        await bus.close()


async def test_watchdog_restart_when_alerts_open_then_restored_from_snapshot_and_not_paged_again(
    infra: EmbeddedInfra, nats_url: str, pg_pool: asyncpg.Pool
) -> None:
    async with _peer(nats_url) as peer:
        raised = [
            AlertRaised(key=f"gap:{n}", severity="P1", component="market-data", title="possible data gap")
            for n in range(6)
        ]
        async with _watchdog(nats_url, pg_pool, pg_dsn=infra.pg_dsn, snapshot_every_events=2) as ctx:
            for message in raised[:5]:
                await peer.bus.publish(subjects.EVT_ALERT_RAISED, message)
            await eventually(lambda: _true(ctx.details()["control_seq"] >= 5))
            await eventually(lambda: _true(ctx.details()["snapshots"]["saved"] >= 2))
        await peer.bus.publish(subjects.EVT_ALERT_RAISED, raised[5])  # while it is down
        _, last = await peer.bus.stream_bounds(subjects.STREAM_CONTROL.name)

        async with _watchdog(nats_url, pg_pool, pg_dsn=infra.pg_dsn, snapshot_every_events=2) as ctx:
            recovery = ctx.details()["recovery"]
            assert recovery["mode"] == "snapshot" and recovery["snapshot_seq"] >= 4
            assert recovery["replayed"] <= last - recovery["snapshot_seq"]

            # The one raised while it was down is new to the sinks: delivered once by the consumer.
            def gaps() -> list[str]:
                return [key for key in ctx.details()["delivered"] if key.startswith("gap:")]

            await eventually(lambda: _true(ctx.details()["open_alerts"] >= 6 and gaps() == ["gap:5"]))
            await peer.bus.publish(subjects.EVT_ALERT_RAISED, raised[0])  # still open: de-duplicated
            await eventually(lambda: _true(ctx.details()["control_seq"] > last))
            assert gaps() == ["gap:5"]

        assert await _corrupt_all(pg_pool, "watchdog") >= 1
        async with _watchdog(nats_url, pg_pool, pg_dsn=infra.pg_dsn) as ctx:
            recovery = ctx.details()["recovery"]
            assert recovery["mode"] == "full-replay" and recovery["corrupt_snapshots"] >= 1
            gaps = [key for key in ctx.details()["open_keys"] if key.startswith("gap:")]
            assert len(gaps) == 6  # rebuilt from every alert on the log


async def test_watchdog_verification_when_projection_tampered_then_alert_and_ok_when_restored(
    infra: EmbeddedInfra, nats_url: str, pg_pool: asyncpg.Pool
) -> None:
    async with _peer(nats_url) as peer:
        async with _watchdog(nats_url, pg_pool, pg_dsn=infra.pg_dsn, watchdog_verify_interval_s=0.5):

            async def outcomes() -> list[str]:
                return [m.outcome for m in peer.of_type(ProjectionsVerified)]

            await eventually(lambda: _contains(outcomes(), "consistent"))
            await pg_pool.execute(
                "INSERT INTO positions (venue, symbol, quantity, average_entry_price, updated_ns) "
                "VALUES ($1, $2, 5, 60000, 1)",
                VENUE,
                SYMBOL,
            )
            await eventually(lambda: _contains(outcomes(), "diverged"))
            diverged = next(m for m in peer.of_type(ProjectionsVerified) if m.outcome == "diverged")
            assert diverged.differences["positions"] == 1
            [alert] = await eventually(
                lambda: _true([a for a in peer.of_type(AlertRaised) if a.key == "projections-diverged"][:1] or None)
            )
            assert alert.severity == "P1" and alert.details["differences"]["positions"] == 1

            await pg_pool.execute("DELETE FROM positions")
            count = len(peer.of_type(ProjectionsVerified))
            await eventually(lambda: _true(len(peer.of_type(ProjectionsVerified)) > count + 1))
            assert peer.of_type(ProjectionsVerified)[-1].outcome == "consistent"
            await eventually(lambda: _true(any(m.key == "projections-diverged" for m in _resolved(peer))))


async def _contains(values: Any, wanted: str) -> bool:
    return wanted in await values


def _resolved(peer: Peer) -> list[Any]:
    return peer.of_type(AlertResolved)

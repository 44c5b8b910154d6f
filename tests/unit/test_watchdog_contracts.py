"""The watchdog reads and writes what crosses a process through `proto`: the KV values it writes
(`health`, `degradation_level`) keep the bytes of the previous version, the values it reads (level,
health, links, hot state, background work) decode as `proto.kv` values, including values written by
the previous version and by other services, and the state-builder's symbols reply decodes with
`decode_reply` (anything else: the hot state comes from KV)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import pytest
from nats.errors import NoRespondersError

from libs.clock import ManualClock
from libs.logging import get_logger
from libs.runtime.service import ServiceContext
from libs.settings import Settings
from proto import subjects
from proto.enums import DegradationLevel, Health, HotStateStatus
from proto.messages import HotStateRecord, SymbolHotState, SymbolsReply
from proto.replies import ReplyDecodeError, decode_reply, error_reply
from services.watchdog import evaluation, handlers
from services.watchdog.alerts import AlertRouter
from services.watchdog.evaluator import Evaluation, HealthTransition, LevelTransition
from services.watchdog.observations import LinkObservation, SymbolObservation, symbols_from_reply
from services.watchdog.observer import Observer
from services.watchdog.verification import ProjectionsVerifier

S = 1_000_000_000
T0 = 1_700_000_000 * S
SYMBOL = "BTCUSDT"


class Kv:
    def __init__(self, values: dict[str, bytes]) -> None:
        self.values = values

    async def keys(self) -> list[str]:
        return list(self.values)

    async def create(self, key: str, value: bytes) -> int:
        self.values[key] = value
        return 1

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        self.values[key] = value
        return 2


class Bus:
    """The KV bucket and the request/reply the watchdog uses, in memory."""

    def __init__(self, values: dict[str, bytes] | None = None, reply: bytes | Exception = b"{}") -> None:
        self.values = values if values is not None else {}
        self.reply = reply

    async def kv(self) -> Kv:
        return Kv(self.values)

    async def kv_get(self, key: str) -> tuple[bytes, int] | None:
        return (self.values[key], 1) if key in self.values else None

    async def kv_keys(self, prefix: str = "") -> list[str]:
        return sorted(key for key in self.values if key.startswith(prefix))

    async def kv_put(self, key: str, value: bytes) -> int:
        self.values[key] = value
        return 1

    async def publish(self, subject: str, message: Any) -> int:
        return 1

    async def request(self, subject: str, payload: bytes, timeout_s: float) -> bytes:
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply

    async def subscribe_core(self, subject: str, callback: Callable[[Any], Awaitable[None]]) -> None:
        return None


def context(bus: Bus) -> ServiceContext:
    return ServiceContext(
        component=subjects.WATCHDOG,
        settings=Settings(symbols=(SYMBOL,)),
        log=get_logger("test"),
        bus=bus,  # type: ignore[arg-type]
    )


def evaluated(previous: DegradationLevel | None) -> Evaluation:
    return Evaluation(
        health=Health.YELLOW,
        reasons=("hot state STALE: BTCUSDT",),
        level=DegradationLevel.REDUCED_FUNCTIONALITY,
        level_reason="hot state STALE: BTCUSDT",
        health_change=HealthTransition(Health.GREEN, Health.YELLOW, ("hot state STALE: BTCUSDT",)),
        level_change=LevelTransition(previous, DegradationLevel.REDUCED_FUNCTIONALITY, "hot state STALE: BTCUSDT"),
        checks={"components_up": True, "hot_state_fresh": False},
    )


@pytest.mark.parametrize("previous", [DegradationLevel.NORMAL, None])
async def test_apply_evaluation_when_writing_health_and_level_then_bytes_of_the_previous_version(
    previous: DegradationLevel | None,
) -> None:
    bus = Bus()
    result = evaluated(previous)

    await handlers.apply_evaluation(context(bus), result)  # type: ignore[arg-type]

    health = bus.values[subjects.KEY_HEALTH]
    assert health == msgspec.json.encode(
        {
            "health": result.health.value,
            "reasons": list(result.reasons),
            "checks": result.checks,
            "ts_ns": msgspec.json.decode(health)["ts_ns"],
        }
    )
    level = bus.values[subjects.KEY_DEGRADATION_LEVEL]
    assert level == msgspec.json.encode(
        {
            "level": DegradationLevel.REDUCED_FUNCTIONALITY.value,
            "reason": "hot state STALE: BTCUSDT",
            "previous": previous.value if previous else None,
            "ts_ns": msgspec.json.decode(level)["ts_ns"],
        }
    )


async def test_evaluator_from_kv_when_values_of_the_previous_version_and_of_the_gateway_then_adopted() -> None:
    bus = Bus(
        {
            # An emergency stop as the gateway writes it (with `operator`, without `previous`).
            subjects.KEY_DEGRADATION_LEVEL: b'{"level": "HARD_SHUTDOWN", "reason": "stop", "operator": "ops"}',
            subjects.KEY_HEALTH: b'{"health": "RED", "reasons": ["risk DOWN"], "checks": {"x": false}, "ts_ns": 1}',
        }
    )

    evaluator = await evaluation.evaluator_from_kv(context(bus), ManualClock(T0))

    assert (evaluator.level, evaluator.health) == (DegradationLevel.HARD_SHUTDOWN, Health.RED)


@pytest.mark.parametrize("level", [b'{"level": "SOMEWHAT_DEGRADED"}', b"not json", b"[]"])
async def test_evaluator_from_kv_when_level_unreadable_then_none(level: bytes) -> None:
    evaluator = await evaluation.evaluator_from_kv(
        context(Bus({subjects.KEY_DEGRADATION_LEVEL: level})), ManualClock(T0)
    )

    assert evaluator.level is None


async def test_observer_start_when_links_in_kv_then_observed_from_link_values() -> None:
    bus = Bus(
        {
            subjects.key_link("binance-usdm", subjects.MARKET_WS_LINK): msgspec.json.encode(
                {"state": "DEGRADED", "reason": "stale", "causes": ["corruption"], "ts_ns": 5}
            ),
            subjects.key_link("binance-usdm", subjects.ORDER_LINK): b'{"state": "CONNECTED"}',
            subjects.key_link("other", subjects.ORDER_LINK): b'{"state": "SOMEWHERE"}',
            subjects.KEY_HEALTH: b'{"health": "GREEN"}',
        }
    )
    observer = Observer(context(bus), ManualClock(T0))

    await observer.start()

    assert observer.link_observations() == [
        LinkObservation("binance-usdm.market-ws", "DEGRADED", "stale", frozenset({"corruption"})),
        LinkObservation("binance-usdm.orders", "CONNECTED"),
    ]


def symbols_reply_bytes() -> bytes:
    view = SymbolHotState(symbol=SYMBOL, hot_state=HotStateStatus.VALID, age_ms=12, last_update_id=7)
    return msgspec.json.encode(SymbolsReply(symbols={SYMBOL: view}))


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (symbols_reply_bytes(), [SymbolObservation(SYMBOL, "VALID", 12)]),
        # Not answered, an error, or not the contract: the hot state comes from KV.
        (NoRespondersError(), [SymbolObservation(SYMBOL, "STALE", 3_000, T0 - 5 * S)]),
        (error_reply("unavailable", "starting"), [SymbolObservation(SYMBOL, "STALE", 3_000, T0 - 5 * S)]),
        (b'{"symbols": {"BTCUSDT": 1}}', [SymbolObservation(SYMBOL, "STALE", 3_000, T0 - 5 * S)]),
    ],
)
async def test_observer_symbols_when_reply_then_decoded_else_hot_state_from_kv(
    reply: bytes | Exception, expected: list[SymbolObservation]
) -> None:
    stale = HotStateRecord(status=HotStateStatus.STALE, reason="no update", ts_ns=T0 - 2 * S, stale_since_ns=T0 - 5 * S)
    bus = Bus({subjects.key_hot_state(SYMBOL): msgspec.json.encode(stale)}, reply=reply)
    observer = Observer(context(bus), ManualClock(T0))

    assert await observer.symbols() == expected


def test_symbols_from_reply_when_error_reply_then_none() -> None:
    reply = decode_reply(SymbolsReply, error_reply("unavailable", "starting"))

    assert symbols_from_reply(reply) == []
    with pytest.raises(ReplyDecodeError):
        decode_reply(SymbolsReply, b'{"symbols": {"ETHUSDT": {"status": "STALE"}}}')


@pytest.mark.parametrize(
    ("value", "paused"),
    [
        (None, False),
        (b'{"paused": true, "reason": "CB-4", "ts_ns": 1}', True),
        (b'{"paused": false, "reason": "", "ts_ns": 1}', False),
        (b"not json", False),
        (b'{"reason": "no paused"}', False),
    ],
)
async def test_verifier_when_background_work_value_then_paused_only_when_it_says_so(
    value: bytes | None, paused: bool
) -> None:
    bus = Bus({} if value is None else {subjects.KEY_BACKGROUND_WORK: value})
    verifier = ProjectionsVerifier(context(bus), AlertRouter())

    assert await verifier.background_paused() is paused

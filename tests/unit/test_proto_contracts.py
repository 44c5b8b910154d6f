"""proto owns what crosses a process: KV values, request/reply bodies, durable consumer names."""

from __future__ import annotations

import re
from decimal import Decimal

import msgspec
import pytest

from proto import subjects
from proto.enums import BreakerState, ConnectionState, DegradationLevel, TradingState
from proto.kv import (
    KV_VALUE_TYPES,
    BreakerValue,
    DegradationLevelValue,
    DependencyBreakerValue,
    LinkValue,
    ProtectionValue,
    TradingStateValue,
    decode_breaker,
    decode_value,
    encode_value,
)
from proto.replies import (
    REQUEST_REPLY_TYPES,
    BookReply,
    BreakerResetReply,
    ErrorReply,
    PositionMemoryState,
    PositionStateReply,
    ReplyDecodeError,
    RiskStateReply,
    TradingControlReply,
    TradingControlRequest,
    decode_reply,
    error_reply,
)


def test_kv_and_reply_structs_when_declared_then_frozen() -> None:
    for kind in (*KV_VALUE_TYPES, *REQUEST_REPLY_TYPES):
        assert kind.__struct_config__.frozen, kind


def test_decode_value_when_written_by_an_older_version_then_missing_fields_take_defaults() -> None:
    # A value written before `trips` and `details` existed.
    raw = b'{"breaker": "CB-2", "title": "abnormal market", "state": "OPEN", "reason": "depth", "ts_ns": 7}'
    value = decode_value(BreakerValue, raw)
    assert value == BreakerValue(
        breaker="CB-2", title="abnormal market", state=BreakerState.OPEN, reason="depth", ts_ns=7
    )
    assert value is not None and value.trips == 0 and value.details == {}


def test_decode_value_when_unknown_fields_then_ignored_and_when_garbage_then_none() -> None:
    raw = b'{"state": "HALTED", "reason": "operator", "operator": "ops", "ts_ns": 1, "added_later": true}'
    assert decode_value(TradingStateValue, raw) == TradingStateValue(
        state=TradingState.HALTED, reason="operator", operator="ops", ts_ns=1
    )
    assert decode_value(TradingStateValue, b'{"state": "MAYBE"}') is None
    assert decode_value(TradingStateValue, b"[[[") is None
    assert decode_value(TradingStateValue, None) is None


def test_encode_value_when_round_tripped_then_equal() -> None:
    link = LinkValue(state=ConnectionState.DEGRADED, reason="stale", causes=["corruption"], ts_ns=3)
    assert decode_value(LinkValue, encode_value(link)) == link


def test_decode_reply_when_error_then_error_reply_else_the_body() -> None:
    failed = decode_reply(TradingControlReply, error_reply("invalid_transition", "HALTED -> HALTED"))
    assert isinstance(failed, ErrorReply)
    assert (failed.error.code, failed.error.message) == ("invalid_transition", "HALTED -> HALTED")
    ok = decode_reply(TradingControlReply, b'{"trading_state": "HALTED", "previous": "ACTIVE"}')
    assert ok == TradingControlReply(trading_state=TradingState.HALTED, previous=TradingState.ACTIVE)


def test_decode_reply_when_levels_are_strings_then_decimals() -> None:
    raw = b'{"symbol": "BTCUSDT", "status": "VALID", "last_update_id": 9, "bids": [["61800.1", "0.5"]], "asks": []}'
    book = decode_reply(BookReply, raw)
    assert isinstance(book, BookReply)
    assert book.bids == [(Decimal("61800.1"), Decimal("0.5"))]


@pytest.mark.parametrize("raw", [b"not json", b'{"trading_state": 3}', b"[]"])
def test_decode_reply_when_neither_body_nor_error_then_reply_decode_error(raw: bytes) -> None:
    with pytest.raises(ReplyDecodeError):
        decode_reply(TradingControlReply, raw)


def test_breaker_reset_reply_when_no_note_then_key_absent() -> None:
    reply = BreakerResetReply(
        breaker="CB-2", state=BreakerState.CLOSED, previous=BreakerState.OPEN, trading_state=TradingState.ACTIVE
    )
    assert "note" not in msgspec.json.decode(msgspec.json.encode(reply))


def test_decode_breaker_when_risk_or_dependency_breaker_then_told_apart_by_their_fields() -> None:
    risk = BreakerValue(breaker="CB-1", title="rapid loss", state=BreakerState.OPEN, reason="loss", trips=1, ts_ns=4)
    # libs.breaker BreakerTransition.record: what market-data and position write for venue/dependency breakers.
    venue = b'{"state": "HALF_OPEN", "reason": "30 s open", "ts_ns": 5}'

    assert decode_breaker(encode_value(risk)) == risk
    assert decode_breaker(venue) == DependencyBreakerValue(state=BreakerState.HALF_OPEN, reason="30 s open", ts_ns=5)
    assert decode_breaker(b'{"state": "BROKEN"}') is None
    assert decode_breaker(b"[]") is None and decode_breaker(None) is None


@pytest.mark.parametrize(
    "raw",
    [
        b'{"level": "EMERGENCY_MODE", "reason": "red", "previous": "NORMAL", "ts_ns": 1}',  # watchdog
        b'{"level": "HARD_SHUTDOWN", "reason": "invariant", "ts_ns": 2}',  # position
        b'{"level": "HARD_SHUTDOWN", "reason": "x (by ops)", "operator": "ops", "ts_ns": 3}',  # gateway before
    ],
    ids=["watchdog", "position", "gateway-before"],
)
def test_degradation_level_value_when_written_by_each_writer_then_read(raw: bytes) -> None:
    value = decode_value(DegradationLevelValue, raw)
    assert value is not None and value.level == DegradationLevel(msgspec.json.decode(raw)["level"])


def test_key_prefixes_when_keys_and_subjects_built_then_start_with_them() -> None:
    assert subjects.key_breaker("CB-1").startswith(subjects.KEY_BREAKER_PREFIX)
    assert subjects.key_breaker("venue.binance-usdm") == "breaker.venue.binance-usdm"
    assert subjects.key_link("binance-usdm", subjects.ORDER_LINK) == "link.binance-usdm.orders"
    assert subjects.key_link("v", "l").startswith(subjects.KEY_LINK_PREFIX)
    assert subjects.dlq("risk-orders") == "dlq.risk-orders" and subjects.dlq("x").startswith(subjects.DLQ_PREFIX)
    assert subjects.heartbeat("risk") == "hb.risk" and subjects.heartbeat("x").startswith(subjects.HEARTBEAT_PREFIX)
    query = subjects.SVC_RISK_HALT
    assert query == "svc.risk.halt" and query.startswith(subjects.SERVICE_QUERY_PREFIX)


def test_risk_state_reply_when_risk_answers_then_decoded() -> None:
    raw = (
        b'{"trading_state": "HALTED", "reason": "op", "operator": "ops", "ts_ns": 3, "degradation_level": null,'
        b' "positions": {"BTCUSDT": "0.010"}, "pending": {"BTCUSDT": ["0", "0.5"]}, "hot_state": {"BTCUSDT": null},'
        b' "breakers": {"CB-1": "CLOSED"}, "entries_halted": null, "recovery": null, "orders_seq": 4}'
    )  # services/risk serve_state
    reply = decode_reply(RiskStateReply, raw)
    assert isinstance(reply, RiskStateReply)
    assert reply.trading_state == TradingState.HALTED and reply.pending["BTCUSDT"] == [Decimal(0), Decimal("0.5")]


def test_durable_names_when_listed_then_service_dash_purpose_and_unique() -> None:
    names = [
        subjects.RISK_ORDER_EVENTS_CONSUMER,
        subjects.RISK_ORDERS_CONSUMER,
        subjects.RISK_SIGNALS_CONSUMER,
        subjects.STATE_BUILDER_MARKET_DATA_CONSUMER,
        subjects.WATCHDOG_ALERTS_CONSUMER,
        subjects.WATCHDOG_DLQ_CONSUMER,
        *(durable for _, durable in subjects.WATCHDOG_AUDIT_CONSUMERS),
        subjects.position_orders_consumer(subjects.POSITION),
        subjects.position_denials_consumer(subjects.POSITION),
        subjects.position_cancels_consumer(subjects.POSITION),
        subjects.strategy_market_data_consumer("trend"),
        subjects.strategy_commands_consumer("trend"),
    ]
    services = ("risk", "state-builder", "watchdog", "position", "strategy")
    assert all(re.fullmatch(r"[a-z][a-z0-9-]*", name) and name.startswith(services) for name in names)
    assert len(set(names)) == len(names)
    # Renaming a durable starts it over from the stream's beginning: the main venue keeps its names.
    assert subjects.position_orders_consumer(subjects.POSITION) == "position-orders"


def test_wildcards_when_used_by_consumers_then_inside_a_stream() -> None:
    covered = {subject for spec in subjects.ALL_STREAMS for subject in spec.subjects}
    for wildcard in (
        subjects.EVT_LINK_ALL,
        subjects.EVT_HOT_STATE_ALL,
        subjects.EVT_SIGNAL_ALL,
        subjects.EVT_ORDER_ALL,
        subjects.EVT_FILL_ALL,
        subjects.EVT_POSITION_ALL,
        subjects.EVT_ALERT_ALL,
        subjects.MD_ALL,
    ):
        assert wildcard in covered, wildcard


def test_degradation_level_value_when_previous_then_written_in_the_watchdog_shape_and_old_values_still_read() -> None:
    value = DegradationLevelValue(
        level=DegradationLevel.EMERGENCY_MODE, reason="risk DOWN", previous=DegradationLevel.NORMAL, ts_ns=5
    )
    assert encode_value(value) == (b'{"level":"EMERGENCY_MODE","reason":"risk DOWN","previous":"NORMAL","ts_ns":5}')
    # As the gateway's emergency stop writes it: no `previous`, an `operator` the struct does not hold.
    stop = decode_value(DegradationLevelValue, b'{"level": "HARD_SHUTDOWN", "reason": "stop", "operator": "ops"}')
    assert stop == DegradationLevelValue(level=DegradationLevel.HARD_SHUTDOWN, reason="stop")


def test_key_link_when_built_then_starts_with_the_link_prefix() -> None:
    key = subjects.key_link("binance-usdm", subjects.MARKET_WS_LINK)
    assert key.startswith(subjects.KEY_LINK_PREFIX)
    assert key.removeprefix(subjects.KEY_LINK_PREFIX) == "binance-usdm.market-ws"


def test_risk_state_reply_when_entries_halted_then_the_reason_and_when_not_then_null() -> None:
    # risk answers why new entries are HALTED (a sentence), or null: never a boolean.
    raw = b'{"trading_state": "ACTIVE", "entries_halted": "bus connection lost", "positions": {"BTCUSDT": "0.5"}}'
    reply = decode_reply(RiskStateReply, raw)
    assert isinstance(reply, RiskStateReply)
    assert reply.entries_halted == "bus connection lost" and reply.positions == {"BTCUSDT": Decimal("0.5")}
    running = decode_reply(RiskStateReply, b'{"trading_state": "ACTIVE", "entries_halted": null}')
    assert isinstance(running, RiskStateReply) and running.entries_halted is None


def test_position_state_reply_when_an_earlier_reply_round_trips_then_same_bytes() -> None:
    # `svc.position.state` as position built it by hand before the struct: keys, order and formats.
    earlier = msgspec.json.encode(
        {
            "orders": {"bw-a": {"status": "FILLED", "filled_quantity": "0.010", "symbol": "BTCUSDT"}},
            "positions": {"BTCUSDT": "0.010"},
            "protections": {"BTCUSDT": {"entry": "bw-a", "stop_loss": "90.5", "take_profit": "None"}},
            "reconciled": True,
            "recovery": {"mode": "snapshot", "snapshot_seq": 12, "replayed": 3},
            "memory": {
                "orders": 1,
                "evicted": 4,
                "evicted_until_ns": 1_700_000_000_000_000_000,
                "retention_s": 600.0,
                "retention_max_terminal": 2000,
            },
        }
    )
    reply = decode_reply(PositionStateReply, earlier)
    assert isinstance(reply, PositionStateReply)
    assert reply.positions == {"BTCUSDT": Decimal("0.010")} and reply.memory.evicted == 4
    assert msgspec.json.encode(reply) == earlier


def test_position_state_reply_when_memory_missing_then_defaults() -> None:
    reply = decode_reply(PositionStateReply, b'{"orders": {}, "reconciled": false}')
    assert isinstance(reply, PositionStateReply) and reply.memory == PositionMemoryState()


def test_position_kv_values_when_written_by_an_earlier_version_then_read() -> None:
    protection = decode_value(ProtectionValue, b'{"entry": "bw-e", "stop_loss": "90.50", "take_profit": null}')
    assert protection == ProtectionValue(entry="bw-e", stop_loss=Decimal("90.50"))
    assert encode_value(protection) == b'{"entry":"bw-e","stop_loss":"90.50","take_profit":null}'
    link = decode_value(LinkValue, b'{"state": "DISCONNECTED", "reason": "venue breaker open", "ts_ns": 5}')
    assert link == LinkValue(state=ConnectionState.DISCONNECTED, reason="venue breaker open", ts_ns=5)
    breaker = DependencyBreakerValue(state=BreakerState.OPEN, reason="5 failures", ts_ns=6)
    assert msgspec.json.decode(encode_value(breaker)) == {"state": "OPEN", "reason": "5 failures", "ts_ns": 6}


def test_position_keys_when_named_then_as_before() -> None:
    assert subjects.key_protection("binance-usdm", "BTCUSDT") == "protection.binance-usdm.BTCUSDT"
    approvals = subjects.evt_order_all_for_venue("approved", "binance-usdm")
    assert approvals == "evt.order.approved.binance-usdm.>"
    assert subjects.EVT_ORDER_ALL in subjects.STREAM_ORDERS.subjects
    assert subjects.key_breaker(subjects.position_venue_breaker("binance-usdm")) == "breaker.venue-binance-usdm"
    halt = TradingControlRequest(operator="position", reason="invariant violated")
    assert msgspec.json.decode(msgspec.json.encode(halt)) == {"operator": "position", "reason": "invariant violated"}

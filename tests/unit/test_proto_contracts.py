"""proto owns what crosses a process: KV values, request/reply bodies, durable consumer names."""

from __future__ import annotations

import re
from decimal import Decimal

import msgspec
import pytest

from proto import subjects
from proto.enums import BreakerState, ConnectionState, TradingState
from proto.kv import (
    KV_VALUE_TYPES,
    BreakerValue,
    DependencyBreakerValue,
    LinkValue,
    ProtectionValue,
    TradingStateValue,
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

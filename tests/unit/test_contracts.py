"""Contracts: schemas checked in match the structs; every message round-trips; evolution rules."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest

from proto import codec, subjects
from proto.messages import ALL_MESSAGE_TYPES, DepthDiff, SubmitOrder
from proto.schemas_export import SCHEMA_DIR, render


def test_schemas_when_structs_change_then_checked_in_files_must_be_regenerated() -> None:
    expected = render()
    on_disk = {path.name: path.read_text() for path in SCHEMA_DIR.glob("*.json")}
    stale = sorted(name for name in expected if on_disk.get(name) != expected[name])
    extra = sorted(set(on_disk) - set(expected))
    assert not stale and not extra, f"run `make schemas` and review: stale {stale}, extra {extra}"


def test_every_message_type_is_frozen_tagged_and_carries_the_envelope() -> None:
    for kind in ALL_MESSAGE_TYPES:
        config = kind.__struct_config__
        assert config.frozen, kind
        assert config.tag == kind.__name__, kind
        for name in ("message_id", "correlation_id", "causation_id", "ts_event_ns", "ts_init_ns", "schema_version"):
            assert name in kind.__struct_fields__, (kind, name)


def test_decode_when_decimal_strings_then_exact_decimals_round_trip() -> None:
    diff = DepthDiff(
        venue="binance-usdm",
        symbol="BTCUSDT",
        first_update_id=10,
        final_update_id=12,
        prev_final_update_id=9,
        bids=[(Decimal("61800.20"), Decimal("2.507"))],
        asks=[(Decimal("61800.30"), Decimal("0.000"))],
    )
    data = codec.encode(diff)
    assert b'"61800.20"' in data and b'"0.000"' in data
    assert codec.decode(data) == diff


def test_decode_when_required_field_missing_then_validation_error() -> None:
    with pytest.raises(msgspec.ValidationError):
        codec.decode(b'{"type":"SubmitOrder","symbol":"BTCUSDT"}')


def test_decode_when_unknown_field_then_ignored_for_forward_compatibility() -> None:
    order = SubmitOrder(
        client_order_id="bw1",
        idempotency_key="k",
        source="OPERATOR",  # type: ignore[arg-type]
        symbol="BTCUSDT",
        side="BUY",  # type: ignore[arg-type]
        order_type="MARKET",  # type: ignore[arg-type]
        quantity=Decimal("1"),
    )
    raw = msgspec.json.decode(codec.encode(order))
    raw["field_from_the_future"] = 1
    assert codec.decode(msgspec.json.encode(raw)) == order


def test_subjects_when_built_then_tokens_have_no_dots_and_streams_cover_them() -> None:
    built = [
        subjects.md_depth("binance-usdm", "BTCUSDT"),
        subjects.evt_order("approved", "binance-usdm", "BTCUSDT"),
        subjects.evt_fill("binance-usdm", "BTCUSDT"),
        subjects.evt_hot_state("BTCUSDT"),
        subjects.CMD_ORDER_SUBMIT,
        subjects.EVT_TRADING_STATE,
        subjects.dlq("risk-orders"),
    ]

    def covered(subject: str, pattern: str) -> bool:
        parts, pats = subject.split("."), pattern.split(".")
        for index, pat in enumerate(pats):
            if pat == ">":
                return len(parts) > index
            if index >= len(parts) or (pat != "*" and pat != parts[index]):
                return False
        return len(parts) == len(pats)

    for subject in built:
        owners = [s.name for s in subjects.ALL_STREAMS for p in s.subjects if covered(subject, p)]
        assert len(owners) == 1, (subject, owners)

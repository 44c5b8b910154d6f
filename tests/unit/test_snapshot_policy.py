"""Snapshot policy (every 60 s and every N events), CRC32C, and state-builder checkpoints."""

from __future__ import annotations

from decimal import Decimal

import pytest

from libs.clock import ManualClock
from libs.snapshot import SnapshotPolicy, crc32c
from services.state_builder.domain import (
    BookState,
    OrderBook,
    StateBuilderCheckpoint,
    SymbolCheckpoint,
    decode_checkpoint,
    encode_checkpoint,
)

S = 1_000_000_000


T0 = 1_700_000_000 * S


def test_crc32c_when_known_vector_then_matches_castagnoli() -> None:
    # RFC 3720 B.4 test vector: 32 bytes of zeros.
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"123456789") == 0xE3069283


def test_policy_when_no_events_then_never_due_even_after_interval() -> None:
    clock = ManualClock(T0)
    policy = SnapshotPolicy(clock=clock, interval_ns=60 * S, every_events=100)
    clock.advance(600)
    assert not policy.due()


def test_policy_when_event_budget_used_then_due_exactly_at_n_and_reset_by_taken() -> None:
    clock = ManualClock(T0)
    policy = SnapshotPolicy(clock=clock, interval_ns=60 * S, every_events=3)
    assert not policy.record()
    assert not policy.record()
    assert policy.record()
    policy.taken()
    assert not policy.due()
    assert not policy.record()


def test_policy_when_60_s_pass_with_one_event_then_due() -> None:
    clock = ManualClock(T0)
    policy = SnapshotPolicy(clock=clock, interval_ns=60 * S, every_events=1000)
    assert not policy.record()
    clock.advance_ns(60 * S - 1)
    assert not policy.due()
    clock.advance_ns(1)
    assert policy.due()


def _checkpoint() -> StateBuilderCheckpoint:
    return StateBuilderCheckpoint(
        stream_seq=42,
        taken_ns=7,
        symbols=[
            SymbolCheckpoint(
                symbol="BTCUSDT",
                book_state=BookState.SYNCED,
                last_update_id=1000,
                bids=[(Decimal("100.10"), Decimal("1.5"))],
                asks=[(Decimal("100.20"), Decimal("0.001"))],
                last_event_ns=5,
                mark_price=Decimal("100.15"),
            )
        ],
    )


def test_checkpoint_when_encoded_and_decoded_then_decimals_exact() -> None:
    restored = decode_checkpoint(encode_checkpoint(_checkpoint()))
    assert restored == _checkpoint()
    book = OrderBook("BTCUSDT")
    entry = restored.symbols[0]
    book.restore(entry.book_state, entry.last_update_id, entry.bids, entry.asks)
    assert book.state == BookState.SYNCED
    assert book.best_bid() == Decimal("100.10") and book.best_ask() == Decimal("100.20")


def test_decode_checkpoint_when_other_version_or_garbage_then_value_error() -> None:
    data = encode_checkpoint(_checkpoint()).replace(b'"version":1', b'"version":99')
    with pytest.raises(ValueError):
        decode_checkpoint(data)
    with pytest.raises(ValueError):
        decode_checkpoint(b"\x00garbage")

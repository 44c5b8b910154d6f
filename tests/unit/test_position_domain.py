"""Position arithmetic: adds, partial closes, full closes, flips, realized PnL (Decimal)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs.orders_model import Position, apply_fill
from proto.enums import Side

D = Decimal


def test_fill_when_flat_then_opens_at_fill_price() -> None:
    assert apply_fill(Position(), Side.BUY, D("0.5"), D("100")) == Position(D("0.5"), D("100"), D(0))


def test_fill_when_adding_then_weighted_average_entry() -> None:
    position = apply_fill(Position(D("1"), D("100"), D(0)), Side.BUY, D("1"), D("110"))
    assert position == Position(D("2"), D("105"), D(0))


def test_fill_when_partial_close_long_then_realizes_and_keeps_entry() -> None:
    position = apply_fill(Position(D("2"), D("100"), D(0)), Side.SELL, D("0.5"), D("120"))
    assert position == Position(D("1.5"), D("100"), D("10.0"))


def test_fill_when_full_close_short_then_flat_with_pnl() -> None:
    position = apply_fill(Position(D("-1"), D("100"), D("3")), Side.BUY, D("1"), D("90"))
    assert position == Position(D(0), D(0), D("13"))


def test_fill_when_flip_long_to_short_then_rest_opens_at_fill_price() -> None:
    position = apply_fill(Position(D("1"), D("100"), D(0)), Side.SELL, D("3"), D("95"))
    assert position == Position(D("-2"), D("95"), D("-5"))


def test_fill_when_flip_short_to_long_then_realizes_short_pnl() -> None:
    position = apply_fill(Position(D("-0.001"), D("60000"), D(0)), Side.BUY, D("0.003"), D("59000"))
    assert position.quantity == D("0.002")
    assert position.average_entry_price == D("59000")
    assert position.realized_pnl == D("1.000")


def test_fill_when_quantity_not_positive_then_error() -> None:
    with pytest.raises(ValueError):
        apply_fill(Position(), Side.BUY, D(0), D("1"))


quantities = st.decimals(min_value=D("0.001"), max_value=D("10"), places=3)
prices = st.decimals(min_value=D("1"), max_value=D("100000"), places=2)


@given(st.lists(st.tuples(st.sampled_from([Side.BUY, Side.SELL]), quantities, prices), min_size=1, max_size=20))
def test_fills_when_any_sequence_then_position_is_sum_of_signed_fills(fills: list) -> None:
    position = Position()
    for side, quantity, price in fills:
        position = apply_fill(position, side, quantity, price)
    assert position.quantity == sum((q if s == Side.BUY else -q) for s, q, _ in fills)
    if position.quantity == 0:
        assert position.average_entry_price == 0


@given(quantities, prices, prices)
def test_round_trip_when_open_then_close_then_pnl_is_price_difference(quantity: D, entry: D, exit_: D) -> None:
    position = apply_fill(apply_fill(Position(), Side.BUY, quantity, entry), Side.SELL, quantity, exit_)
    assert position.quantity == 0
    assert position.realized_pnl == (exit_ - entry) * quantity

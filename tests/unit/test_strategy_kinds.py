"""The strategy kinds on scripted inputs, on the simulator's synthetic market and on a real recording."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from libs import recordings
from proto.enums import Side, StrategyState
from services.strategy.domain import NS, MarketView, Signal, Strategy, Transition
from services.strategy.strategies import CascadeFadeConfig, CascadeFadeStrategy, TrendConfig, TrendStrategy
from services.venue_sim.adapters.synthetic import SyntheticSource
from services.venue_sim.domain.book import OrderBook
from services.venue_sim.domain.market_events import DepthEvent, LiquidationEvent, TradeEvent

St = StrategyState
SYMBOL = "BTCUSDT"


def view(price: Decimal) -> dict[str, MarketView]:
    return {SYMBOL: MarketView(hot_state_valid=True, best_bid=price, best_ask=price + Decimal("0.1"))}


def signals(actions: list) -> list[Signal]:
    return [a for a in actions if isinstance(a, Signal)]


def states(actions: list) -> list[StrategyState]:
    return [a.current for a in actions if isinstance(a, Transition)]


def fade() -> CascadeFadeStrategy:
    strategy = CascadeFadeStrategy("cascade-fade", CascadeFadeConfig(hold_s=60, cooldown_s=5))
    strategy.enable(0)
    return strategy


def flush_longs(strategy: Strategy, start_s: float = 10, count: int = 5) -> Decimal:
    """A long squeeze: SELL forced orders, each printing 0.2 % lower; returns the low."""
    price = Decimal(60000)
    strategy.on_trade(SYMBOL, int((start_s - 5) * NS), price, Decimal(1), buyer_is_maker=False)
    for i in range(count):
        ts = int((start_s + i * 0.3) * NS)
        price = (price * Decimal("0.998")).quantize(Decimal("0.1"))
        strategy.on_liquidation(SYMBOL, ts, Side.SELL, price, Decimal(2))
        strategy.on_trade(SYMBOL, ts, price, Decimal(2), buyer_is_maker=True)
    return price


# --------------------------------------------------------------------------- cascade fade


def test_fade_when_cascade_still_active_then_no_entry() -> None:
    strategy = fade()
    low = flush_longs(strategy)
    assert strategy.on_tick(int(11.5 * NS), view(low)) == []
    assert strategy.active_events()[0]["phase"] == "ACTIVE"


def test_fade_when_cascade_exhausted_then_buys_with_stop_below_low_and_target_at_half_retrace() -> None:
    strategy = fade()
    low = flush_longs(strategy)  # 60000 → ~59401, last forced order at 11.2 s
    actions = strategy.on_tick(int(13.5 * NS), view(low + Decimal(20)))
    assert states(actions) == [St.SETUP]
    [signal] = signals(actions)
    assert (signal.side, signal.quantity, signal.reduce_only) == (Side.BUY, Decimal("0.002"), False)
    assert signal.stop_loss == (low * Decimal("0.997")).quantize(Decimal("0.1"))
    assert signal.take_profit == (low + (Decimal(60000) - low) / 2).quantize(Decimal("0.1"))
    assert signal.stop_loss < low < signal.take_profit
    # ~1 % displacement against the 0.3 % minimum: well clear of it, so it passes REDUCED_FUNCTIONALITY
    assert signal.confidence is not None and Decimal("0.8") <= signal.confidence <= 1
    # one attempt per cascade: after the entry times out, the same event is not traded again
    assert states(strategy.on_tick(int(24 * NS), view(low))) == [St.SCANNING]
    assert strategy.on_tick(int(30 * NS), view(low)) == []


def test_fade_when_short_squeeze_exhausted_then_sells_with_stop_above_high() -> None:
    strategy = fade()
    price = Decimal(3000)
    strategy.on_trade("ETHUSDT", 0, price, Decimal(1), buyer_is_maker=True)
    for i in range(4):
        price = (price * Decimal("1.003")).quantize(Decimal("0.01"))
        strategy.on_liquidation("ETHUSDT", int((10 + i * 0.2) * NS), Side.BUY, price, Decimal(5))
    market = {"ETHUSDT": MarketView(hot_state_valid=True, best_bid=price - 1, best_ask=price - Decimal("0.99"))}
    [signal] = signals(strategy.on_tick(13 * NS, market))
    assert signal.side == Side.SELL and signal.quantity == Decimal("0.01")
    assert signal.take_profit < price - 1 < price < signal.stop_loss


def test_fade_when_price_already_retraced_past_target_then_no_entry() -> None:
    strategy = fade()
    flush_longs(strategy)
    assert strategy.on_tick(13 * NS, view(Decimal(59950))) == []


def test_fade_when_in_position_and_take_profit_reached_then_reduce_only_exit() -> None:
    strategy = fade()
    low = flush_longs(strategy)
    [entry] = signals(strategy.on_tick(int(13.5 * NS), view(low + Decimal(20))))
    assert states(strategy.on_position(SYMBOL, Decimal("0.002"), 14 * NS)) == [St.IN_POSITION]
    assert strategy.on_tick(15 * NS, view(low + Decimal(100))) == []
    assert entry.take_profit is not None
    actions = strategy.on_tick(16 * NS, view(entry.take_profit + 1))
    assert states(actions) == [St.EXITING]
    [exit_signal] = signals(actions)
    assert (exit_signal.side, exit_signal.quantity, exit_signal.reduce_only) == (Side.SELL, Decimal("0.002"), True)
    assert "take-profit" in exit_signal.reason


def test_fade_when_in_position_and_stop_crossed_then_exit() -> None:
    strategy = fade()
    low = flush_longs(strategy)
    [entry] = signals(strategy.on_tick(int(13.5 * NS), view(low + Decimal(20))))
    strategy.on_position(SYMBOL, Decimal("0.002"), 14 * NS)
    assert entry.stop_loss is not None
    [exit_signal] = signals(strategy.on_tick(15 * NS, view(entry.stop_loss - 1)))
    assert "stop-loss" in exit_signal.reason and exit_signal.reduce_only


def test_fade_when_link_reset_then_event_gone_and_no_entry() -> None:
    strategy = fade()
    low = flush_longs(strategy)
    strategy.data_reset(None, 12 * NS, "link DISCONNECTED")
    assert strategy.active_events() == []
    assert strategy.on_tick(13 * NS, view(low)) == []


# --------------------------------------------------------------------------- trend


def trend() -> TrendStrategy:
    config = TrendConfig(fast_s=5, slow_s=30, warmup_s=20, min_gap_bps=Decimal(5), cooldown_s=10, hold_s=600)
    strategy = TrendStrategy("trend", config)
    strategy.enable(0)
    return strategy


def walk(strategy: TrendStrategy, start_s: int, end_s: int, price: Decimal, step: Decimal) -> Decimal:
    for second in range(start_s, end_s):
        price += step
        strategy.on_trade(SYMBOL, second * NS, price, Decimal(1), buyer_is_maker=False)
    return price


def test_trend_when_flat_market_then_no_entry() -> None:
    strategy = trend()
    price = walk(strategy, 0, 60, Decimal(60000), Decimal(0))
    assert strategy.on_tick(60 * NS, view(price)) == []


def test_trend_when_before_warmup_then_no_entry_even_if_rising() -> None:
    strategy = trend()
    price = walk(strategy, 0, 15, Decimal(60000), Decimal(20))
    assert strategy.on_tick(15 * NS, view(price)) == []


def test_trend_when_rising_then_buys_with_stop_and_target_and_exits_when_it_turns() -> None:
    strategy = trend()
    price = walk(strategy, 0, 60, Decimal(60000), Decimal(10))
    [signal] = signals(strategy.on_tick(60 * NS, view(price)))
    assert signal.side == Side.BUY and signal.stop_loss < price < signal.take_profit
    assert signal.stop_loss == (price * Decimal("0.996")).quantize(Decimal("0.1"))
    assert signal.confidence is not None and 0 < signal.confidence <= 1
    strategy.on_position(SYMBOL, Decimal("0.002"), 61 * NS)
    exits: list[Signal] = []
    for second in range(61, 120):
        price = walk(strategy, second, second + 1, price, Decimal(-5))
        exits += signals(strategy.on_tick(second * NS, view(price)))
        if exits:
            break
    assert strategy.state == St.EXITING and exits[0].reduce_only and "trend reversed" in exits[0].reason
    assert price > signal.stop_loss  # it turned before the stop was needed


def test_trend_when_falling_then_sells() -> None:
    strategy = trend()
    price = walk(strategy, 0, 60, Decimal(60000), Decimal(-10))
    [signal] = signals(strategy.on_tick(60 * NS, view(price)))
    assert signal.side == Side.SELL and signal.take_profit < price < signal.stop_loss


# --------------------------------------------------------------------------- synthetic market and a recording


def run_synthetic(seed: int, steps: int) -> list[Signal]:
    source = SyntheticSource([SYMBOL], seed=seed, cascade_probability=1 / 300)
    book = OrderBook(SYMBOL)
    start = source.start_book(SYMBOL)
    book.reset(start.bids, start.asks, start.last_update_id)
    strategy = fade()
    seen: list[Signal] = []
    next_tick = 0
    for offset, event in source.script(SYMBOL, book):
        match event:
            case DepthEvent():
                book.apply(event.bids, event.asks, event.final_update_id)
            case TradeEvent():
                strategy.on_trade(SYMBOL, offset, event.price, event.quantity, event.buyer_is_maker)
            case LiquidationEvent():
                strategy.on_liquidation(SYMBOL, offset, Side(event.side), event.price, event.quantity)
        if offset >= next_tick:
            next_tick = offset + NS // 2
            bid, ask = book.best_bid(), book.best_ask()
            assert bid is not None and ask is not None
            market = {SYMBOL: MarketView(hot_state_valid=True, best_bid=bid[0], best_ask=ask[0])}
            seen += signals(strategy.on_tick(offset, market))
            if strategy.state == St.SETUP:  # the venue fills at once
                strategy.on_position(SYMBOL, Decimal("0.002"), offset)
            if strategy.state == St.EXITING:
                strategy.on_position(SYMBOL, Decimal(0), offset)
        if offset >= steps * SyntheticSource.STEP_NS:
            return seen
    raise AssertionError("unreachable")


def test_synthetic_market_when_cascades_generated_then_fade_trades_them_deterministically() -> None:
    first = run_synthetic(seed=7, steps=1500)
    entries = [s for s in first if not s.reduce_only]
    assert entries, "the synthetic market produced no tradable cascade in 150 s"
    for entry in entries:
        assert entry.stop_loss is not None and entry.take_profit is not None
        low, high = sorted((entry.stop_loss, entry.take_profit))
        assert low < high
    assert any(s.reduce_only for s in first)
    assert [(s.side, s.stop_loss, s.take_profit) for s in run_synthetic(seed=7, steps=1500)] == [
        (s.side, s.stop_loss, s.take_profit) for s in first
    ]


def test_real_recording_when_one_insurance_fund_liquidation_then_no_cascade_and_no_fade(data_dir: Path) -> None:
    files = [data_dir / "binance" / "usdm_btcusdt_20230404.gz", data_dir / "binance" / "usdm_btcusdt_20230405.gz"]
    records = recordings.read_recordings(files, kinds={"Trade", "ForceOrder"})
    strategy = fade()
    liquidations = 0
    next_tick = records[0].receive_ns
    for record in records:
        assert isinstance(record, recordings.Trade | recordings.ForceOrder)
        if isinstance(record, recordings.ForceOrder):
            liquidations += 1
            strategy.on_liquidation(SYMBOL, record.receive_ns, Side(record.side), record.price, record.quantity)
            continue
        strategy.on_trade(SYMBOL, record.receive_ns, record.price, record.quantity, record.buyer_is_maker)
        if record.kind == "INSURANCE_FUND":  # the venue turns it into a forceOrder, as the simulator does
            liquidations += 1
            side = Side.SELL if record.buyer_is_maker else Side.BUY
            strategy.on_liquidation(SYMBOL, record.receive_ns, side, record.price, record.quantity)
        if record.receive_ns >= next_tick:
            next_tick = record.receive_ns + NS // 2
            assert signals(strategy.on_tick(record.receive_ns, view(record.price))) == []
            assert strategy.active_events() == []
    assert liquidations == 1


def test_entry_confidence_when_condition_clears_threshold_then_scaled_into_zero_one() -> None:
    from decimal import Decimal

    from services.strategy.domain import entry_confidence

    assert entry_confidence(Decimal(5), Decimal(5)) == Decimal("0.5")
    assert entry_confidence(Decimal(-8), Decimal(5)) == Decimal("0.8")
    assert entry_confidence(Decimal(50), Decimal(5)) == Decimal(1)
    assert entry_confidence(Decimal(3), Decimal(0)) == Decimal(1)

"""The venue's own rules before an order leaves, through the real pieces: the simulator's
`exchangeInfo` fetched by position into KV, risk judging every order by it, the gateway answering
422 naming the rule, strategy orders rounded to the grid, and a rules error from the venue making
position fetch the rules again at once.

Real nats-server, Postgres and Valkey, the simulator as a subprocess; risk and position in-process
as their mains run them, the gateway app in-process on the same bus.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest_asyncio

from entrypoints.harness.embedded import EmbeddedInfra
from libs.ids import client_order_id_for
from proto import subjects
from proto.enums import ComponentState, OrderType, Side
from proto.kv import SymbolRulesValue, decode_value
from proto.messages import SignalGenerated
from tests.integration.order_system import (  # noqa: F401 - the *_fixture names are fixtures
    SYMBOL,
    VENUE,
    System,
    add_fault,
    limit_order,
    market_order,
    settings_overrides_fixture,
    sim_state,
    submit,
    system_fixture,
    venue_url_fixture,
    wait_status,
)
from tests.integration.test_gateway import OP, harness, make_settings
from tests.support.polling import eventually


async def _rules(system: System) -> SymbolRulesValue:
    """BTCUSDT's rules once position has published them."""

    async def published() -> SymbolRulesValue | None:
        entry = await system.bus.kv_get(subjects.key_symbol_rules(VENUE, SYMBOL))
        return decode_value(SymbolRulesValue, entry[0]) if entry is not None else None

    rules: SymbolRulesValue = await eventually(published, 20)
    return rules


async def _touch(system: System) -> tuple[Decimal, Decimal]:
    book = (await sim_state(system.venue_url))["books"][SYMBOL]
    return Decimal(book["best_bid"]), Decimal(book["best_ask"])


@pytest_asyncio.fixture(name="api")
async def api_fixture(
    system: System, infra: EmbeddedInfra, nats_url: str, redis_client: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway's REST API on the system's bus."""
    async with harness(make_settings(infra, nats_url), system.pool, redis_client) as gateway:

        async def heard() -> bool:
            states = [gateway.gateway.component_state(name) for name in (subjects.POSITION, subjects.RISK)]
            return ComponentState.DOWN not in states

        await eventually(heard, 20)  # the gateway heard position's and risk's heartbeats
        yield gateway.client


async def test_rules_when_position_starts_then_the_venues_exchange_info_is_in_kv(system: System) -> None:
    rules = await _rules(system)
    # The simulator's USD-M BTCUSDT filters, as its exchangeInfo publishes them.
    assert rules.status == "TRADING"
    assert (rules.tick_size, rules.step_size, rules.min_notional) == (Decimal("0.1"), Decimal("0.001"), Decimal(100))
    assert (rules.multiplier_up, rules.multiplier_down, rules.max_num_orders) == (
        Decimal("1.05"),
        Decimal("0.95"),
        200,
    )


async def test_operator_order_when_it_breaks_a_venue_rule_then_422_naming_it_and_nothing_sent(
    system: System, api: httpx.AsyncClient
) -> None:
    await _rules(system)
    bid, ask = await _touch(system)
    assert Decimal("0.001") * ask < 100, "the simulator's BTC price moved: 0.001 BTC is no longer below 100 USDT"

    small = await api.post(
        "/v1/orders",
        headers={**OP, "Idempotency-Key": "rules-small"},
        json={"symbol": SYMBOL, "side": "BUY", "type": "MARKET", "quantity": "0.001"},
    )
    off_tick = await api.post(
        "/v1/orders",
        headers={**OP, "Idempotency-Key": "rules-tick"},
        json={
            "symbol": SYMBOL,
            "side": "BUY",
            "type": "LIMIT",
            "quantity": "0.01",
            "price": str(bid - Decimal("0.05")),
        },
    )
    priced_market = await api.post(
        "/v1/orders",
        headers={**OP, "Idempotency-Key": "rules-market-price"},
        json={"symbol": SYMBOL, "side": "BUY", "type": "MARKET", "quantity": "0.01", "price": str(bid)},
    )
    fine = await api.post(
        "/v1/orders",
        headers={**OP, "Idempotency-Key": "rules-fine"},
        json={"symbol": SYMBOL, "side": "BUY", "type": "MARKET", "quantity": "0.01"},
    )

    assert small.status_code == 422, small.text
    assert small.json()["error"]["code"] == "venue_rule_violation"
    assert small.json()["error"]["details"]["rule"] == "MIN_NOTIONAL"
    assert "MIN_NOTIONAL" in small.json()["error"]["message"]
    assert off_tick.status_code == 422 and off_tick.json()["error"]["details"]["rule"] == "PRICE_FILTER", off_tick.text
    assert priced_market.status_code == 422, priced_market.text
    assert priced_market.json()["error"]["details"]["rule"] == "ORDER_TYPE"
    # An order within the rules is taken and trades as before.
    assert fine.status_code in (201, 202), fine.text
    await wait_status(system.pool, client_order_id_for("rules-fine"), "FILLED")
    venue_orders = {o["client_order_id"] for o in (await sim_state(system.venue_url))["orders"]}
    assert venue_orders == {client_order_id_for("rules-fine")}
    refused = [client_order_id_for(k) for k in ("rules-small", "rules-tick", "rules-market-price")]
    assert await system.pool.fetchval("SELECT count(*) FROM orders WHERE client_order_id = ANY($1)", refused) == 0


async def test_operator_order_when_it_bypasses_the_gateway_then_risk_denies_it_naming_the_rule(
    system: System,
) -> None:
    await _rules(system)
    bid, _ = await _touch(system)
    small = market_order("rules-bus-small", quantity="0.001")
    off_tick = limit_order("rules-bus-tick", bid - Decimal("0.05"))
    await submit(system.bus, small)
    await submit(system.bus, off_tick)

    small_row = await wait_status(system.pool, small.client_order_id, "DENIED")
    tick_row = await wait_status(system.pool, off_tick.client_order_id, "DENIED")

    assert "MIN_NOTIONAL" in small_row["reason"], small_row["reason"]
    assert "PRICE_FILTER" in tick_row["reason"], tick_row["reason"]
    assert (await sim_state(system.venue_url))["orders"] == []


async def test_strategy_order_when_off_the_grid_then_rounded_down_and_traded(system: System) -> None:
    await _rules(system)
    signal = SignalGenerated(
        strategy="imbalance",
        symbol=SYMBOL,
        side=Side.BUY,
        order_type=OrderType.MARKET,
        quantity=Decimal("0.01079"),
        reason="test entry off the step grid",
        confidence=Decimal(1),
    )
    await system.bus.publish(subjects.evt_signal("imbalance", SYMBOL), signal, msg_id=signal.message_id)

    row = await wait_status(system.pool, client_order_id_for(signal.message_id), "FILLED")

    assert row["quantity"] == Decimal("0.010")  # down to the 0.001 step, never up
    venue = [o for o in (await sim_state(system.venue_url))["orders"] if o["client_order_id"] == row["client_order_id"]]
    assert len(venue) == 1 and Decimal(venue[0]["quantity"]) == Decimal("0.010"), venue


async def test_rules_when_the_venue_answers_a_rules_error_then_fetched_again_at_once(system: System) -> None:
    first = await _rules(system)
    await add_fault(
        system.venue_url,
        {
            "symbol": SYMBOL,
            "kind": "order_reject",
            "params": {"code": -1111, "msg": "Precision is over the maximum defined for this asset."},
        },
    )
    order = market_order("rules-1111")
    await submit(system.bus, order)
    await wait_status(system.pool, order.client_order_id, "REJECTED")

    async def refetched() -> SymbolRulesValue | None:
        rules = await _rules(system)
        return rules if rules.fetched_ns > first.fetched_ns else None

    # The periodic refresh is minutes away: only the venue's -1111 explains a new fetch now.
    again = await eventually(refetched, 15)
    assert again.tick_size == first.tick_size

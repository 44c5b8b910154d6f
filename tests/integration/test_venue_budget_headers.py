"""The venue's own usage counters feed the client's request budget (FM-N2), against the venue
simulator: the account's order count (`X-MBX-ORDER-COUNT-10S`/`-1M`, which includes orders another
tool placed on the same account) and the IP's used weight (`X-MBX-USED-WEIGHT-1M`) hold back the
next order placement although this client itself sent few."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from entrypoints.harness.venue import running_venue_sim
from libs.binance.client import BinanceRestClient, endpoint_cost
from libs.ratelimit import RateBudget
from libs.settings import Settings

SYMBOL = "BTCUSDT"


@pytest.fixture(name="venue_url")
def venue_url_fixture(tmp_path: Path) -> Iterator[str]:
    with running_venue_sim(tmp_path, "--source", "synthetic") as url:
        yield url


async def _resting_buy(client: BinanceRestClient, key: str) -> dict:
    price = Decimal((await client.ticker_price(SYMBOL))["price"]) * Decimal("0.97")
    return await client.place_order(
        symbol=SYMBOL,
        side="BUY",
        type="LIMIT",
        timeInForce="GTC",
        quantity="0.01",
        price=str(price.quantize(Decimal("0.1"))),
        newClientOrderId=key,
    )


async def test_budget_when_venue_reports_the_accounts_order_count_then_next_order_held(venue_url: str) -> None:
    settings = Settings()
    # Start early in a 10 s window: the venue's count and ours must be about the same window.
    await asyncio.sleep((10 - time.time() % 10) % 10 + 0.2)
    budget = RateBudget("binance-usdm", time.time_ns, order_limit_10s=6, margin=0.2)
    order_cost = endpoint_cost("POST", "/fapi/v1/order", {})
    async with (
        BinanceRestClient(venue_url, settings.venue_api_key, settings.venue_api_secret) as other_tool,
        BinanceRestClient(venue_url, settings.venue_api_key, settings.venue_api_secret, budget=budget) as ours,
    ):
        for n in range(4):
            await _resting_buy(other_tool, f"other-tool-{n}")
        assert budget.hold(*order_cost).allowed
        await _resting_buy(ours, "ours-1")  # the venue answers: 5 orders in these 10 s on the account
        held = budget.hold(*order_cost)
        assert not held.allowed and held.reason == "order budget (10 s)", held
        # The IP's weight as the venue counts it (the other tool's requests included), not only ours.
        assert ours.used_weight_1m is not None and ours.used_weight_1m > 2
        assert budget.used_weight() >= ours.used_weight_1m

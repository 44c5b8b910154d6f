"""The venue's rules in the whole system, as an operator meets them: `bulwark up`, then orders the
venue would refuse answered 422 at once naming the rule, with nothing sent to the venue."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Any

import httpx
import pytest

from entrypoints.harness.system import RunningSystem
from libs.ids import client_order_id_for

pytestmark = pytest.mark.e2e


def _venue_orders(system: RunningSystem) -> set[str]:
    state = httpx.get(f"{system.venue}/_sim/state", timeout=10).json()
    return {order["client_order_id"] for order in state["orders"]}


def _touch(system: RunningSystem) -> tuple[Decimal, Decimal]:
    book = httpx.get(f"{system.venue}/_sim/state", timeout=10).json()["books"]["BTCUSDT"]
    return Decimal(book["best_bid"]), Decimal(book["best_ask"])


KEYS: list[str] = []


def _post(client: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    KEYS.append(f"rules-{uuid.uuid4()}")
    return client.post("/v1/orders", json=body, headers={"Idempotency-Key": KEYS[-1]})


def _rules_known(client: httpx.Client) -> bool:
    """Position has published the venue's rules: an order off the step grid is refused by them."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        probe = _post(client, {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.0001"})
        if probe.status_code == 422:
            return True
        time.sleep(1.0)
    return False


def test_order_when_the_venue_would_refuse_it_then_422_naming_the_rule_and_nothing_sent(
    system: RunningSystem,
) -> None:
    system.wait_all_ready()
    bid, ask = _touch(system)
    assert Decimal("0.001") * ask < 100, "the recording's BTC price: 0.001 BTC is no longer below 100 USDT"
    with system.client(system.operator_token) as client:
        assert _rules_known(client), "orders the venue refuses were never answered 422"
        small = _post(client, {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.001"})
        off_tick = _post(
            client,
            {
                "symbol": "BTCUSDT",
                "side": "BUY",
                "type": "LIMIT",
                "quantity": "0.01",
                "price": str(bid - Decimal("0.05")),
            },
        )
        off_step = _post(client, {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.0025"})

    assert small.status_code == 422, small.text
    error = small.json()["error"]
    assert error["code"] == "venue_rule_violation" and error["details"]["rule"] == "MIN_NOTIONAL", error
    assert "MIN_NOTIONAL" in error["message"]
    assert off_tick.status_code == 422 and off_tick.json()["error"]["details"]["rule"] == "PRICE_FILTER", off_tick.text
    assert off_step.status_code == 422, off_step.text
    assert off_step.json()["error"]["details"]["rule"] == "MARKET_LOT_SIZE"
    time.sleep(1.0)
    assert not {client_order_id_for(key) for key in KEYS} & _venue_orders(system)  # none reached the venue

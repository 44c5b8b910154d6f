"""The gateway under abuse, against real nats-server, Postgres and Valkey: rate limits per IP and per
token (429 + Retry-After), reads shed before orders, a cap on event streams, bounded metric labels."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.gateway.admission import AdmissionLimits
from services.gateway.context import GatewayConfig
from tests.integration.test_gateway import (
    ALICE,
    OP,
    ORDER,
    VIEW,
    Harness,
    accept,
    harness,
    make_settings,
    real_server,
)


@contextlib.asynccontextmanager
async def limited(infra: Any, nats_url: str, pg_pool: Any, redis_client: Any, **limits: Any) -> AsyncIterator[Harness]:
    config = GatewayConfig(outcome_timeout_s=2.0, admission=AdmissionLimits(**limits))
    async with harness(make_settings(infra, nats_url), pg_pool, redis_client, config) as h:
        yield h


@pytest.fixture
def stores(infra: Any, nats_url: str, pg_pool: Any, redis_client: Any) -> tuple[Any, str, Any, Any]:
    return infra, nats_url, pg_pool, redis_client


async def test_requests_when_one_ip_exceeds_its_rate_then_429_with_retry_after_and_health_still_answers(
    stores: Any,
) -> None:
    async with limited(*stores, per_ip_rate=0.5, per_ip_burst=5, read_reserve=0.0) as h:
        answers = [await h.client.get("/v1/strategies", headers=VIEW) for _ in range(7)]
        live = await h.client.get("/health/live")
        metrics = (await h.client.get("/metrics")).text

    assert [answer.status_code for answer in answers] == [200] * 5 + [429] * 2
    refused = answers[-1]
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["code"] == "rate_limited"
    assert live.status_code == 200
    assert 'bulwark_gateway_requests_refused_total{reason="rate"} 2.0' in metrics


async def test_requests_when_one_token_exceeds_its_rate_then_429_for_it_only(stores: Any) -> None:
    async with limited(*stores, per_token_rate=0.5, per_token_burst=3, read_reserve=0.0) as h:
        alice = [await h.client.get("/v1/strategies", headers=ALICE) for _ in range(4)]
        operator = await h.client.get("/v1/strategies", headers=OP)

    assert [answer.status_code for answer in alice] == [200, 200, 200, 429]
    assert alice[-1].headers["Retry-After"]
    assert operator.status_code == 200


async def test_orders_when_reads_used_up_the_shared_bucket_then_orders_still_admitted(stores: Any) -> None:
    async with limited(*stores, per_token_rate=0.01, per_token_burst=10, read_reserve=0.3) as h:
        h.heartbeat("position")
        await h.risk_standin(accept)
        await asyncio.sleep(0.3)
        reads = [await h.client.get("/v1/strategies", headers=OP) for _ in range(8)]
        order = await h.client.post("/v1/orders", headers={**OP, "Idempotency-Key": "prio"}, json=ORDER)

    assert [answer.status_code for answer in reads] == [200] * 7 + [429]
    assert order.status_code == 201, order.text


async def test_reads_when_saturated_then_shed_with_429_while_orders_go_through(stores: Any) -> None:
    async with limited(*stores, read_concurrency=1) as h:
        h.heartbeat("position")
        await h.risk_standin(accept)
        release = asyncio.Event()

        async def slow_book(_: bytes) -> bytes:
            await release.wait()
            body = {"symbol": "BTCUSDT", "status": "VALID", "last_update_id": 1, "bids": [], "asks": []}
            return json.dumps(body).encode()

        await h.peer.serve("svc.state-builder.book", slow_book)
        await h.peer.nc.flush()
        await asyncio.sleep(0.3)
        holding = asyncio.create_task(h.client.get("/v1/book/BTCUSDT", headers=VIEW))
        await asyncio.sleep(0.2)
        shed = await h.client.get("/v1/strategies", headers=VIEW)
        order = await h.client.post("/v1/orders", headers={**OP, "Idempotency-Key": "busy"}, json=ORDER)
        release.set()
        held = await holding

    assert shed.status_code == 429 and shed.json()["error"]["code"] == "overloaded"
    assert shed.headers["Retry-After"] == "1"
    assert order.status_code == 201, order.text
    assert held.status_code == 200


async def test_event_streams_when_over_the_cap_then_429_and_a_closed_stream_frees_its_place(stores: Any) -> None:
    async with limited(*stores, sse_per_client=1, sse_total=2) as h, real_server(h) as client:
        async with client.stream("GET", "/v1/events/stream", headers=VIEW) as first:
            assert first.status_code == 200
            second_same_token = await client.get("/v1/events/stream", headers=VIEW)
            async with client.stream("GET", "/v1/events/stream", headers=OP) as other_token:
                assert other_token.status_code == 200
                over_total = await client.get("/v1/events/stream", headers=ALICE)
        after_close = None
        for _ in range(50):  # the server notices the closed stream shortly after
            async with client.stream("GET", "/v1/events/stream", headers=VIEW) as again:
                if again.status_code == 200:
                    after_close = again.status_code
                    break
            await asyncio.sleep(0.1)

    assert second_same_token.status_code == 429 and second_same_token.headers["Retry-After"]
    assert second_same_token.json()["error"]["code"] == "too_many_streams"
    assert over_total.status_code == 429
    assert after_close == 200


async def test_metrics_when_unknown_paths_and_methods_then_labels_stay_bounded(stores: Any) -> None:
    async with limited(*stores) as h:
        for index in range(20):
            await h.client.request("FOO" + str(index), f"/random/{index}/path", headers=VIEW)
            await h.client.get(f"/v1/orders/o{index}x", headers=VIEW)
        metrics = (await h.client.get("/metrics")).text

    assert "/random/" not in metrics and "FOO" not in metrics
    assert 'method="other",route="other"' in metrics
    assert 'route="/v1/orders/{order_id}"' in metrics
    assert "o1x" not in metrics

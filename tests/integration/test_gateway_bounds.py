# ruff: noqa: F811  (`gw` is the shared fixture of test_gateway, imported to be used here)
"""Gateway input bounds against real nats-server, Postgres and Valkey: a bad value gets a 400/422
(413 for a body too big) naming the field, never a 500, and never a 503 unless a dependency is down.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from tests.integration.test_gateway import OP, ORDER, VIEW, Harness, accept, gw  # noqa: F401

INT64_MAX = 2**63 - 1


def error_of(response: Any) -> dict[str, Any]:
    body = response.json()
    assert "error" in body, body
    return body["error"]


def field_named(response: Any, field: str) -> bool:
    details = error_of(response)["details"]
    return any(field in detail.get("loc", []) for detail in details) if isinstance(details, list) else False


async def ready_for_orders(gw: Harness) -> None:
    gw.heartbeat("position")
    await gw.risk_standin(accept)
    await asyncio.sleep(0.3)


@pytest.mark.parametrize("quantity", ["1e1000000", "1e999999", "1e-20000", "NaN", "Infinity", "-1", "1e19"])
async def test_post_order_when_quantity_out_of_bounds_then_422_naming_quantity_and_nothing_published(
    gw: Harness, quantity: str
) -> None:
    await ready_for_orders(gw)

    response = await gw.client.post(
        "/v1/orders", headers={**OP, "Idempotency-Key": f"q-{quantity}"}, json={**ORDER, "quantity": quantity}
    )

    assert response.status_code == 422, response.text
    assert field_named(response, "quantity"), response.text
    assert await gw.submit_orders_in_stream() == 0


async def test_post_order_when_quantity_has_many_trailing_zeros_then_accepted_as_the_plain_value(gw: Harness) -> None:
    await ready_for_orders(gw)

    response = await gw.client.post(
        "/v1/orders", headers={**OP, "Idempotency-Key": "zeros"}, json={**ORDER, "quantity": "0.0100000000000000000000"}
    )

    assert response.status_code == 201, response.text
    assert response.json()["quantity"] == "0.01"


@pytest.mark.parametrize("path", ["/v1/orders", "/v1/events", "/v1/dlq"])
async def test_list_when_cursor_is_deeply_nested_json_then_400_naming_the_cursor(gw: Harness, path: str) -> None:
    cursor = base64.urlsafe_b64encode(b"[" * 3000).decode().rstrip("=")

    response = await gw.client.get(path, params={"cursor": cursor}, headers=VIEW)

    assert response.status_code == 400, response.text
    assert field_named(response, "cursor"), response.text


@pytest.mark.parametrize("path", ["/v1/orders", "/v1/events", "/v1/dlq"])
@pytest.mark.parametrize("inside", [b"[" * 50, b"[[1]]", b'{"a": 1}', b"\xff\xfe", rb'[1, "a\u0000"]'])
async def test_list_when_cursor_is_short_but_not_issued_here_then_400_invalid_cursor(
    gw: Harness, path: str, inside: bytes
) -> None:
    cursor = base64.urlsafe_b64encode(inside).decode().rstrip("=")

    response = await gw.client.get(path, params={"cursor": cursor}, headers=VIEW)

    assert response.status_code == 400, response.text
    assert error_of(response)["code"] == "invalid_cursor"


@pytest.mark.parametrize("path", ["/v1/orders", "/v1/events", "/v1/dlq"])
async def test_list_when_cursor_holds_an_id_above_int64_then_400_invalid_cursor(gw: Harness, path: str) -> None:
    parts = "[9223372036854775808]" if path != "/v1/orders" else '[9223372036854775808,"x"]'
    cursor = base64.urlsafe_b64encode(parts.encode()).decode().rstrip("=")

    response = await gw.client.get(path, params={"cursor": cursor}, headers=VIEW)

    assert response.status_code == 400, response.text
    assert error_of(response)["code"] == "invalid_cursor"


async def test_halt_when_control_body_is_deeply_nested_then_400_and_risk_never_asked(gw: Harness) -> None:
    asked: list[bytes] = []

    async def halt(payload: bytes) -> bytes:
        asked.append(payload)
        return b'{"trading_state": "HALTED", "previous": "ACTIVE"}'

    await gw.peer.serve("svc.risk.halt", halt)
    await gw.peer.nc.flush()

    response = await gw.client.post("/v1/trading/halt", headers=OP, content=b"[" * 5000)

    assert response.status_code == 400, response.text
    assert error_of(response)["code"] == "invalid_json"
    assert asked == []


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/dlq/2166485565524120221752754176", "letter_id"),
        (f"/v1/dlq?since_ns={INT64_MAX + 1}", "since_ns"),
        (f"/v1/dlq?until_ns={2**70}", "until_ns"),
        (f"/v1/events?since_ns={INT64_MAX + 1}", "since_ns"),
    ],
)
async def test_read_when_integer_above_int64_then_422_naming_it_not_503(gw: Harness, path: str, field: str) -> None:
    response = await gw.client.get(path, headers=VIEW)

    assert response.status_code == 422, response.text
    assert field_named(response, field), response.text


@pytest.mark.parametrize("method", ["POST", "DELETE"])
async def test_dlq_write_when_id_above_int64_then_422_not_503(gw: Harness, method: str) -> None:
    path = "/v1/dlq/2166485565524120221752754176" + ("/retry" if method == "POST" else "")

    response = await gw.client.request(method, path, headers=OP)

    assert response.status_code == 422, response.text
    assert field_named(response, "letter_id")


# --------------------------------------------------------------------------- the input guard


async def test_post_when_body_too_large_then_413_before_auth_reads_it(gw: Harness) -> None:
    big = b'{"reason": "' + b"x" * (70 * 1024) + b'"}'

    no_token = await gw.client.post("/v1/trading/halt", content=big)
    with_token = await gw.client.post("/v1/orders", headers={**OP, "Idempotency-Key": "big"}, content=big)

    assert no_token.status_code == 413, no_token.text
    assert error_of(no_token)["code"] == "payload_too_large"
    assert with_token.status_code == 413
    assert await gw.submit_orders_in_stream() == 0


async def test_post_when_body_streamed_without_length_and_too_large_then_413(gw: Harness) -> None:
    async def chunks() -> Any:
        for _ in range(100):
            yield b"[" + b" " * 1023

    response = await gw.client.post("/v1/trading/halt", headers=OP, content=chunks())

    assert response.status_code == 413, response.text


async def test_post_order_when_idempotency_key_is_10_kb_then_400_and_no_key_stored(
    gw: Harness, redis_client: Any
) -> None:
    await ready_for_orders(gw)
    key = "k" * 10_000

    response = await gw.client.post("/v1/orders", headers={**OP, "Idempotency-Key": key}, json=ORDER)

    assert response.status_code == 400, response.text
    assert await gw.ctx.pool.fetchval("SELECT count(*) FROM idempotency_keys") == 0
    assert await redis_client.keys("idem:*") == []
    assert await gw.submit_orders_in_stream() == 0


async def test_post_order_when_body_deeply_nested_then_400_invalid_json(gw: Harness) -> None:
    response = await gw.client.post(
        "/v1/orders", headers={**OP, "Idempotency-Key": "deep", "Content-Type": "application/json"}, content=b"[" * 5000
    )

    assert response.status_code == 400, response.text
    assert error_of(response)["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/dlq?consumer=a%00b", "consumer"),
        ("/v1/events?component=%00", "component"),
        ("/v1/orders?status=%ff", "query"),
    ],
)
async def test_read_when_query_has_nul_or_bad_bytes_then_400_naming_it_not_503(
    gw: Harness, path: str, field: str
) -> None:
    response = await gw.client.get(path, headers=VIEW)

    assert response.status_code == 400, response.text
    assert field in response.text


async def test_halt_when_reason_has_nul_then_422_naming_reason(gw: Harness) -> None:
    response = await gw.client.post("/v1/trading/halt", headers=OP, json={"reason": "a\u0000b"})

    assert response.status_code == 422, response.text
    assert field_named(response, "reason")


async def test_post_when_client_trickles_the_body_then_408(
    infra: Any, nats_url: str, pg_pool: Any, redis_client: Any
) -> None:
    from services.gateway.context import GatewayConfig
    from services.gateway.guard import GuardLimits
    from tests.integration.test_gateway import harness, make_settings

    config = GatewayConfig(guard=GuardLimits(body_timeout_s=0.3))
    async with harness(make_settings(infra, nats_url), pg_pool, redis_client, config) as h:

        async def slow() -> Any:
            yield b'{"reason":'
            await asyncio.sleep(1.0)
            yield b' "x"}'

        response = await h.client.post("/v1/trading/halt", headers=OP, content=slow())

    assert response.status_code == 408, response.text
    assert error_of(response)["code"] == "request_timeout"


async def test_halt_when_form_reason_has_many_brackets_then_accepted_as_text(gw: Harness) -> None:
    reasons: list[str] = []

    async def halt(payload: bytes) -> bytes:
        reasons.append(json.loads(payload)["reason"])
        return b'{"trading_state": "HALTED", "previous": "ACTIVE"}'

    await gw.peer.serve("svc.risk.halt", halt)
    await gw.peer.nc.flush()

    response = await gw.client.post(
        "/v1/trading/halt",
        headers={**OP, "Content-Type": "application/x-www-form-urlencoded"},
        content=b"reason=" + b"[" * 40,
    )

    assert response.status_code == 200, response.text
    assert reasons == ["[" * 40]

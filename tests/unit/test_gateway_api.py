"""Gateway HTTP surface without infrastructure: auth, error envelope, validation shapes, OpenAPI.

The bus is never connected here, so these tests also show that a dependency that is down gives
a 503 with `Retry-After`, never a 500.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from libs.bus import Bus
from libs.clock import NS_PER_S, ManualClock
from libs.logging import get_logger
from libs.runtime.service import ServiceContext
from libs.settings import Settings
from proto.enums import ComponentState
from proto.messages import Heartbeat
from services.gateway.app import create_app
from services.gateway.context import Gateway

OP = {"Authorization": "Bearer o"}
VIEW = {"Authorization": "Bearer v"}


@pytest_asyncio.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(admin_token="a", operator_token="o", viewer_token="v")
    ctx = ServiceContext(component="gateway", settings=settings, log=get_logger("gateway"), bus=Bus("gateway"))
    app = create_app(Gateway(ctx))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as http:
        yield http


def assert_envelope(response: httpx.Response, status: int, code: str | None = None) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    if code is not None:
        assert error["code"] == code
    return error


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/status"),
        ("GET", "/v1/orders"),
        ("POST", "/v1/orders"),
        ("DELETE", "/v1/orders/x"),
        ("GET", "/v1/positions"),
        ("POST", "/v1/trading/halt"),
        ("GET", "/v1/events"),
        ("GET", "/v1/dlq"),
        ("POST", "/v1/dlq/1/retry"),
        ("GET", "/v1/breakers"),
        ("GET", "/v1/events/stream"),
        ("GET", "/v1/alerts"),
    ],
)
async def test_protected_routes_when_no_token_then_401_envelope(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    assert_envelope(await client.request(method, path), 401, "unauthorized")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/orders"),
        ("DELETE", "/v1/orders/x"),
        ("POST", "/v1/trading/halt"),
        ("POST", "/v1/trading/resume"),
        ("POST", "/v1/strategies/imbalance/enable"),
        ("POST", "/v1/dlq/1/retry"),
        ("DELETE", "/v1/dlq/1"),
        ("POST", "/v1/emergency-stop"),
        ("POST", "/v1/breakers/CB-1/reset"),
    ],
)
async def test_mutations_when_viewer_then_403(client: httpx.AsyncClient, method: str, path: str) -> None:
    assert_envelope(await client.request(method, path, headers=VIEW, json={}), 403, "forbidden")


@pytest.mark.parametrize("path", ["/health/live", "/metrics", "/", "/openapi.json"])
async def test_open_routes_need_no_token(client: httpx.AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 200


async def test_framework_errors_use_the_envelope(client: httpx.AsyncClient) -> None:
    assert_envelope(await client.get("/nope"), 404, "not_found")
    assert_envelope(await client.put("/v1/status", headers=VIEW), 405, "method_not_allowed")
    assert_envelope(await client.get("/v1/orders?limit=9999", headers=VIEW), 422, "validation_error")
    assert_envelope(await client.get("/v1/dlq/abc/retry", headers=OP), 405)


async def test_order_validation_then_422_with_field_details(client: httpx.AsyncClient) -> None:
    headers = {**OP, "Idempotency-Key": "k"}
    bad = await client.post(
        "/v1/orders", headers=headers, json={"symbol": "BTCUSDT", "side": "HOLD", "type": "LIMIT", "quantity": "-1"}
    )
    unknown_symbol = await client.post(
        "/v1/orders", headers=headers, json={"symbol": "DOGEUSDT", "side": "BUY", "type": "MARKET", "quantity": "1"}
    )
    broken_json = await client.post(
        "/v1/orders", headers={**headers, "Content-Type": "application/json"}, content=b"{not json"
    )

    details = assert_envelope(bad, 422, "validation_error")["details"]
    assert {tuple(item["loc"]) for item in details} == {("body", "side"), ("body", "quantity")}
    assert assert_envelope(unknown_symbol, 422)["details"][0]["loc"] == ["body", "symbol"]
    assert_envelope(broken_json, 400, "invalid_json")


async def test_order_without_idempotency_key_then_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/orders", headers=OP, json={"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "1"}
    )

    assert_envelope(response, 400, "missing_idempotency_key")


async def test_dependencies_down_then_503_with_retry_after(client: httpx.AsyncClient) -> None:
    for response in (
        await client.get("/v1/orders", headers=VIEW),
        await client.get("/v1/book/BTCUSDT", headers=VIEW),
        await client.post("/v1/trading/halt", headers=OP),
        await client.get("/health/ready"),
    ):
        assert_envelope(response, 503)
        assert response.headers["Retry-After"] == "5"


async def test_openapi_lists_request_and_response_models(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()

    schemas = spec["components"]["schemas"]
    assert {"OrderRequest", "OrderResponse", "StatusResponse", "BookResponse", "ErrorEnvelope"} <= set(schemas)
    post = spec["paths"]["/v1/orders"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("OrderRequest")
    assert "Idempotency-Key" in {parameter["name"] for parameter in post["parameters"]}


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"reason": "x"}', None),
        (b'{"reason": "x"}', "application/x-www-form-urlencoded"),
        (b"reason=x", "application/x-www-form-urlencoded"),
    ],
)
async def test_halt_when_body_without_json_content_type_then_read_not_422(
    client: httpx.AsyncClient, content: bytes, content_type: str | None
) -> None:
    headers = {**OP, **({"Content-Type": content_type} if content_type else {})}

    response = await client.post("/v1/trading/halt", headers=headers, content=content)

    # The body was understood; what is left is the missing risk service (no bus here).
    assert_envelope(response, 503, "dependency_unavailable")


async def test_halt_when_body_unknown_field_then_422_and_openapi_documents_the_body(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/v1/trading/halt", headers=OP, json={"reasn": "typo"})
    spec = (await client.get("/openapi.json")).json()

    assert_envelope(response, 422, "validation_error")
    body = spec["paths"]["/v1/trading/halt"]["post"]["requestBody"]
    assert body["required"] is False and "reason" in body["content"]["application/json"]["schema"]["properties"]


async def test_status_when_every_dependency_down_then_still_answers_with_dependencies(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/v1/status", headers=VIEW)

    assert response.status_code == 200, response.text
    assert response.json()["dependencies"] == {"nats": "DOWN", "postgres": "DOWN", "valkey": "DOWN"}


async def test_dlq_bulk_retry_when_nothing_selected_then_422(client: httpx.AsyncClient) -> None:
    assert_envelope(await client.post("/v1/dlq/retry", headers=OP, json={}), 422, "validation_error")
    assert_envelope(await client.post("/v1/dlq/retry", headers=VIEW, json={"all": True}), 403, "forbidden")


async def test_status_when_heartbeat_goes_quiet_then_component_down_by_the_gateway_clock() -> None:
    settings = Settings(admin_token="a", operator_token="o", viewer_token="v")
    ctx = ServiceContext(component="gateway", settings=settings, log=get_logger("gateway"), bus=Bus("gateway"))
    clock = ManualClock(1_000 * NS_PER_S)
    gateway = Gateway(ctx, clock=clock)
    gateway.heard(
        Heartbeat(
            component="risk",
            pid=7,
            state=ComponentState.READY,
            started_ns=clock.now,
            metrics_url="http://127.0.0.1:9107/metrics",
        ),
        clock.now,
    )
    transport = httpx.ASGITransport(app=create_app(gateway))

    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        clock.advance_ms(250)
        fresh = (await http.get("/v1/status", headers=VIEW)).json()["components"]["risk"]
        clock.advance(settings.heartbeat_timeout_s)
        quiet = (await http.get("/v1/status", headers=VIEW)).json()["components"]["risk"]
        # The supervisor starts risk again: another process under the same name is one restart.
        restarted_ns = clock.now
        gateway.heard(
            Heartbeat(component="risk", pid=8, state=ComponentState.READY, started_ns=restarted_ns), clock.now
        )
        again = (await http.get("/v1/status", headers=VIEW)).json()["components"]["risk"]

    assert fresh == {
        "state": "READY",
        "pid": 7,
        "last_heartbeat_age_ms": 250,
        "metrics_url": "http://127.0.0.1:9107/metrics",
        "restarts": 0,
        "last_restart_ns": None,
        "started_ns": 1_000 * NS_PER_S,
        "restarts_since_ns": 1_000 * NS_PER_S,
    }
    assert quiet["state"] == "DOWN" and quiet["last_heartbeat_age_ms"] == 250 + settings.heartbeat_timeout_s * 1000
    assert again["pid"] == 8 and again["state"] == "READY"
    assert again["restarts"] == 1 and again["last_restart_ns"] == restarted_ns and again["started_ns"] == restarted_ns


async def test_openapi_when_read_by_a_client_then_every_reference_resolves_and_errors_are_json(
    client: httpx.AsyncClient,
) -> None:
    spec = (await client.get("/openapi.json")).json()

    def references(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return found + [ref for value in node.values() for ref in references(value)]
        if isinstance(node, list):
            return [ref for item in node for ref in references(item)]
        return []

    unresolved = {
        ref
        for ref in references(spec["paths"])
        if not ref.startswith("#/components/schemas/")
        or ref.removeprefix("#/components/schemas/") not in spec["components"]["schemas"]
    }
    errors_not_json = [
        f"{method.upper()} {path} {code}: {sorted(answer.get('content', {}))}"
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        for code, answer in operation.get("responses", {}).items()
        if code[0] in "45" and "content" in answer and set(answer["content"]) != {"application/json"}
    ]

    # A client generator or a fuzzer reads these: a `#/$defs/...` body reference and a JSON error
    # documented as `text/event-stream` were both found by fuzzing the running gateway.
    assert unresolved == set()
    assert errors_not_json == []
    enable = spec["paths"]["/v1/strategies/{name}/enable"]["post"]["requestBody"]["content"]["application/json"]
    assert enable["schema"]["properties"]["mode"]["enum"] == ["live", "paper"]

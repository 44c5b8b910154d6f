"""`/v1/status` `preflight`: the main venue's latest preflight as position published it (KV
`preflight.<venue>`), every check with its name, verdict and message; null before the first."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest_asyncio

from proto import subjects
from proto.kv import PreflightCheckValue, PreflightValue, encode_value
from tests.unit import test_gateway_contracts as contracts
from tests.unit.test_gateway_contracts import VIEW, PeerBus


@pytest_asyncio.fixture(name="peer")
async def peer_fixture() -> PeerBus:
    return PeerBus()


@pytest_asyncio.fixture(name="client")
async def client_fixture(peer: PeerBus) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway over the in-memory bus, as its contract tests build it."""
    async for http in contracts.client.__wrapped__(peer):  # type: ignore[attr-defined]
        yield http


FAILED = PreflightValue(
    venue="binance-usdm",
    ok=False,
    profile="custom",
    trigger="reconnect",
    ts_ns=7,
    checks=[
        PreflightCheckValue(name="server_time", ok=True, message="local clock within 3 ms of the venue's"),
        PreflightCheckValue(name="position_mode", ok=False, message="hedge mode: dualSidePosition=false"),
    ],
)


async def test_status_when_preflight_published_then_each_check_shown(peer: PeerBus, client: httpx.AsyncClient) -> None:
    peer.kv[subjects.key_preflight("binance-usdm")] = encode_value(FAILED)
    body = (await client.get("/v1/status", headers=VIEW)).json()
    assert body["preflight"]["ok"] is False and body["preflight"]["trigger"] == "reconnect"
    assert [(c["name"], c["ok"]) for c in body["preflight"]["checks"]] == [
        ("server_time", True),
        ("position_mode", False),
    ]
    assert "dualSidePosition=false" in body["preflight"]["checks"][1]["message"]


async def test_status_when_no_preflight_or_unreadable_then_null_not_500(
    peer: PeerBus, client: httpx.AsyncClient
) -> None:
    response = await client.get("/v1/status", headers=VIEW)
    assert response.status_code == 200 and response.json()["preflight"] is None
    peer.kv[subjects.key_preflight("binance-usdm")] = b"{not json"
    response = await client.get("/v1/status", headers=VIEW)
    assert response.status_code == 200 and response.json()["preflight"] is None

"""The operator's view of one running `bulwark up` (entrypoints/harness/system.py), shared by the e2e helpers.

The gateway's REST API with the admin token and the venue simulator's `/_sim/*` endpoints, over
HTTP only, exactly as an operator and a chaos script reach them. tests/e2e/md_system.py and
tests/e2e/risk_system.py extend `SystemApi` with what their tests observe.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import httpx

from entrypoints.harness.system import RunningSystem
from tests.support.polling import eventually

ORDER_DECIDED_TIMEOUT_S = 30.0


class SystemApi:
    """The gateway (admin token) and the venue simulator of one running system."""

    def __init__(self, system: RunningSystem, gateway: httpx.AsyncClient, venue: httpx.AsyncClient) -> None:
        self.system = system
        self.gateway = gateway
        self.venue = venue

    # ------------------------------------------------------------------ gateway

    async def status(self) -> dict[str, Any]:
        response = await self.gateway.get("/v1/status")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    async def events(self, types: str, since_ns: int, **filters: str) -> list[dict[str, Any]]:
        """Audited events of `types` at or after `since_ns`, oldest first (every page)."""
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"type": types, "since_ns": since_ns, "limit": 500, **filters}
            if cursor:
                params["cursor"] = cursor
            response = await self.gateway.get("/v1/events", params=params)
            response.raise_for_status()
            body = response.json()
            found.extend(body["events"])
            cursor = body.get("next_cursor")
            if not cursor:
                break
        return sorted(found, key=lambda event: (event["ts_event_ns"], event["id"]))

    async def alerts(self) -> list[dict[str, Any]]:
        """The alerts open now."""
        response = await self.gateway.get("/v1/alerts")
        response.raise_for_status()
        found: list[dict[str, Any]] = response.json()["alerts"]
        return found

    async def alert_keys(self, since_ns: int) -> set[str]:
        """Keys of every alert raised at/after `since_ns` (open or already resolved)."""
        return {e["payload"]["key"] for e in await self.events("AlertRaised", since_ns)}

    async def wait_alert(self, since_ns: int, key: str, timeout_s: float = 20.0) -> None:
        """`key` raised at/after `since_ns`, or still open (an alert is raised once while its
        condition holds: an earlier fault of the same kind may have raised it already)."""

        async def raised() -> bool:
            return key in await self.alert_keys(since_ns) or key in await self.open_alert_keys()

        async def failure() -> str:
            return f"alert {key} not raised; raised: {sorted(await self.alert_keys(since_ns))}"

        await eventually(raised, timeout_s, failure)

    async def open_alert_keys(self) -> set[str]:
        return {alert["key"] for alert in await self.alerts()}

    async def control(self, path: str, reason: str | None = "e2e") -> httpx.Response:
        """An operator command (`/v1/trading/halt`, `/v1/trading/resume`, ...) with a reason."""
        return await self.gateway.post(path, json={} if reason is None else {"reason": reason})

    async def post_order(self, body: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        """`POST /v1/orders`; the gateway's answer (202 with PENDING_SUBMISSION when it could not
        wait for risk's decision)."""
        response = await self.gateway.post("/v1/orders", json=body, headers={"Idempotency-Key": idempotency_key})
        assert response.status_code in (200, 201, 202), response.text
        answer: dict[str, Any] = response.json()
        return answer

    async def decided(self, answer: dict[str, Any]) -> dict[str, Any]:
        """The order of a `post_order` answer once risk decided it: the answer itself, or for a
        PENDING_SUBMISSION the order as soon as it is in the `orders` projection."""
        if answer["status"] != "PENDING_SUBMISSION":
            return answer
        order_id = answer["order_id"]

        async def projected() -> dict[str, Any] | None:
            found = await self.gateway.get(f"/v1/orders/{order_id}")
            return dict(found.json()) if found.status_code == 200 else None

        decided: dict[str, Any] = await eventually(projected, ORDER_DECIDED_TIMEOUT_S)
        return decided

    # ------------------------------------------------------------------ simulator

    async def post_fault(self, spec: dict[str, Any]) -> str:
        """Inject a fault (`POST /_sim/faults`); its id."""
        response = await self.venue.post("/_sim/faults", json=spec)
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    async def clear_faults(self) -> None:
        (await self.venue.delete("/_sim/faults")).raise_for_status()


A = TypeVar("A", bound=SystemApi)


def connect(system: RunningSystem, api_type: type[A]) -> AbstractAsyncContextManager[A]:
    """An `api_type` on HTTP clients to the system's gateway and simulator, closed on exit."""

    @asynccontextmanager
    async def clients() -> AsyncIterator[A]:
        headers = {"Authorization": f"Bearer {system.admin_token}"}
        async with (
            httpx.AsyncClient(base_url=system.gateway, headers=headers, timeout=20.0) as gateway,
            httpx.AsyncClient(base_url=system.venue, timeout=10.0) as venue,
        ):
            yield api_type(system, gateway, venue)

    return clients()

"""The dashboard's HTTP side: the page, its vendored assets (offline, licences kept) and the session
answer that decides whether the page shows controls."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from importlib import resources

import httpx
import pytest
import pytest_asyncio

from libs.bus import Bus
from libs.logging import get_logger
from libs.runtime.service import ServiceContext
from libs.settings import Settings
from services.gateway.app import create_app
from services.gateway.context import Gateway
from services.gateway.routes.dashboard import ASSETS


@pytest_asyncio.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(admin_token="a", operator_token="o", viewer_token="v", api_tokens="alice:operator:alice-token")
    ctx = ServiceContext(component="gateway", settings=settings, log=get_logger("gateway"), bus=Bus("gateway"))
    app = create_app(Gateway(ctx))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as http:
        yield http


async def test_page_when_loaded_then_every_asset_it_names_is_served_from_the_gateway(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    referenced = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert referenced, page.text[:500]
    for url in referenced:
        if url.startswith("data:"):
            continue  # inline (the empty icon): nothing to fetch
        assert url.startswith("/dashboard/assets/"), f"{url}: the page must work offline, no outside URL"
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert asset.headers["content-type"].startswith(("text/javascript", "text/css")), url


async def test_page_when_served_then_only_its_own_scripts_run_and_no_site_may_frame_it(
    client: httpx.AsyncClient,
) -> None:
    headers = (await client.get("/")).headers
    policy = headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert headers["x-frame-options"] == "DENY"
    assert (await client.get("/dashboard/assets/app.js")).headers["x-content-type-options"] == "nosniff"


async def test_modules_when_imported_then_every_relative_import_exists(client: httpx.AsyncClient) -> None:
    for name, (content, _) in ASSETS.items():
        if not name.endswith(".js"):
            continue
        folder = name.rpartition("/")[0]
        for target in re.findall(rb'from "(\./[^"]+)"', content):
            path = f"{folder}/{target.decode()[2:]}" if folder else target.decode()[2:]
            assert (await client.get(f"/dashboard/assets/{path}")).status_code == 200, (name, target)
        # Offline: no module loads anything from another host.
        assert not re.search(rb'(?:from|import)\s*\(?\s*"(?:https?:)?//', content), name


def test_vendored_libraries_when_shipped_then_keep_their_licence() -> None:
    vendor = resources.files("services.gateway") / "dashboard_static" / "vendor"
    for library in vendor.iterdir():
        assert (library / "LICENSE").is_file(), library.name
        assert f"vendor/{library.name}/LICENSE" in ASSETS


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/assets/../routes/dashboard.py",
        "/dashboard/assets/%2e%2e/auth.py",
        "/dashboard/assets/nope.js",
        "/dashboard/assets/vendor/uplot/package.json/x",
        "/dashboard/assets/",
    ],
)
async def test_asset_when_not_a_dashboard_file_then_404(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("token", "name", "role", "can_act"),
    [
        ("v", "viewer", "viewer", False),
        ("o", "operator", "operator", True),
        ("a", "admin", "admin", True),
        ("alice-token", "alice", "operator", True),
    ],
)
async def test_session_when_token_given_then_names_role_and_whether_it_may_act(
    client: httpx.AsyncClient, token: str, name: str, role: str, can_act: bool
) -> None:
    response = await client.get("/dashboard/session", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.json() == {"name": name, "role": role, "can_act": can_act}


async def test_session_when_token_unknown_or_missing_then_401(client: httpx.AsyncClient) -> None:
    assert (await client.get("/dashboard/session")).status_code == 401
    assert (await client.get("/dashboard/session", headers={"Authorization": "Bearer nope"})).status_code == 401

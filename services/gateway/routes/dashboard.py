"""The operator dashboard: the page at `/`, its static assets under `/dashboard/assets/` and
`/dashboard/session` (who a token is, so the page shows controls only to those who may use them).

The page is plain HTML with ES modules and vendored libraries (`dashboard_static/`, licences kept
beside them): nothing is built at run time and nothing is fetched from outside, so it works on a
machine without internet. The assets are read once at import; only files that exist in the package
are served, so a crafted path can never reach anything else.
"""

from __future__ import annotations

from importlib import resources
from importlib.abc import Traversable
from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel

from services.gateway.api_models import ERROR_RESPONSES
from services.gateway.auth import Principal, Role
from services.gateway.dependencies import VIEWER
from services.gateway.errors import ApiError

router = APIRouter()

PACKAGE = resources.files("services.gateway")
DASHBOARD_HTML = (PACKAGE / "dashboard.html").read_text()
ASSET_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    "LICENSE": "text/plain; charset=utf-8",
}
"""What may be served, by file suffix (or name), and its content type."""
ASSET_CACHE = "no-cache"
"""Revalidate every time: after an upgrade the page must never mix old and new modules."""
PAGE_HEADERS = {
    "Cache-Control": ASSET_CACHE,
    # Only this gateway's own modules run and are called, and no other site may frame the page
    # (a framed page could be tricked into a halt or a cancel by a click).
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
ASSET_HEADERS = {"Cache-Control": ASSET_CACHE, "X-Content-Type-Options": "nosniff"}


def _content_type(name: str) -> str | None:
    if name in ASSET_TYPES:
        return ASSET_TYPES[name]
    suffix = name[name.rfind(".") :] if "." in name else ""
    return ASSET_TYPES.get(suffix)


def load_assets(root: Traversable) -> dict[str, tuple[bytes, str]]:
    """Every servable file under `root`: relative path -> (content, content type)."""
    found: dict[str, tuple[bytes, str]] = {}

    def walk(folder: Traversable, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
                continue
            content_type = _content_type(entry.name)
            if content_type is not None:
                found[f"{prefix}{entry.name}"] = (entry.read_bytes(), content_type)

    walk(root, "")
    return found


ASSETS = load_assets(PACKAGE / "dashboard_static")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def dashboard() -> HTMLResponse:
    return HTMLResponse(DASHBOARD_HTML, headers=PAGE_HEADERS)


@router.get("/dashboard/assets/{asset:path}", include_in_schema=False)
async def asset(asset: Annotated[str, Path(max_length=200)]) -> Response:
    """A static file of the dashboard (its modules, styles and vendored libraries)."""
    found = ASSETS.get(asset)
    if found is None:
        raise ApiError(404, "not_found", f"no dashboard asset {asset}")
    content, content_type = found
    return Response(content, media_type=content_type, headers=ASSET_HEADERS)


class SessionView(BaseModel):
    """Who a bearer token is."""

    name: str
    """The name actions are recorded under (the role's name for a role token)."""
    role: str
    can_act: bool
    """Operator or above: may halt, resume, cancel, reset, retry (viewer: read only)."""


@router.get("/dashboard/session", response_model=SessionView, responses=ERROR_RESPONSES, tags=["status"])
async def session(who: Principal = VIEWER) -> dict[str, Any]:
    """Who the bearer token is (`name`, `role`) and whether it may act (`can_act`: operator or above).

    The dashboard asks once at sign-in: a viewer gets a read-only page. The routes check the role
    again on every action, so this only decides what the page shows.
    """
    return {"name": who.name, "role": who.role.label, "can_act": who.role >= Role.OPERATOR}

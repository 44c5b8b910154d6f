"""How a command outside the system reaches a running one: the endpoints file `bulwark up` writes into
its data folder, and the gateway's REST API with a bearer token."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ENDPOINTS_FILE = "endpoints.json"
"""Written by `bulwark up` into its data folder: the URLs of the gateway, the venue and the stores."""
DEFAULT_GATEWAY = "http://127.0.0.1:8000"


def fetch_json(url: str, token: str, timeout_s: float = 5.0) -> Any:
    """GET `url` with the bearer `token` and decode its JSON body (raises on a non-2xx answer)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())


def running_endpoints(data_dir: Path) -> dict[str, str]:
    """The URLs `bulwark up` wrote for `data_dir`, or {} when it never ran there."""
    try:
        found = json.loads((data_dir / ENDPOINTS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {str(key): str(value) for key, value in found.items()} if isinstance(found, dict) else {}


def gateway_url(given: str | None, data_dir: Path, environ: Mapping[str, str]) -> str:
    """`--gateway`, else `BULWARK_GATEWAY_URL`, else what `bulwark up` wrote for `data_dir`, else the default."""
    url = given or environ.get("BULWARK_GATEWAY_URL") or running_endpoints(data_dir).get("gateway") or DEFAULT_GATEWAY
    return url.rstrip("/")

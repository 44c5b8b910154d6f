"""`bulwark preflight` finds the running system the way every operator verb does: `--gateway`,
`BULWARK_GATEWAY_URL`, else the endpoints `bulwark up` wrote into the data dir (it used to try
port 8000 whatever the data dir said)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from entrypoints import cli
from entrypoints.operator_api import ENDPOINTS_FILE

STATUS = {
    "preflight": {
        "venue": "binance-usdm",
        "ok": False,
        "profile": "custom",
        "trigger": "reconnect",
        "checks": [{"name": "position_mode", "ok": False, "message": "hedge mode: set one-way"}],
    }
}


@pytest.fixture
def gateway() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path == "/v1/status" and self.headers.get("Authorization") == "Bearer op-token"
            body = json.dumps(STATUS if ok else {"error": "no"}).encode()
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_preflight_when_data_dir_names_the_gateway_then_its_verdict_and_exit_1(
    tmp_path: Path, gateway: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BULWARK_GATEWAY_URL", raising=False)
    for name in ("BULWARK_TOKEN", "BULWARK_OPERATOR_TOKEN", "BULWARK_VIEWER_TOKEN", "BULWARK_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / ENDPOINTS_FILE).write_text(json.dumps({"gateway": gateway}))
    (tmp_path / "credentials.json").write_text(
        json.dumps({"operator_token": "op-token", "viewer_token": "op-token", "admin_token": "op-token"})
    )

    code = cli.main(["preflight", "--json", "--data-dir", str(tmp_path)])

    shown = json.loads(capsys.readouterr().out)
    assert code == 1  # a failed check: exit 0 only when every check passes
    assert shown["ok"] is False and [check["name"] for check in shown["checks"]] == ["position_mode"]

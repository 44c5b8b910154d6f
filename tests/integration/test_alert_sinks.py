"""The alert sinks (SPEC §9) against a real local HTTP server standing in for Slack, PagerDuty,
Telegram's Bot API and a generic webhook: the payloads each receives, one delivery per open alert,
one resolution (Telegram's as a reply to the message that raised it), the runbook link in every
payload, the generic webhook's HMAC signature, and no secret in any log line, sinks failing or not."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from entrypoints import infra as infra_commands
from libs.bus import Delivery
from libs.logging import configure, get_logger
from libs.runtime.service import ServiceContext
from libs.settings import Settings
from proto import subjects
from proto.enums import AlertSeverity
from proto.messages import AlertRaised, AlertResolved
from services.watchdog import adapters
from services.watchdog.handlers import AlertDispatcher
from tests.support.http_server import LocalHttpServer

TELEGRAM_TOKEN = "123456:TELEGRAM-SECRET-TOKEN"
WEBHOOK_SECRET = "webhook-hmac-secret"
ROUTING_KEY = "pagerduty-routing-secret"
RUNBOOKS = "https://runbooks.example/bulwark/docs/runbooks"


class SinkServer:
    """A real aiohttp server recording what each sink receives (raw body and headers)."""

    def __init__(self, telegram_status: int = 200) -> None:
        self.received: dict[str, list[tuple[dict[str, Any], bytes, dict[str, str]]]] = {}
        self.telegram_status = telegram_status
        self.port = 0
        self._next_message_id = 700

    def bodies(self, sink: str) -> list[dict[str, Any]]:
        return [body for body, _, _ in self.received.get(sink, [])]

    def app(self) -> web.Application:
        """The routes of every sink: Telegram's Bot API by token, the others by name."""

        async def record(request: web.Request, sink: str) -> tuple[dict[str, Any], bytes]:
            raw = await request.read()
            body = json.loads(raw)
            self.received.setdefault(sink, []).append((body, raw, dict(request.headers)))
            return body, raw

        async def hook(request: web.Request) -> web.Response:
            await record(request, request.match_info["name"])
            return web.Response(text="ok")

        async def telegram(request: web.Request) -> web.Response:
            sink = "telegram" if request.match_info["token"] == TELEGRAM_TOKEN else "telegram-wrong-token"
            await record(request, sink)
            if self.telegram_status != 200:
                return web.json_response({"ok": False, "description": "Bad Request"}, status=self.telegram_status)
            self._next_message_id += 1
            return web.json_response({"ok": True, "result": {"message_id": self._next_message_id}})

        app = web.Application()
        app.router.add_post("/bot{token}/sendMessage", telegram)
        app.router.add_post("/{name}", hook)
        return app


@pytest.fixture
async def server() -> AsyncIterator[SinkServer]:
    sinks = SinkServer()
    async with LocalHttpServer(sinks.app()) as http:
        sinks.port = http.port
        yield sinks


@pytest.fixture
def log_lines() -> AsyncIterator[io.StringIO]:
    stream = io.StringIO()
    configure("DEBUG", stream)
    try:
        yield stream  # type: ignore[misc]
    finally:
        configure("INFO", None)


def settings_for(base: str, telegram_api: str | None = None) -> Settings:
    return Settings(
        alert_slack_webhook_url=f"{base}/slack",
        alert_pagerduty_url=f"{base}/pagerduty",
        alert_pagerduty_routing_key=ROUTING_KEY,
        alert_pagerduty_min_severity="P1",
        alert_telegram_bot_token=TELEGRAM_TOKEN,
        alert_telegram_chat_id="-100200300",
        alert_telegram_api_url=telegram_api or base,
        alert_telegram_min_severity="P2",
        alert_webhook_url=f"{base}/webhook",
        alert_webhook_secret=WEBHOOK_SECRET,
        alert_runbook_base_url=RUNBOOKS,
        alert_webhook_timeout_s=2.0,
    )


def dispatcher_for(settings: Settings) -> AlertDispatcher:
    ctx = ServiceContext(
        component=subjects.WATCHDOG,
        settings=settings,
        log=get_logger(subjects.WATCHDOG),
        bus=None,  # type: ignore[arg-type]
    )
    return AlertDispatcher(ctx, adapters.webhook_sinks(settings), timeout_s=settings.alert_webhook_timeout_s)


async def push(dispatcher: AlertDispatcher, *messages: AlertRaised | AlertResolved) -> None:
    for seq, message in enumerate(messages, start=1):
        await dispatcher.handle(message, Delivery(subjects.EVT_ALERT_RAISED, seq, 1, {}))


CLOCK = AlertRaised(
    key="md.clock_offset.binance-usdm",
    severity=AlertSeverity.P1,
    component="market-data",
    title="clock offset 1800 ms against the venue (> 1 s)",
    details={"offset_ms": 1800},
)
MINOR = AlertRaised(key="md.backward_ts.BTCUSDT", severity=AlertSeverity.P3, component="market-data", title="backward")
RESOLVED = AlertResolved(key=CLOCK.key, component="market-data", reason="offset 40 ms")


async def test_sinks_when_an_alert_opens_repeats_and_resolves_then_each_sink_gets_it_once_and_its_resolution(
    server: SinkServer, log_lines: io.StringIO
) -> None:
    dispatcher = dispatcher_for(settings_for(f"http://127.0.0.1:{server.port}"))
    try:
        await push(dispatcher, CLOCK, CLOCK, MINOR, RESOLVED, RESOLVED)
    finally:
        await dispatcher.close()

    runbook = f"{RUNBOOKS}/FM-D3.md"
    # Telegram (P2 and above): the raise, then the resolution as a reply to it; runbook linked.
    telegram = server.bodies("telegram")
    assert [body["chat_id"] for body in telegram] == ["-100200300", "-100200300"]
    assert telegram[0]["parse_mode"] == "HTML"
    assert telegram[0]["text"].startswith("\U0001f534 <b>[P1]</b> market-data: clock offset 1800 ms")
    assert f'<a href="{runbook}">runbook</a>' in telegram[0]["text"]
    assert "key <code>md.clock_offset.binance-usdm</code>" in telegram[0]["text"]
    assert telegram[1]["text"].startswith("\u2705 <b>RESOLVED</b> market-data: clock offset 1800 ms")
    assert "resolution: offset 40 ms" in telegram[1]["text"]
    assert telegram[1]["reply_parameters"]["message_id"] == 701
    assert "telegram-wrong-token" not in server.received
    # Slack (every severity): runbook in the context block; the text line unchanged.
    slack = server.bodies("slack")
    assert [body["text"] for body in slack] == [
        ":red_circle: [P1] market-data: clock offset 1800 ms against the venue (> 1 s)",
        ":information_source: [P3] market-data: backward",
        ":white_check_mark: [RESOLVED] market-data: clock offset 1800 ms against the venue (> 1 s)",
    ]
    assert f"<{runbook}|runbook>" in slack[0]["blocks"][-1]["elements"][0]["text"]
    # PagerDuty (P1 and above): trigger and resolve on the alert key, runbook as a link.
    pagerduty = server.bodies("pagerduty")
    assert [(body["event_action"], body["dedup_key"], body["routing_key"]) for body in pagerduty] == [
        ("trigger", CLOCK.key, ROUTING_KEY),
        ("resolve", CLOCK.key, ROUTING_KEY),
    ]
    assert pagerduty[0]["links"] == [{"href": runbook, "text": "runbook"}]
    assert pagerduty[0]["payload"]["custom_details"] == {"offset_ms": 1800, "runbook_url": runbook}
    # Generic webhook: every alert, firing then resolved, signed over the exact body.
    webhook = server.received["webhook"]
    assert [(body["status"], body["key"], body["severity"]) for body, _, _ in webhook] == [
        ("firing", CLOCK.key, "P1"),
        ("firing", MINOR.key, "P3"),
        ("resolved", CLOCK.key, "P1"),
    ]
    assert webhook[0][0]["runbook_url"] == runbook and webhook[1][0]["runbook_url"] == f"{RUNBOOKS}/FM-D3.md"
    for _, raw, headers in webhook:
        expected = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), raw, hashlib.sha256).hexdigest()
        assert headers["X-Bulwark-Signature"] == expected
    # The log sink saw it all, with the runbook, and never a secret.
    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    notices = [line for line in lines if line.get("event") in ("alert_notice", "alert_resolved_notice")]
    assert [line["event"] for line in notices] == ["alert_notice", "alert_notice", "alert_resolved_notice"]
    assert notices[0]["details"]["runbook_url"] == runbook
    for secret in (TELEGRAM_TOKEN, "TELEGRAM-SECRET-TOKEN", WEBHOOK_SECRET, ROUTING_KEY):
        assert secret not in log_lines.getvalue()


async def test_sinks_when_telegram_refuses_or_is_unreachable_then_logged_without_the_token_and_others_still_get_it(
    server: SinkServer, log_lines: io.StringIO
) -> None:
    server.telegram_status = 400
    refused = dispatcher_for(settings_for(f"http://127.0.0.1:{server.port}"))
    dead_port = infra_commands.free_port("127.0.0.1")
    unreachable = dispatcher_for(
        settings_for(f"http://127.0.0.1:{server.port}", telegram_api=f"http://127.0.0.1:{dead_port}")
    )
    try:
        await push(refused, CLOCK)
        await push(unreachable, CLOCK)
    finally:
        await refused.close()
        await unreachable.close()

    assert len(server.bodies("telegram")) == 1  # the refused one reached the server; the other could not
    assert len(server.bodies("slack")) == 2 and len(server.received["webhook"]) == 2
    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    events = {(line.get("event"), line.get("details", {}).get("sink")) for line in lines}
    assert ("alert_sink_rejected", "telegram") in events
    assert ("alert_sink_failed", "telegram") in events
    for secret in (TELEGRAM_TOKEN, "TELEGRAM-SECRET-TOKEN", WEBHOOK_SECRET, ROUTING_KEY):
        assert secret not in log_lines.getvalue()

"""Pure parts of the alert sinks: Telegram's HTML (escaped, bounded, threaded), the generic
webhook's JSON and signature, and which sinks the settings switch on."""

from __future__ import annotations

import hashlib
import hmac

from libs.settings import Settings
from proto.enums import AlertSeverity
from services.watchdog.adapters import TelegramThreads, webhook_sinks
from services.watchdog.alerts import AlertNotice
from services.watchdog.notifications import (
    TELEGRAM_MAX_CHARS,
    pagerduty_payload,
    slack_payload,
    telegram_payload,
    webhook_payload,
    webhook_signature,
)


def notice(**changes: object) -> AlertNotice:
    fields: dict[str, object] = {
        "key": "md.corruption.binance-usdm",
        "severity": AlertSeverity.P1,
        "component": "market-data",
        "title": "market stream: 6.1% of recent frames corrupt",
        "details": {},
        "runbook_url": "https://runbooks.example/FM-D4.md",
        **changes,
    }
    return AlertNotice(**fields)  # type: ignore[arg-type]


def test_telegram_when_a_title_carries_markup_then_escaped_and_the_text_bounded() -> None:
    hostile = notice(title="<b>pwned</b> & <a href='x'>", details={"raw": "<script>" * 2000})

    body = telegram_payload(hostile, "42")

    assert "&lt;b&gt;pwned&lt;/b&gt; &amp; &lt;a href=&#x27;x&#x27;&gt;" in body["text"]
    assert "<script>" not in body["text"]
    assert len(body["text"]) <= TELEGRAM_MAX_CHARS
    assert body["parse_mode"] == "HTML" and body["chat_id"] == "42" and "reply_parameters" not in body


def test_telegram_when_details_are_huge_then_whole_lines_dropped_and_the_html_stays_well_formed() -> None:
    body = telegram_payload(notice(details={f"d{index}": "&" * 1000 for index in range(10)}), "42")
    text = body["text"]

    assert len(text) <= TELEGRAM_MAX_CHARS
    assert text.endswith(
        'key <code>md.corruption.binance-usdm</code>\n<a href="https://runbooks.example/FM-D4.md">runbook</a>'
    )
    assert all(line.endswith("&amp;") for line in text.splitlines()[1:-2])  # no entity cut in half
    assert 0 < len(text.splitlines()) - 3 < 10


def test_telegram_when_the_runbook_is_a_checkout_path_then_shown_as_code_not_a_link() -> None:
    body = telegram_payload(notice(runbook_url="docs/runbooks/FM-D4.md"), "42")

    assert "runbook <code>docs/runbooks/FM-D4.md</code>" in body["text"] and "<a href" not in body["text"]


def test_telegram_threads_when_resolved_then_replies_to_the_raising_message_and_forgets_it() -> None:
    threads = TelegramThreads("42", limit=2)
    for index, key in enumerate(("a", "b", "c")):
        threads.remember(notice(key=key), b'{"ok":true,"result":{"message_id":%d}}' % (10 + index))
    threads.remember(notice(key="d"), b"not json")

    resolved_c = threads.build(notice(key="c", resolved=True))
    resolved_a = threads.build(notice(key="a", resolved=True))
    threads.remember(notice(key="c", resolved=True), b"{}")

    assert resolved_c["reply_parameters"]["message_id"] == 12
    assert "reply_parameters" not in resolved_a  # the oldest was forgotten (bounded)
    assert threads.message_ids == {"b": 11}


def test_webhook_when_raised_and_resolved_then_status_and_every_field() -> None:
    firing = webhook_payload(notice(details={"rate": "6.1%"}, ts_ns=5))
    resolved = webhook_payload(notice(resolved=True))

    assert firing == {
        "version": 1,
        "source": "bulwark",
        "status": "firing",
        "key": "md.corruption.binance-usdm",
        "severity": "P1",
        "component": "market-data",
        "title": "market stream: 6.1% of recent frames corrupt",
        "details": {"rate": "6.1%"},
        "runbook_url": "https://runbooks.example/FM-D4.md",
        "ts_ns": 5,
    }
    assert resolved["status"] == "resolved"
    body = b'{"key":"k"}'
    assert webhook_signature("s", body) == "sha256=" + hmac.new(b"s", body, hashlib.sha256).hexdigest()


def test_slack_and_pagerduty_when_the_runbook_is_a_url_then_linked() -> None:
    slack = slack_payload(notice())
    page = pagerduty_payload(notice(), "rk")

    assert slack["blocks"][-1]["elements"][0]["text"].endswith("<https://runbooks.example/FM-D4.md|runbook>")
    assert page["links"] == [{"href": "https://runbooks.example/FM-D4.md", "text": "runbook"}]
    assert "links" not in pagerduty_payload(notice(runbook_url="docs/runbooks/FM-D4.md"), "rk")


def test_webhook_sinks_when_configured_then_each_sink_with_its_minimum_severity() -> None:
    none = webhook_sinks(Settings())
    telegram_without_chat = webhook_sinks(Settings(alert_telegram_bot_token="t"))
    every = webhook_sinks(
        Settings(
            alert_slack_webhook_url="http://h/s",
            alert_pagerduty_url="http://h/p",
            alert_telegram_bot_token="123:abc",
            alert_telegram_chat_id="42",
            alert_telegram_api_url="http://h/tg/",
            alert_telegram_min_severity="p1",
            alert_webhook_url="http://h/w",
        )
    )

    assert none == [] and telegram_without_chat == []
    assert [(sink.name, sink.min_severity) for sink in every] == [
        ("slack", "P3"),
        ("pagerduty", "P1"),
        ("telegram", "P1"),
        ("webhook", "P3"),
    ]
    assert every[2].url == "http://h/tg/bot123:abc/sendMessage"
    webhook = every[3]
    assert webhook.sign is not None and webhook.sign(b"{}") == {}  # no secret: unsigned

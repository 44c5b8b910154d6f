"""Alert payloads of the webhook sinks (SPEC §9): Slack incoming-webhook messages, PagerDuty Events
API v2 events, Telegram Bot API `sendMessage` bodies and the generic JSON webhook (with its HMAC
signature). Every payload names the alert's runbook; a resolution says so. Pure formatting, no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import html
from typing import Any

from services.watchdog.alerts import AlertNotice

PAGERDUTY_SEVERITY: dict[str, str] = {"P0": "critical", "P1": "error", "P2": "warning", "P3": "info"}
SLACK_EMOJI: dict[str, str] = {
    "P0": ":rotating_light:",
    "P1": ":red_circle:",
    "P2": ":warning:",
    "P3": ":information_source:",
}
TELEGRAM_EMOJI: dict[str, str] = {"P0": "\U0001f6a8", "P1": "\U0001f534", "P2": "\u26a0\ufe0f", "P3": "\u2139\ufe0f"}
TELEGRAM_RESOLVED = "\u2705"
TELEGRAM_MAX_CHARS = 4096
"""Telegram refuses a longer message text."""
WEBHOOK_SCHEMA_VERSION = 1
SIGNATURE_HEADER = "X-Bulwark-Signature"


def _is_link(url: str) -> bool:
    """True for a URL a chat client can open (the default runbook base is a checkout path)."""
    return url.startswith(("https://", "http://"))


def slack_payload(notice: AlertNotice) -> dict[str, Any]:
    """A Slack incoming-webhook message."""
    state = "RESOLVED" if notice.resolved else str(notice.severity)
    emoji = ":white_check_mark:" if notice.resolved else SLACK_EMOJI.get(str(notice.severity), "")
    text = f"{emoji} [{state}] {notice.component}: {notice.title}".strip()
    fields = [{"type": "mrkdwn", "text": f"*{name}*\n{value}"} for name, value in sorted(notice.details.items())][:10]
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
    if fields:
        blocks.append({"type": "section", "fields": fields})
    context = f"bulwark alert `{notice.key}`"
    if notice.runbook_url:
        runbook = (
            f"<{notice.runbook_url}|runbook>" if _is_link(notice.runbook_url) else f"runbook `{notice.runbook_url}`"
        )
        context = f"{context} · {runbook}"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return {"text": text, "blocks": blocks}


def pagerduty_payload(notice: AlertNotice, routing_key: str) -> dict[str, Any]:
    """A PagerDuty Events API v2 event; `dedup_key` is the alert key, so a resolve closes the incident."""
    if notice.resolved:
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": notice.key}
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": notice.key,
        "payload": {
            "summary": f"[{notice.severity}] {notice.component}: {notice.title}"[:1024],
            "severity": PAGERDUTY_SEVERITY.get(str(notice.severity), "warning"),
            "source": "bulwark",
            "component": notice.component,
            "custom_details": {**notice.details, "runbook_url": notice.runbook_url},
        },
    }
    if _is_link(notice.runbook_url):
        event["links"] = [{"href": notice.runbook_url, "text": "runbook"}]
    return event


def telegram_payload(notice: AlertNotice, chat_id: str, reply_to: int | None = None) -> dict[str, Any]:
    """A Telegram Bot API `sendMessage` body (HTML); a resolution replies to the message that raised it.

    Text is cut before it is escaped and whole detail lines are dropped to stay under Telegram's
    4096 characters, so a long alert never becomes malformed HTML (which Telegram would refuse).

    Args:
        notice: the alert or its resolution.
        chat_id: the chat the bot posts to.
        reply_to: Telegram's id of the message that announced the alert, when known.
    """
    subject = f"{_escaped(notice.component, 100)}: {_escaped(notice.title, 500)}"
    if notice.resolved:
        head = f"{TELEGRAM_RESOLVED} <b>RESOLVED</b> {subject}"
    else:
        head = f"{TELEGRAM_EMOJI.get(str(notice.severity), '')} <b>[{notice.severity}]</b> {subject}".strip()
    tail = [f"key <code>{_escaped(notice.key, 200)}</code>"]
    if notice.runbook_url:
        url = _escaped(notice.runbook_url, 500)
        tail.append(f'<a href="{url}">runbook</a>' if _is_link(notice.runbook_url) else f"runbook <code>{url}</code>")
    details = [
        f"{_escaped(str(name), 50)}: {_escaped(str(value), 300)}" for name, value in sorted(notice.details.items())
    ]
    lines = [head, *details[:10], *tail]
    while len("\n".join(lines)) > TELEGRAM_MAX_CHARS and len(lines) > 1 + len(tail):
        del lines[-1 - len(tail)]
    body: dict[str, Any] = {
        "chat_id": chat_id,
        "text": "\n".join(lines),
        "parse_mode": "HTML",
        "disable_web_page_preview": True,
    }
    if reply_to is not None:
        body["reply_parameters"] = {"message_id": reply_to, "allow_sending_without_reply": True}
    return body


def _escaped(text: str, limit: int) -> str:
    return html.escape(text[:limit], quote=True)


def webhook_payload(notice: AlertNotice) -> dict[str, Any]:
    """The generic webhook's JSON: every field of the alert, `status` `firing` or `resolved`."""
    return {
        "version": WEBHOOK_SCHEMA_VERSION,
        "source": "bulwark",
        "status": "resolved" if notice.resolved else "firing",
        "key": notice.key,
        "severity": str(notice.severity),
        "component": notice.component,
        "title": notice.title,
        "details": notice.details,
        "runbook_url": notice.runbook_url,
        "ts_ns": notice.ts_ns,
    }


def webhook_signature(secret: str, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of the exact body>`, the value of `X-Bulwark-Signature`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()

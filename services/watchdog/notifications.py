"""Alert payloads of the webhook sinks (SPEC §9): Slack incoming-webhook messages and PagerDuty
Events API v2 events. Pure formatting, no I/O.
"""

from __future__ import annotations

from typing import Any

from services.watchdog.alerts import AlertNotice

PAGERDUTY_SEVERITY: dict[str, str] = {"P0": "critical", "P1": "error", "P2": "warning", "P3": "info"}
SLACK_EMOJI: dict[str, str] = {
    "P0": ":rotating_light:",
    "P1": ":red_circle:",
    "P2": ":warning:",
    "P3": ":information_source:",
}


def slack_payload(notice: AlertNotice) -> dict[str, Any]:
    """A Slack incoming-webhook message."""
    state = "RESOLVED" if notice.resolved else str(notice.severity)
    emoji = ":white_check_mark:" if notice.resolved else SLACK_EMOJI.get(str(notice.severity), "")
    text = f"{emoji} [{state}] {notice.component}: {notice.title}".strip()
    fields = [{"type": "mrkdwn", "text": f"*{name}*\n{value}"} for name, value in sorted(notice.details.items())][:10]
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
    if fields:
        blocks.append({"type": "section", "fields": fields})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"bulwark alert `{notice.key}`"}]})
    return {"text": text, "blocks": blocks}


def pagerduty_payload(notice: AlertNotice, routing_key: str) -> dict[str, Any]:
    """A PagerDuty Events API v2 event; `dedup_key` is the alert key, so a resolve closes the incident."""
    if notice.resolved:
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": notice.key}
    return {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": notice.key,
        "payload": {
            "summary": f"[{notice.severity}] {notice.component}: {notice.title}"[:1024],
            "severity": PAGERDUTY_SEVERITY.get(str(notice.severity), "warning"),
            "source": "bulwark",
            "component": notice.component,
            "custom_details": notice.details,
        },
    }

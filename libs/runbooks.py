"""Which runbook answers which alert: the operator page in `docs/runbooks/` for every alert key.

Alert keys are `<kind><separator><subject>` (`component_down:risk`, `md.clock_offset.binance-usdm`,
`breaker.CB-1`); the table below maps each kind, as a glob pattern, to its page: one page per
failure mode and breaker of `docs/FAILURE_MODES.md` (`FM-N1.md`, `CB-1.md`, ...) plus a few for
alerts that belong to no single mode (`degradation-levels.md`, `orders.md`, `venue-preflight.md`,
`component-down.md`). Pure: the gateway, the watchdog and the tests use the same table.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

DEFAULT_RUNBOOK_BASE_URL = "docs/runbooks"
"""Where the pages are when no base URL is configured: their path in the checkout."""
INDEX_PAGE = "README"
"""The index of every runbook; the page of an alert whose kind the table does not know."""

ALERT_RUNBOOKS: tuple[tuple[str, str], ...] = (
    # watchdog: components (a critical component's page where the catalogue has one)
    ("component_down:state-builder", "FM-C1"),
    ("component_down:strategy-*", "FM-C2"),
    ("component_down:gateway", "FM-C8"),
    ("component_down:position*", "FM-C9"),
    ("component_down:*", "component-down"),
    ("component_down_long:*", "component-down"),
    # watchdog: data, links, resources, latency, level, integrity
    ("data_not_valid:*", "FM-D1"),
    ("data_stale_long:*", "FM-D1"),
    ("link:*.market-rest", "FM-N2"),
    ("link:*.orders", "FM-N6"),
    ("link:*", "FM-N1"),
    ("disk_pressure:*", "FM-C4"),
    ("memory_pressure", "FM-C5"),
    ("cpu_pressure", "FM-C5"),
    ("latency:*", "FM-N5"),
    ("degradation:*", "degradation-levels"),
    ("projections-diverged", "FM-C3"),
    ("snapshot-corrupt.*", "FM-C3"),
    # the bus (every service's outbox; risk's fail-closed halt)
    ("bus-lost.*", "FM-C6"),
    ("bus-outbox-overflow.*", "FM-C6"),
    # risk's breakers
    ("breaker.CB-1", "CB-1"),
    ("breaker.CB-2", "CB-2"),
    ("breaker.CB-3*", "CB-3"),
    ("breaker.CB-4", "CB-4"),
    # market-data
    ("md.reconnect_failing.*", "FM-N1"),
    ("md.data_gap.*", "FM-N1"),
    ("md.missed_liquidations.*", "FM-N1"),
    ("md.ws_endpoints_failed.*", "FM-N4"),
    ("md.venue_unreachable.*", "FM-N4"),
    ("md.breaker.*", "FM-N5"),
    ("md.ip_banned.*", "FM-N2"),
    ("md.rate_limited.*", "FM-N2"),
    ("md.clock_offset.*", "FM-D3"),
    ("md.future_ts.*", "FM-D3"),
    ("md.backward_ts.*", "FM-D3"),
    ("md.corruption.*", "FM-D4"),
    ("md.implausible_price.*", "FM-D5"),
    ("md.unconfirmed_jump.*", "FM-D5"),
    # position: the venue, orders, reconciliation and integrity
    ("venue-order-link:*", "FM-N6"),
    ("venue-auth:*", "FM-C10"),
    ("venue-preflight:*", "venue-preflight"),
    ("order-vanished:*", "FM-N7"),
    ("order-rejected:*", "orders"),
    ("invariant-*", "orders"),
    ("protection-stuck:*", "protection-stuck"),
    ("protection-*", "orders"),
    ("reconcile-*", "orders"),
    ("external-order:*", "orders"),
    # strategies
    ("strategy-failed:*", "FM-C2"),
    ("strategy-crashed:*", "FM-C2"),
)
"""(alert key pattern, runbook page without `.md`), first match wins: specific patterns first."""


def runbook_page(key: str) -> str:
    """The runbook page (file name without `.md`) of an alert key; the index when no pattern matches."""
    for pattern, page in ALERT_RUNBOOKS:
        if fnmatchcase(key, pattern):
            return page
    return INDEX_PAGE


def runbook_url(key: str, base_url: str = DEFAULT_RUNBOOK_BASE_URL) -> str:
    """The URL (or checkout path, by default) of the runbook of an alert key.

    Args:
        key: the alert's de-duplication key.
        base_url: where the runbook pages are served (`BULWARK_ALERT_RUNBOOK_BASE_URL`).
    """
    return f"{(base_url or DEFAULT_RUNBOOK_BASE_URL).rstrip('/')}/{runbook_page(key)}.md"

"""Settings from environment variables (`BULWARK_*`), read once at start-up.

Every variable, its default and meaning is listed in `SETTINGS_DOC` (the README table is
generated from the same list, so they cannot drift).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TypeVar

from libs.bounds import check_finite, check_int, check_text

T = TypeVar("T")


class SettingsError(ValueError):
    """A variable holds a value that cannot be used."""


def _doc(default: T, doc: str) -> T:
    """A dataclass field with its documentation attached."""
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class VenueAccount:
    """Where and as whom orders for one venue are sent."""

    name: str
    rest_url: str
    ws_url: str
    api_key: str
    api_secret: str
    rest_alternates: tuple[str, ...] = ()
    ws_alternates: tuple[str, ...] = ()


@dataclass(frozen=True)
class Settings:
    """Runtime configuration of one service process."""

    nats_url: str = _doc("nats://127.0.0.1:4222", "NATS server URL(s), comma separated")
    pg_dsn: str = _doc("postgresql://bulwark@127.0.0.1:5432/bulwark", "Postgres DSN")
    redis_url: str = _doc("redis://127.0.0.1:6379/0", "Valkey/Redis URL for idempotency keys")
    nats_user: str = _doc(
        "", "NATS user of this process, named after its component (docs/security.md); empty: connect without one"
    )
    nats_password: str = _doc("", "password of BULWARK_NATS_USER (never logged)")
    valkey_user: str = _doc("", "Valkey ACL user of this process (docs/security.md); empty: the default user")
    valkey_password: str = _doc("", "password of BULWARK_VALKEY_USER (never logged)")
    venue: str = _doc("binance-usdm", "venue name used in subjects")
    venue_market: str = _doc(
        "usdm",
        "market-data: Binance market of the venue link, usdm or spot (REST paths, streams, book procedure); "
        "spot with the default venue name publishes as binance-spot",
    )
    venue_rest_url: str = _doc("http://127.0.0.1:8100", "venue REST base URL")
    venue_ws_url: str = _doc("ws://127.0.0.1:8100", "venue WebSocket base URL")
    venue_api_key: str = _doc("bulwark-sim-key", "venue API key")
    venue_api_secret: str = _doc("bulwark-sim-secret", "venue API secret (never logged)")
    venue_rest_alternates: tuple[str, ...] = _doc(
        (),
        "market-data and position: alternate venue REST base URLs (backup endpoints), tried when the main one "
        "is unreachable (FM-N3/N4/N6)",
    )
    venue_ws_alternates: tuple[str, ...] = _doc(
        (),
        "market-data and position (user-data stream): alternate venue WebSocket base URLs, tried when the main "
        "one fails (FM-N3/N4/N6)",
    )
    venue_ws_routed: bool = _doc(
        True,
        "market-data and position: the venue routes WebSocket streams by path as Binance USD-M does "
        "(/public depth, /market trades, mark price and liquidations, /private user data); false: one "
        "un-routed connection (an older endpoint); spot never routes",
    )
    venue_profile: str = _doc(
        "sim",
        "which venue the system trades: sim, binance-testnet, binance (mainnet: starts HALTED) or custom; "
        "`bulwark up --venue` sets it with the matching URLs (README: Trading a real venue)",
    )
    paper: bool = _doc(
        False,
        "paper trading: the position service's orders go to a paper simulator that fills them against the "
        "venue's live book; market data stays the venue's; no order reaches the venue (`bulwark up --paper`)",
    )
    venue_rules_required: bool = _doc(
        False,
        "risk: the venue's rules are expected in KV (its position process publishes them from exchangeInfo; "
        "`bulwark up` sets this for every venue profile): until they are, entries are denied with "
        "'venue rules not loaded' and reduce-only orders still go; false: unknown rules leave the venue to judge",
    )
    venue_leverage: str = _doc(
        "", "position preflight: leverage SET per symbol at start, `N` or `SYMBOL=N,...` (`*=N` others); empty: kept"
    )
    venue_margin_type: str = _doc("CROSSED", "position preflight: margin type SET on every symbol, CROSSED or ISOLATED")
    venue_multi_assets: bool = _doc(False, "position preflight: the multi-assets mode the account must be in")
    venue_min_balance: str = _doc("0", "position preflight: least available USDT to trade with (and above zero)")
    backup_venue: str = _doc(
        "",
        "name of a backup venue (another account speaking the same protocol), empty: none; risk sends a new "
        "entry in a flat symbol there while the main venue's order link is down (FM-N6)",
    )
    backup_venue_rest_url: str = _doc("http://127.0.0.1:8101", "backup venue REST base URL")
    backup_venue_ws_url: str = _doc("ws://127.0.0.1:8101", "backup venue WebSocket base URL (user-data stream)")
    backup_venue_api_key: str = _doc("bulwark-sim-key", "backup venue API key")
    backup_venue_api_secret: str = _doc("bulwark-sim-secret", "backup venue API secret (never logged)")
    paper_venue: str = _doc(
        "",
        "name of the paper venue beside the live ones (a paper simulator mirroring the main venue's market, "
        "traded by its own position process), empty: none; risk sends a paper-mode strategy's orders there "
        "(`bulwark up --paper-link`)",
    )
    paper_venue_rest_url: str = _doc("http://127.0.0.1:8102", "paper venue REST base URL")
    paper_venue_ws_url: str = _doc("ws://127.0.0.1:8102", "paper venue WebSocket base URL (user-data stream)")
    paper_venue_api_key: str = _doc("bulwark-paper-key", "paper venue API key (the paper account's)")
    paper_venue_api_secret: str = _doc("bulwark-paper-secret", "paper venue API secret (never logged)")
    position_venue: str = _doc(
        "",
        "position: the venue this process trades, BULWARK_VENUE (empty) or BULWARK_BACKUP_VENUE; one process "
        "per venue, each with its own lease, consumers and snapshots",
    )
    md_breaker_open_s: float = _doc(30.0, "market-data: seconds its venue breaker stays open before a probe (FM-N5)")
    md_clock_check_interval_s: float = _doc(
        10.0, "market-data: period of the clock-offset check against the venue (FM-D3)"
    )
    md_ws_max_age_s: float = _doc(
        82800.0,
        "market-data: age at which the stream connection is replaced make-before-break, before the "
        "venue's 24 h limit closes it (FM-N1; 0 never)",
    )
    md_ws_max_streams: int = _doc(
        1024,
        "market-data: streams on one WebSocket connection (the venue's limit, Binance 1024); more are "
        "spread over several connections",
    )
    venue_breaker_open_s: float = _doc(30.0, "position: seconds the venue breaker stays open before a probe (FM-N5)")
    order_poll_interval_s: float = _doc(1.0, "position: period of queued/unknown order handling and venue checks")
    order_safety_poll_s: float = _doc(
        5.0, "position: period of the live-order poll while the user-data stream is up (safety net)"
    )
    stop_trigger_timeout_s: float = _doc(
        5.0,
        "position: a protective stop or take-profit the venue reports triggered (TRIGGERING, or TRIGGERED "
        "without its MARKET order) longer than this is stuck: alerted, the position closed at market",
    )
    countdown_cancel_s: float = _doc(
        60.0, "position: venue auto-cancel countdown kept armed per symbol with open orders (FM-N8; 0 off)"
    )
    countdown_refresh_s: float = _doc(20.0, "position: re-arm period of the auto-cancel countdown")
    position_lease_ttl_s: float = _doc(
        6.0, "position: single-writer lease TTL; a dead holder is replaced within about this (SPEC §8)"
    )
    position_retain_terminal_s: float = _doc(
        600.0, "position: finished orders stay in memory and snapshots this long (older ones: looked up in Postgres)"
    )
    position_retain_terminal_max: int = _doc(
        2000, "position: at most this many finished orders stay in memory and snapshots (the newest)"
    )
    symbols: tuple[str, ...] = _doc(("BTCUSDT", "ETHUSDT"), "traded symbols, comma separated")
    gateway_host: str = _doc("127.0.0.1", "gateway bind address")
    gateway_port: int = _doc(8000, "gateway port")
    admin_token: str = _doc("", "bearer token of the admin role")
    operator_token: str = _doc("", "bearer token of the operator role")
    viewer_token: str = _doc("", "bearer token of the viewer role")
    api_tokens: str = _doc("", "named bearer tokens `name:role:token` (role viewer/operator/admin), comma separated")
    max_position_qty: str = _doc("1", "risk: max absolute position per symbol (base units)")
    max_order_notional: str = _doc("100000", "risk: max notional of one order (quote units)")
    risk_capital: str = _doc("100000", "risk: trading capital (quote units) the CB-1 loss limits are a share of")
    risk_session_tz_offset_s: int = _doc(
        0, "risk: a CB-1 loss session is one day starting at 00:00 UTC plus this offset"
    )
    risk_cb1_consecutive_losses: int = _doc(
        5, "risk: CB-1 trips after this many losing trades in a row, of any source (at least 1)"
    )
    risk_baseline_win_rate: str = _doc("0.5", "risk: expected win rate of a strategy (CB-3 trips 30 points below it)")
    risk_cb3_trades: int = _doc(20, "risk: closed trades of a strategy CB-3 judges it over (at least 2)")
    risk_funding_normal: str = _doc("0.0001", "risk: normal absolute funding rate (CB-2 trips above 10 times it)")
    risk_latency_baseline_ms: float = _doc(20.0, "risk: normal p99 decision latency (CB-4 trips above 10 times it)")
    risk_pause_s: float = _doc(60.0, "risk: CB-2 pause of new entries before data is re-validated")
    risk_liquid_symbols: tuple[str, ...] = _doc(
        ("BTCUSDT", "ETHUSDT"), "risk: symbols still traded in REDUCED_FUNCTIONALITY, comma separated"
    )
    risk_reduced_min_confidence: str = _doc(
        "0.8", "risk: minimum signal confidence for a strategy entry in REDUCED_FUNCTIONALITY"
    )
    risk_max_orders_per_minute: int = _doc(30, "risk: max new-exposure orders one strategy may get approved per minute")
    risk_monitor_interval_s: float = _doc(1.0, "risk: period of breaker checks (pause expiry, book depth, CPU/memory)")
    strategy_name: str = _doc("cascade-fade", "strategy process: which strategy this instance runs")
    strategy_lease_ttl_s: float = _doc(
        6.0, "strategy: single-writer lease TTL; a standby takes over a dead holder within about this (SPEC §8)"
    )
    strategies: tuple[str, ...] = _doc(("cascade-fade", "trend"), "strategy instances `bulwark up` starts")
    strategy_config: str = _doc(
        "", "TOML file of per-instance strategy parameters (docs/strategies.md); empty: defaults"
    )
    snapshot_interval_s: float = _doc(
        60.0, "state-builder, risk, strategy, watchdog, position: seconds between snapshots of their state (SPEC §8)"
    )
    snapshot_every_events: int = _doc(
        2000,
        "state-builder, risk, strategy, watchdog, position: also snapshot after this many stream messages, "
        "bounding the replay",
    )
    recovery_max_replay: int = _doc(
        20000, "state-builder: longest snapshot tail replayed at start; beyond it books resync from market-data"
    )
    heartbeat_interval_s: float = _doc(1.0, "heartbeat period")
    heartbeat_timeout_s: float = _doc(3.0, "no heartbeat for this long: component down")
    alert_slack_webhook_url: str = _doc("", "alerts: Slack incoming-webhook URL (off when empty)")
    alert_pagerduty_url: str = _doc("", "alerts: PagerDuty Events v2 enqueue URL (off when empty)")
    alert_pagerduty_routing_key: str = _doc("", "alerts: PagerDuty routing key (never logged)")
    alert_pagerduty_min_severity: str = _doc("P1", "alerts: lowest severity paged (P0 highest ... P3 lowest)")
    alert_webhook_timeout_s: float = _doc(5.0, "alerts: timeout of one webhook POST")
    alert_telegram_bot_token: str = _doc("", "alerts: Telegram bot token (off when empty; never logged)")
    alert_telegram_chat_id: str = _doc("", "alerts: Telegram chat the bot posts to")
    alert_telegram_api_url: str = _doc("https://api.telegram.org", "alerts: Telegram Bot API base URL")
    alert_telegram_min_severity: str = _doc("P2", "alerts: lowest severity sent to Telegram")
    alert_webhook_url: str = _doc("", "alerts: generic webhook receiving every alert as JSON (off when empty)")
    alert_webhook_secret: str = _doc(
        "", "alerts: HMAC-SHA256 key signing the generic webhook's body (X-Bulwark-Signature; never logged)"
    )
    alert_runbook_base_url: str = _doc(
        "docs/runbooks", "alerts: where the runbook pages are served; each alert links <base>/<page>.md"
    )
    watchdog_disk_path: str = _doc(".", "watchdog: file system whose usage is checked (FM-C4 90/95/98 %)")
    watchdog_memory_max_pct: float = _doc(90.0, "watchdog: memory use above this turns health YELLOW and alerts")
    watchdog_cpu_max_pct: float = _doc(95.0, "watchdog: CPU use above this for 30 s turns health YELLOW and alerts")
    watchdog_latency_floor_ms: float = _doc(
        250.0, "watchdog: p99 latency is only too high (> 2x baseline) above this floor"
    )
    watchdog_verify_interval_s: float = _doc(
        3600.0, "watchdog: period of the full-replay verification of the projections against the log (SPEC §8; 0 off)"
    )
    watchdog_recovery_hold_s: float = _doc(
        2.0, "watchdog: a lower degradation level must hold this long before it is taken"
    )
    log_level: str = _doc("INFO", "DEBUG, INFO, WARNING or ERROR")
    otel_exporter: str = _doc("none", "OpenTelemetry span exporter: none or console")
    otel_endpoint: str = _doc(
        "", "OTLP collector URL spans are exported to (e.g. http://collector:4318); empty: no OTLP export"
    )
    otel_protocol: str = _doc("http/protobuf", "OTLP protocol of BULWARK_OTEL_ENDPOINT: http/protobuf or grpc")
    metrics_host: str = _doc("127.0.0.1", "bind address of this process's Prometheus /metrics endpoint")
    metrics_port: int = _doc(
        0, "port of this process's Prometheus /metrics endpoint; 0: a free port (its URL is in /v1/status); -1: none"
    )
    stream_replicas: int = _doc(
        1, "JetStream stream and key-value bucket replicas (3 in a clustered deployment, k8s/configmap.yaml)"
    )
    alive_file: str = _doc("", "file touched on every heartbeat, for exec liveness probes (off when empty)")
    instance_id: str = _doc("", "distinguishes replicas of one component (default: host-pid)")

    @property
    def venues(self) -> tuple[str, ...]:
        """Every venue orders may go to: the main one, then the backup if configured."""
        return (self.venue, self.backup_venue) if self.backup_venue else (self.venue,)

    def venue_account(self, venue: str) -> VenueAccount:
        """Endpoints and credentials of `venue` (the main or the backup venue).

        Raises:
            SettingsError: `venue` is neither.
        """
        if venue in ("", self.venue):
            return VenueAccount(
                self.venue,
                self.venue_rest_url,
                self.venue_ws_url,
                self.venue_api_key,
                self.venue_api_secret,
                self.venue_rest_alternates,
                self.venue_ws_alternates,
            )
        if self.backup_venue and venue == self.backup_venue:
            return VenueAccount(
                self.backup_venue,
                self.backup_venue_rest_url,
                self.backup_venue_ws_url,
                self.backup_venue_api_key,
                self.backup_venue_api_secret,
            )
        if self.paper_venue and venue == self.paper_venue:
            return VenueAccount(
                self.paper_venue,
                self.paper_venue_rest_url,
                self.paper_venue_ws_url,
                self.paper_venue_api_key,
                self.paper_venue_api_secret,
            )
        raise SettingsError(
            f"venue {venue!r} is neither BULWARK_VENUE={self.venue!r} nor BULWARK_BACKUP_VENUE={self.backup_venue!r}"
            f" nor BULWARK_PAPER_VENUE={self.paper_venue!r}"
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `BULWARK_<FIELD>` variables, falling back to defaults.

        Raises:
            SettingsError: a variable cannot be converted to its field's type.
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(f"BULWARK_{f.name.upper()}")
            if raw is None:
                continue
            values[f.name] = _convert(f.name, raw, f.default)
        return cls(**values)  # type: ignore[arg-type]


SETTING_MAX_LENGTH = 64 * 1024
"""A setting's text: tokens, URLs and lists are far below this; a NUL is never meant."""


def _convert(name: str, raw: str, default: object) -> object:
    try:
        if isinstance(default, bool):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        # Numbers are bounded where they enter: a bigint at most, never NaN or infinite.
        if isinstance(default, int):
            return check_int(int(raw.strip()), name)
        if isinstance(default, float):
            return check_finite(float(raw), name)
        check_text(raw, name, max_length=SETTING_MAX_LENGTH)
        if isinstance(default, tuple):
            return tuple(item.strip() for item in raw.split(",") if item.strip())
    except ValueError as exc:  # BoundsError included
        raise SettingsError(f"BULWARK_{name.upper()}={raw[:80]!r}: {exc}") from exc
    return raw


def settings_doc() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting, for docs and `bulwark up --help`."""
    rows = []
    for f in fields(Settings):
        default = ",".join(f.default) if isinstance(f.default, tuple) else str(f.default)
        rows.append((f"BULWARK_{f.name.upper()}", default, str(f.metadata.get("doc", ""))))
    return rows

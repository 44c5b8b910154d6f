"""Settings from environment variables (`BULWARK_*`), read once at start-up.

Every variable, its default and meaning is listed in `SETTINGS_DOC` (the README table is
generated from the same list, so they cannot drift).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TypeVar

T = TypeVar("T")


class SettingsError(ValueError):
    """A variable holds a value that cannot be used."""


def _doc(default: T, doc: str) -> T:
    """A dataclass field with its documentation attached."""
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class Settings:
    """Runtime configuration of one service process."""

    nats_url: str = _doc("nats://127.0.0.1:4222", "NATS server URL(s), comma separated")
    pg_dsn: str = _doc("postgresql://bulwark@127.0.0.1:5432/bulwark", "Postgres DSN")
    redis_url: str = _doc("redis://127.0.0.1:6379/0", "Valkey/Redis URL for idempotency keys")
    venue: str = _doc("binance-usdm", "venue name used in subjects")
    venue_rest_url: str = _doc("http://127.0.0.1:8100", "venue REST base URL")
    venue_ws_url: str = _doc("ws://127.0.0.1:8100", "venue WebSocket base URL")
    venue_api_key: str = _doc("bulwark-sim-key", "venue API key")
    venue_api_secret: str = _doc("bulwark-sim-secret", "venue API secret (never logged)")
    symbols: tuple[str, ...] = _doc(("BTCUSDT", "ETHUSDT"), "traded symbols, comma separated")
    gateway_host: str = _doc("127.0.0.1", "gateway bind address")
    gateway_port: int = _doc(8000, "gateway port")
    admin_token: str = _doc("", "bearer token of the admin role")
    operator_token: str = _doc("", "bearer token of the operator role")
    viewer_token: str = _doc("", "bearer token of the viewer role")
    max_position_qty: str = _doc("1", "risk: max absolute position per symbol (base units)")
    max_order_notional: str = _doc("100000", "risk: max notional of one order (quote units)")
    strategy_name: str = _doc("imbalance", "strategy process: which strategy this instance runs")
    strategies: tuple[str, ...] = _doc(("imbalance",), "strategy instances `bulwark up` starts")
    heartbeat_interval_s: float = _doc(1.0, "heartbeat period")
    heartbeat_timeout_s: float = _doc(3.0, "no heartbeat for this long: component down")
    log_level: str = _doc("INFO", "DEBUG, INFO, WARNING or ERROR")
    otel_exporter: str = _doc("none", "OpenTelemetry span exporter: none or console")
    stream_replicas: int = _doc(1, "JetStream stream replicas (3 in a clustered deployment)")
    alive_file: str = _doc("", "file touched on every heartbeat, for exec liveness probes (off when empty)")
    instance_id: str = _doc("", "distinguishes replicas of one component (default: host-pid)")

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


def _convert(name: str, raw: str, default: object) -> object:
    try:
        if isinstance(default, bool):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(item.strip() for item in raw.split(",") if item.strip())
    except ValueError as exc:
        raise SettingsError(f"BULWARK_{name.upper()}={raw!r}: {exc}") from exc
    return raw


def settings_doc() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting, for docs and `bulwark up --help`."""
    rows = []
    for f in fields(Settings):
        default = ",".join(f.default) if isinstance(f.default, tuple) else str(f.default)
        rows.append((f"BULWARK_{f.name.upper()}", default, str(f.metadata.get("doc", ""))))
    return rows

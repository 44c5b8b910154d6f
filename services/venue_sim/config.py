"""Configuration of the venue simulator: command-line flags over `BULWARK_*` variables over defaults
(see `main` for the flags and variables)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from libs.recordings import SPOT, USDM
from services.venue_sim.domain.limits import ORDER_LIMIT_1M, ORDER_LIMIT_10S, WEIGHT_LIMIT_1M
from services.venue_sim.domain.venue_rules import ConnectionRules


def parse_probability(raw: str) -> float:
    """A probability in [0, 1] (argparse `type`)."""
    try:
        value = float(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from exc
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a probability is between 0 and 1, not {raw}")
    return value


def parse_positive(raw: str) -> float:
    """A number > 0 (argparse `type`)."""
    try:
        value = float(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from exc
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {raw}")
    return value


def parse_speed(raw: str) -> float:
    """`max` or 0 mean as fast as possible (0.0); else a positive multiplier."""
    if raw.strip().lower() in ("max", "0", "0.0"):
        return 0.0
    speed = float(raw)
    if speed < 0:
        raise ValueError("speed must be >= 0 or 'max'")
    return speed


@dataclass(frozen=True)
class SimConfig:
    """Everything the simulator needs to start."""

    host: str = "127.0.0.1"
    port: int = 8100
    source: str = ""
    speed: float = 1.0
    seed: int = 0
    api_key: str = "bulwark-sim-key"
    api_secret: str = "bulwark-sim-secret"
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")
    ws_ping_interval_s: float = 20.0
    market: str = "auto"
    cascade_probability: float | None = None
    """Synthetic markets: chance per 100 ms step that a liquidation cascade starts (None: the source's default)."""
    rules: ConnectionRules = field(default_factory=ConnectionRules)
    """WebSocket lifetime, pong timeout, message rate, streams per connection, listenKey validity."""
    ban_escalation: float = 2.0
    """Each request sent during an IP ban multiplies the ban by this (1: bans never grow)."""
    weight_limit_1m: int = WEIGHT_LIMIT_1M
    order_limit_10s: int = ORDER_LIMIT_10S
    order_limit_1m: int = ORDER_LIMIT_1M
    ban_after_429: int = 0
    """More 429 answers than this within a minute ban the IP for 2 minutes (0: never)."""
    conditional_orders: str = "algo"
    """algo: conditional order types only through /fapi/v1/algoOrder (-4120 on /fapi/v1/order), as
    Binance since 2025-12-09; legacy: accepted on both."""
    mirror_rest_url: str = ""
    """`--source mirror`: REST base of the venue whose live market the simulator follows (paper trading)."""
    mirror_ws_url: str = ""
    """`--source mirror`: WebSocket base of that venue."""
    mirror_routed: bool = True
    """`--source mirror`: that venue routes streams by path (`/public`, `/market`) as Binance USD-M does."""
    stream_routing: str = "binance"
    """binance: WebSocket streams by path as Binance USD-M (/public depth, /market trades, mark price,
    liquidations, /private user data; an un-routed path public only); any: every stream on every path."""


MARKETS = ("auto", USDM, SPOT)


def config_from(argv: Sequence[str] | None, environ: Mapping[str, str]) -> SimConfig:
    """Merge command-line flags over `BULWARK_*` variables over defaults."""
    parser = argparse.ArgumentParser(prog="venue-sim", description="Binance USD-M venue simulator")
    parser.add_argument("--host", default=environ.get("BULWARK_SIM_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(environ.get("BULWARK_SIM_PORT", "8100")))
    parser.add_argument("--source", default=environ.get("BULWARK_SIM_SOURCE", ""))
    parser.add_argument("--speed", default=environ.get("BULWARK_SIM_SPEED", "1"))
    parser.add_argument("--seed", type=int, default=int(environ.get("BULWARK_SIM_SEED", "0")))
    parser.add_argument("--ws-ping-interval", type=float, default=float(environ.get("BULWARK_SIM_WS_PING_S", "20")))
    parser.add_argument("--market", choices=MARKETS, default=environ.get("BULWARK_SIM_MARKET", "auto"))
    parser.add_argument(
        "--cascade-probability",
        type=parse_probability,
        default=environ.get("BULWARK_SIM_CASCADE_PROBABILITY") or None,
        help="synthetic: chance per 100 ms step that a liquidation cascade starts (0 = calm market)",
    )
    defaults = ConnectionRules()
    for flag, variable, default, kind, what in (
        ("--ws-lifetime", "BULWARK_SIM_WS_LIFETIME_S", defaults.lifetime_s, parse_positive, "connection lifetime, s"),
        ("--ws-pong-timeout", "BULWARK_SIM_WS_PONG_TIMEOUT_S", defaults.pong_timeout_s, parse_positive, "s"),
        ("--ws-max-messages", "BULWARK_SIM_WS_MAX_MESSAGES", defaults.max_incoming_per_s, int, "per second"),
        ("--ws-max-streams", "BULWARK_SIM_WS_MAX_STREAMS", defaults.max_streams, int, "per connection"),
        (
            "--listen-key-validity",
            "BULWARK_SIM_LISTEN_KEY_VALIDITY_S",
            defaults.listen_key_validity_s,
            parse_positive,
            "s",
        ),
        ("--ban-escalation", "BULWARK_SIM_BAN_ESCALATION", 2.0, parse_positive, "factor per request during a ban"),
        ("--weight-limit", "BULWARK_SIM_WEIGHT_LIMIT_1M", WEIGHT_LIMIT_1M, int, "request weight per minute"),
        ("--order-limit-10s", "BULWARK_SIM_ORDER_LIMIT_10S", ORDER_LIMIT_10S, int, "orders per 10 s"),
        ("--order-limit-1m", "BULWARK_SIM_ORDER_LIMIT_1M", ORDER_LIMIT_1M, int, "orders per minute"),
        ("--ban-after-429", "BULWARK_SIM_BAN_AFTER_429", 0, int, "429s a minute before a 2-minute ban (0: never)"),
    ):
        parser.add_argument(flag, type=kind, default=kind(environ.get(variable, str(default))), help=what)
    parser.add_argument(
        "--conditional-orders",
        choices=("legacy", "algo"),
        default=environ.get("BULWARK_SIM_CONDITIONAL_ORDERS", "algo"),
        help="algo: STOP_MARKET/TAKE_PROFIT_MARKET only through /fapi/v1/algoOrder, as Binance since 2025-12-09",
    )
    parser.add_argument(
        "--stream-routing",
        choices=("binance", "any"),
        default=environ.get("BULWARK_SIM_STREAM_ROUTING", "binance"),
        help="binance: streams served by path (/public, /market, /private) as Binance USD-M; any: every path",
    )
    parser.add_argument(
        "--mirror-rest-url",
        default=environ.get("BULWARK_SIM_MIRROR_REST_URL", ""),
        help="--source mirror: REST base URL of the venue whose live market to follow (paper trading)",
    )
    parser.add_argument(
        "--mirror-ws-url",
        default=environ.get("BULWARK_SIM_MIRROR_WS_URL", ""),
        help="--source mirror: WebSocket base URL of that venue",
    )
    parser.add_argument(
        "--mirror-routed",
        choices=("true", "false"),
        # The venue's own routing setting when the mirror's is not given.
        default=environ.get("BULWARK_SIM_MIRROR_ROUTED", environ.get("BULWARK_VENUE_WS_ROUTED", "true"))
        .strip()
        .lower(),
        help="--source mirror: the venue serves streams on /public and /market as Binance USD-M (default true)",
    )
    args = parser.parse_args(argv)
    symbols = tuple(
        s.strip().upper() for s in environ.get("BULWARK_SYMBOLS", "BTCUSDT,ETHUSDT").split(",") if s.strip()
    )
    return SimConfig(
        host=args.host,
        port=args.port,
        source=args.source,
        speed=parse_speed(str(args.speed)),
        seed=args.seed,
        api_key=environ.get("BULWARK_VENUE_API_KEY", "bulwark-sim-key"),
        api_secret=environ.get("BULWARK_VENUE_API_SECRET", "bulwark-sim-secret"),
        symbols=symbols,
        ws_ping_interval_s=args.ws_ping_interval,
        market=args.market,
        cascade_probability=args.cascade_probability,
        rules=ConnectionRules(
            lifetime_s=args.ws_lifetime,
            pong_timeout_s=args.ws_pong_timeout,
            max_incoming_per_s=args.ws_max_messages,
            max_streams=args.ws_max_streams,
            listen_key_validity_s=args.listen_key_validity,
        ),
        ban_escalation=args.ban_escalation,
        weight_limit_1m=args.weight_limit,
        order_limit_10s=args.order_limit_10s,
        order_limit_1m=args.order_limit_1m,
        ban_after_429=args.ban_after_429,
        conditional_orders=args.conditional_orders,
        stream_routing=args.stream_routing,
        mirror_rest_url=args.mirror_rest_url.rstrip("/"),
        mirror_ws_url=args.mirror_ws_url.rstrip("/"),
        mirror_routed=args.mirror_routed == "true",
    )

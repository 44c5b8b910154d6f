"""Bootstrap of the venue simulator: the one place that wires source, domain, engine and HTTP.

    python -m services.venue_sim.main --host 127.0.0.1 --port 8100 \
        --source replay:FILE[,FILE...]|synthetic --speed X --seed N [--market auto|usdm|spot]
    python -m services.venue_sim.main --source mirror --mirror-rest-url URL --mirror-ws-url URL

`--source mirror` is the paper venue (`bulwark up --paper`): the books, trades, marks and forced
orders of another USD-M venue followed live (`adapters.mirror`), orders filled by the simulator's
matching engine against them, nothing sent to that venue (BULWARK_SIM_MIRROR_REST_URL,
BULWARK_SIM_MIRROR_WS_URL, BULWARK_SIM_MIRROR_ROUTED).

Environment (flags win): BULWARK_SIM_HOST, BULWARK_SIM_PORT, BULWARK_SIM_SOURCE,
BULWARK_SIM_SPEED, BULWARK_SIM_SEED, BULWARK_SIM_MARKET, BULWARK_SIM_CASCADE_PROBABILITY (synthetic:
chance per 100 ms step that a liquidation cascade starts; 0 for a calm market), BULWARK_VENUE_API_KEY,
BULWARK_VENUE_API_SECRET, BULWARK_SYMBOLS, BULWARK_SIM_CONTROL_TOKEN (the token `/_sim/*` requires;
unset: open, with a warning at start). Binance's connection rules, shortened for tests:
--ws-lifetime / BULWARK_SIM_WS_LIFETIME_S (86400), --ws-pong-timeout / BULWARK_SIM_WS_PONG_TIMEOUT_S (600),
--ws-max-messages / BULWARK_SIM_WS_MAX_MESSAGES (10 a second), --ws-max-streams / BULWARK_SIM_WS_MAX_STREAMS
(1024), --listen-key-validity / BULWARK_SIM_LISTEN_KEY_VALIDITY_S (3600), --ban-escalation /
BULWARK_SIM_BAN_ESCALATION (2: each request during an IP ban doubles it, up to 3 days). The venue's
rate limits: --weight-limit / BULWARK_SIM_WEIGHT_LIMIT_1M (2400), --order-limit-10s /
BULWARK_SIM_ORDER_LIMIT_10S (300), --order-limit-1m / BULWARK_SIM_ORDER_LIMIT_1M (1200), and
--ban-after-429 / BULWARK_SIM_BAN_AFTER_429 (0: off; else more 429s a minute ban the IP 2 minutes).
--http-idle-timeout / BULWARK_SIM_HTTP_IDLE_TIMEOUT_S (15): a connection without a complete request
for this long is closed (idle keep-alive, and a client dribbling its headers).
Conditional orders: --conditional-orders / BULWARK_SIM_CONDITIONAL_ORDERS `algo` (default: only
/fapi/v1/algoOrder, -4120 elsewhere, as Binance since 2025-12-09) or `legacy` (also /fapi/v1/order).
The market is the recording's (`auto`: spot when its
depth events carry no `pu`); a synthetic market is USD-M unless `--market spot`. Without a
source, the 2024-08-08 BTCUSDT/ETHUSDT recordings in the repository's `data/binance` are replayed;
synthetic if missing (an installed wheel or the Docker image carries no recordings).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from aiohttp import web

from libs.clock import Clock, wall_clock
from libs.logging import get_logger
from libs.recordings import SPOT, USDM, default_recordings
from services.venue_sim.adapters.mirror import MirrorError, MirrorSource
from services.venue_sim.adapters.replay import ReplaySource, SourceError
from services.venue_sim.adapters.synthetic import DEFAULT_CASCADE_PROBABILITY, SyntheticSource
from services.venue_sim.config import SimConfig, config_from
from services.venue_sim.domain import Exchange, FaultScheduler, MarketClock, OrderBook
from services.venue_sim.domain.limits import UsageLimits
from services.venue_sim.domain.market_events import MarketSource
from services.venue_sim.engine import MarketEngine
from services.venue_sim.handlers import VenueSimulator

log = get_logger("venue-sim")
MIRROR = "mirror"
"""`--source mirror`: follow a live venue's market (the paper venue)."""

HTTP_LIMITS = {
    "max_headers": 100,
    "max_field_size": 8190,
    "max_line_size": 8190,
}
"""aiohttp's request-handler limits for the simulator's HTTP server (header count and sizes)."""


def build_source(config: SimConfig) -> tuple[MarketSource, str]:
    """The market source named by the config, and a description for logs and /_sim/state."""
    spec = config.source.strip()
    if spec == "synthetic":
        market = SPOT if config.market == SPOT else USDM
        cascades = DEFAULT_CASCADE_PROBABILITY if config.cascade_probability is None else config.cascade_probability
        source = SyntheticSource(config.symbols, config.seed, cascade_probability=cascades, market=market)
        return source, f"synthetic:{','.join(config.symbols)}"
    if spec.startswith("replay:"):
        paths = [p.strip() for p in spec[len("replay:") :].split(",") if p.strip()]
        missing = [p for p in paths if not Path(p).exists()]
        if missing:
            raise SourceError(f"recording(s) not found: {', '.join(missing)}")
        replay = ReplaySource(paths)
        if config.market not in ("auto", replay.market):
            raise SourceError(f"--market {config.market}, but the recording(s) are {replay.market}")
        return replay, f"replay:{','.join(paths)}"
    if spec:
        raise SourceError(f"unknown source {spec!r}: use replay:FILE[,FILE...] or synthetic")
    defaults = default_recordings()
    if all(p.exists() for p in defaults):
        return ReplaySource(defaults), f"replay:{','.join(str(p) for p in defaults)}"
    log.warning("default_recordings_missing", paths=[str(p) for p in defaults], action_taken="synthetic")
    return build_source(replace(config, source="synthetic"))


def build_simulator(
    config: SimConfig, source: MarketSource, description: str, clock: Clock = wall_clock
) -> VenueSimulator:
    """Wire books, exchange, faults, engine and HTTP around a source."""
    books: dict[str, OrderBook] = {}
    for symbol in source.symbols:
        book = OrderBook(symbol)
        start = source.start_book(symbol)
        book.reset(start.bids, start.asks, start.last_update_id)
        books[symbol] = book
    market_clock = MarketClock(clock)
    exchange = Exchange(clock, {s: source.spec(s) for s in source.symbols}, books)
    faults = FaultScheduler(clock, config.seed)
    exchange.hold_trigger = lambda order: faults.take("stop_stuck_triggering", order.symbol) is not None
    engine = MarketEngine(
        source,
        exchange,
        books,
        faults,
        market_clock,
        clock,
        config.speed,
        log,
        config.ws_ping_interval_s,
        market=source.market,
        rules=config.rules,
    )
    return VenueSimulator(
        engine,
        exchange,
        faults,
        market_clock,
        clock,
        config.api_key,
        config.api_secret,
        log,
        description,
        rules=config.rules,
        ban_escalation=config.ban_escalation,
        limits=UsageLimits(clock, config.weight_limit_1m, config.order_limit_10s, config.order_limit_1m),
        ban_after_429=config.ban_after_429,
        conditional_orders=config.conditional_orders,
        stream_routing=config.stream_routing,
        control_token=config.control_token,
    )


async def open_source(config: SimConfig) -> tuple[MarketSource, str]:
    """The config's market source: a live venue's mirror (`--source mirror`), else `build_source`.

    Raises:
        SourceError: a bad source, or a mirrored venue that cannot be followed.
    """
    if config.source.strip() != MIRROR:
        return build_source(config)
    if not config.mirror_rest_url or not config.mirror_ws_url:
        raise SourceError("--source mirror needs --mirror-rest-url URL and --mirror-ws-url URL")
    try:
        mirror = await MirrorSource.connect(
            config.mirror_rest_url, config.mirror_ws_url, config.symbols, log, routed=config.mirror_routed
        )
    except MirrorError as exc:
        raise SourceError(str(exc)) from exc
    return mirror, f"mirror:{config.mirror_rest_url}"


async def serve(config: SimConfig) -> None:
    """Run until SIGINT/SIGTERM."""
    source, description = await open_source(config)
    simulator = build_simulator(config, source, description)
    runner = web.AppRunner(
        simulator.build_app(),
        access_log=None,
        handle_signals=False,
        # aiohttp arms its keep-alive timer at a connection's start and after each response, and
        # drops a connection still without a complete request when it fires: a client dribbling
        # its headers (slowloris) or sending nothing is cut. WebSockets and requests being served
        # are not affected.
        keepalive_timeout=config.http_idle_timeout_s,
        # Stream connections are closed at shutdown (`on_shutdown`); a request still being served
        # gets this long before the process exits anyway.
        shutdown_timeout=5.0,
        **HTTP_LIMITS,
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    log.info(
        "venue_sim_started",
        host=config.host,
        port=config.port,
        source=description,
        speed=config.speed,
        seed=config.seed,
        symbols=list(source.symbols),
        market=source.market,
        rest_url=f"http://{config.host}:{config.port}",
        ws_url=f"ws://{config.host}:{config.port}",
        control_api="token" if config.control_token else "open",
    )
    if not config.control_token:
        # A simulator started by hand for tests; `bulwark up` always gives it a token.
        log.warning(
            "sim_control_unauthenticated",
            detail="no BULWARK_SIM_CONTROL_TOKEN: anyone who reaches this port can inject faults and read state",
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("venue_sim_stopping")
    await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    config = config_from(argv, os.environ)
    try:
        asyncio.run(serve(config))
    except SourceError as exc:
        log.error("venue_sim_bad_source", error=str(exc))
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`bulwark up | status | chaos | bench` and the operator verbs (`ops_cli`) — the operator's command line (SPEC §10)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from entrypoints import backtest_cli, backup_cli, ops_cli, strategy_cli, venue_cli
from entrypoints.access import exposure_problem, exposure_warning, tool_bus_user, tool_pg_dsn
from entrypoints.infra import postgres_dsn
from entrypoints.launcher import (
    BACKUP_VENUE_PROGRAM,
    DEFAULT_BACKUP_VENUE_PORT,
    DEFAULT_PAPER_VENUE_PORT,
    DEFAULT_SYMBOLS,
    PAPER_LINK_PROGRAM,
    LaunchConfig,
    LaunchError,
    System,
    backup_position_program,
    default_backup_venue,
    load_credentials,
)
from entrypoints.operator_api import ENDPOINTS_FILE, running_endpoints
from entrypoints.progress import progress
from libs import logging as bulwark_logging
from libs.bounds import INT64_MAX, BoundsError, check_finite, check_int
from proto.subjects import DEFAULT_VENUE

DEFAULT_DATA_DIR = Path(".bulwark")


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _err(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _venue_source(value: str) -> str:
    if value == "synthetic":
        return value
    if not value.startswith("replay:") or not value.removeprefix("replay:"):
        raise argparse.ArgumentTypeError("expected `synthetic` or `replay:FILE[,FILE...]`")
    files = [Path(item) for item in value.removeprefix("replay:").split(",")]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise argparse.ArgumentTypeError(f"recording(s) not found: {', '.join(missing)}")
    return "replay:" + ",".join(str(path.resolve()) for path in files)


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from exc
    try:
        return check_finite(number, minimum=0.0)
    except BoundsError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (0 = as fast as the client reads)") from exc


def _bounded_int(minimum: int, maximum: int = INT64_MAX) -> Any:
    """An argparse type: an integer in [minimum, maximum] (ids and seeds travel as int64)."""

    def parse(value: str) -> int:
        try:
            return check_int(int(value.strip()), minimum=minimum, maximum=maximum)
        except ValueError as exc:  # BoundsError included
            raise argparse.ArgumentTypeError(str(exc) or f"not an integer: {value!r}") from exc

    return parse


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a port: {value!r}") from exc
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {port}")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bulwark", description="Bulwark: failure-first trading system")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="run the whole system on this machine")
    up.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="state directory (default ./.bulwark)")
    up.add_argument("--venue-source", type=_venue_source, help="`replay:FILE[,FILE...]` or `synthetic`")
    up.add_argument("--venue-speed", type=_positive_float, help="replay speed factor (0 = as fast as read)")
    up.add_argument("--venue-seed", type=_bounded_int(0), help="seed of the simulator's randomness")
    up.add_argument("--host", default="127.0.0.1", help="bind address of every server (default 127.0.0.1)")
    up.add_argument("--gateway-port", type=_port, default=8000)
    up.add_argument("--venue-port", type=_port, default=8100)
    up.add_argument("--nats-port", type=_port, default=4222)
    up.add_argument("--nats-monitor-port", type=_port, default=8222)
    up.add_argument("--pg-port", type=_port, default=5432)
    up.add_argument("--redis-port", type=_port, default=6379)
    up.add_argument(
        "--metrics-port",
        type=_bounded_int(0, 65535),
        default=0,
        help="first Prometheus /metrics port of the services, one each (default 0: free ports, see `bulwark status`)",
    )
    up.add_argument(
        "--symbols",
        help="comma-separated symbols (default: a replay's own symbols, else BTCUSDT,ETHUSDT)",
    )
    up.add_argument(
        "--strategies",
        default="cascade-fade,trend",
        help="comma-separated strategy instances, one process each (default cascade-fade,trend)",
    )
    up.add_argument(
        "--strategy-config", type=Path, help="TOML file of per-instance strategy parameters (docs/strategies.md)"
    )
    up.add_argument(
        "--backup-venue",
        nargs="?",
        const="",
        default=None,
        metavar="NAME",
        help="also simulate a backup venue (another account, same protocol) and run its position process "
        "(position-NAME); risk sends new entries there while the main venue's order link is down (FM-N6). "
        "NAME defaults to <main venue>-backup, e.g. binance-usdm-backup",
    )
    up.add_argument(
        "--backup-venue-port",
        type=_port,
        default=DEFAULT_BACKUP_VENUE_PORT,
        help=f"port of the backup venue simulator (default {DEFAULT_BACKUP_VENUE_PORT}; with --backup-venue)",
    )
    up.add_argument(
        "--paper-link",
        action="store_true",
        help="also run a paper order link beside live (a simulator mirroring the venue's market and its "
        'position process, venue <main venue>-paper): strategies enabled with {"mode": "paper"} trade there',
    )
    up.add_argument(
        "--paper-venue-port",
        type=_port,
        default=DEFAULT_PAPER_VENUE_PORT,
        help=f"port of the paper link's simulator (default {DEFAULT_PAPER_VENUE_PORT}; with --paper-link)",
    )

    venue_cli.add_up_flags(up)
    up.add_argument(
        "--leave-hard-shutdown",
        metavar="REASON",
        help="the manual restart out of a persisted HARD_SHUTDOWN (emergency stop, integrity violation): "
        "level back to NORMAL, trading kept HALTED until an operator resumes; REASON is recorded in the audit log",
    )
    venue_cli.add_preflight_parser(commands, DEFAULT_DATA_DIR)
    backtest_cli.add_parser(commands)
    strategy_cli.add_parser(commands)
    backup_cli.add_parser(commands)

    status = commands.add_parser("status", help="show the running system's status")
    status.add_argument("--json", action="store_true", help="print the raw /v1/status JSON")
    status.add_argument("--gateway", help="gateway URL (default: BULWARK_GATEWAY_URL, else the data dir's system)")
    status.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="where to find the token")
    ops_cli.add_status_flags(status)
    ops_cli.add_parser(commands, DEFAULT_DATA_DIR)

    chaos = commands.add_parser("chaos", help="chaos experiments against the running system")
    chaos_commands = chaos.add_subparsers(dest="chaos_command", required=True)
    chaos_commands.add_parser("list", help="list experiments")
    run = chaos_commands.add_parser("run", help="run one experiment, or every one with --all")
    run.add_argument("name", nargs="?", help="the experiment (`bulwark chaos list`)")
    run.add_argument("--all", action="store_true", help="run every experiment in turn; exit 0 only if all pass")
    run.add_argument("--json", action="store_true", help="no progress display, only the JSON report")
    run.add_argument("--report", type=Path, help="write the JSON report here")
    run.add_argument("--gateway", default=os.environ.get("BULWARK_GATEWAY_URL", "http://127.0.0.1:8000"))
    run.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)

    bench = commands.add_parser("bench", help="benchmarks")
    bench.add_argument("name", help="benchmark name, or `list`")
    bench.add_argument("--json", action="store_true", help="machine-readable output")
    bench.add_argument(
        "--repeats", type=_bounded_int(1, 10_000), help="repetitions, for benchmarks that repeat an injection"
    )

    projections = commands.add_parser("projections", help="rebuild or verify Postgres projections from the log")
    projections_commands = projections.add_subparsers(dest="projections_command", required=True)
    for verb, text in (
        ("rebuild", "rebuild orders/fills/positions from the ORDERS stream (scratch schema unless --apply)"),
        ("verify", "rebuild into a scratch schema and report differences with the live tables"),
    ):
        sub = projections_commands.add_parser(verb, help=text)
        sub.add_argument("--nats-url", help="default: BULWARK_NATS_URL, else the system `bulwark up` runs")
        sub.add_argument("--pg-dsn", help="default: BULWARK_PG_DSN, else the system `bulwark up` runs")
        sub.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="the data dir of `bulwark up`")
        sub.add_argument("--json", action="store_true", help="machine-readable output")
        if verb == "rebuild":
            sub.add_argument("--apply", action="store_true", help="write into the live tables (idempotent upserts)")
    return parser


def _strategy_config_problem(names: tuple[str, ...], path: Path | None) -> str | None:
    """Why the strategy instances cannot start (unknown kind, bad parameter), checked before anything starts."""
    from services.strategy.config import StrategyConfigError, load_instances

    try:
        load_instances(names, path or "")
    except StrategyConfigError as exc:
        return str(exc)
    return None


def replay_setup(source: str | None, requested: tuple[str, ...] | None) -> tuple[tuple[str, ...], dict[str, str]]:
    """The symbols and market environment of the system for a venue source.

    A replay (with no source: the simulator's default recordings, when present) serves only its
    recordings' symbols, in their market: by default the system trades exactly those; asking for a
    symbol they do not carry is an error (its book could never be VALID, and the venue would refuse
    its orders). A spot replay sets every service to spot (`BULWARK_VENUE_MARKET`, and the venue
    name `binance-spot` so all services agree on it).

    Raises:
        ValueError: the recordings cannot be replayed with these symbols.
    """
    from libs import recordings

    if source is None:
        defaults = recordings.default_recordings()  # what the simulator replays when given no source
        if all(path.is_file() for path in defaults):
            source = "replay:" + ",".join(str(path) for path in defaults)
    if source is None or not source.startswith("replay:"):
        return requested or DEFAULT_SYMBOLS, {}
    from libs.binance.client import DEFAULT_SPOT_VENUE

    try:
        found = recordings.survey(source.removeprefix("replay:").split(","))
    except (recordings.RecordingError, OSError) as exc:
        raise ValueError(f"cannot replay {source.removeprefix('replay:')}: {exc}") from exc
    symbols = requested or found.symbols
    missing = sorted(set(symbols) - set(found.symbols))
    if missing:
        raise ValueError(
            f"--symbols {','.join(missing)} not in the recording(s), which carry {','.join(found.symbols)} "
            "(`--venue-source synthetic` generates any symbol)"
        )
    if found.market == recordings.SPOT:
        return symbols, {"BULWARK_VENUE_MARKET": recordings.SPOT, "BULWARK_VENUE": DEFAULT_SPOT_VENUE}
    return symbols, {}


def cmd_up(args: argparse.Namespace) -> int:
    requested = tuple(s.strip().upper() for s in (args.symbols or "").split(",") if s.strip()) or None
    try:
        venue = venue_cli.venue_of(args)
        # Another venue trades its own market: the simulator's recordings say nothing about it.
        symbols, market_env = (
            replay_setup(args.venue_source, requested)
            if venue.simulated
            else (
                requested or DEFAULT_SYMBOLS,
                {},
            )
        )
    except (ValueError, venue_cli.VenueProfileError) as exc:
        _err(f"bulwark up: {exc}")
        return 2
    main_venue = market_env.get("BULWARK_VENUE") or os.environ.get("BULWARK_VENUE") or DEFAULT_VENUE
    config = LaunchConfig(
        data_dir=args.data_dir.resolve(),
        host=args.host,
        gateway_port=args.gateway_port,
        venue_port=args.venue_port,
        nats_port=args.nats_port,
        nats_monitor_port=args.nats_monitor_port,
        pg_port=args.pg_port,
        redis_port=args.redis_port,
        metrics_port=args.metrics_port,
        venue_source=args.venue_source,
        venue_speed=args.venue_speed,
        venue_seed=args.venue_seed,
        symbols=symbols,
        strategies=tuple(s.strip() for s in args.strategies.split(",") if s.strip()),
        strategy_config=args.strategy_config.resolve() if args.strategy_config else None,
        extra_env=market_env,
        main_venue=main_venue,
        backup_venue="" if args.backup_venue is None else (args.backup_venue or default_backup_venue(main_venue)),
        backup_venue_port=args.backup_venue_port,
        venue=venue,
        paper=args.paper,
        paper_link=args.paper_link,
        paper_venue_port=args.paper_venue_port,
        leave_hard_shutdown=args.leave_hard_shutdown or "",
    )
    problem = _strategy_config_problem(config.strategies, config.strategy_config) or "; ".join(config.problems())
    warning = exposure_warning(config.host)
    if not problem and warning:
        _err(warning)
        problem = exposure_problem(config.host, os.environ) or ""
    if problem:
        _err(f"bulwark up: {problem}")
        return 2
    system = System(config, announce=_out)
    stop_requested = {"flag": False}

    def request_stop(signum: int, frame: Any) -> None:
        stop_requested["flag"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        system.start()
    except LaunchError as exc:
        _err(f"bulwark up: {exc}")
        return 2
    creds = system.credentials
    assert creds is not None
    endpoints = {
        "gateway": f"http://{config.host}:{config.gateway_port}",
        "venue": config.venue.rest_url or f"http://{config.host}:{config.venue_port}",
        "nats_url": f"nats://{config.host}:{config.nats_port}",
        "pg_dsn": postgres_dsn(config.pg_port, config.host),
        "redis_url": f"redis://{config.host}:{config.redis_port}/0",
    }
    if config.backup_venue:
        endpoints["backup_venue"] = system.venue_urls()[BACKUP_VENUE_PROGRAM]
        endpoints["backup_venue_name"] = config.backup_venue
    if config.paper_link:
        endpoints["paper_venue"] = system.venue_urls()[PAPER_LINK_PROGRAM]
        endpoints["paper_venue_name"] = config.paper_venue
    # Other verbs (`projections`, ...) find the running system through this file.
    (config.data_dir / ENDPOINTS_FILE).write_text(json.dumps(endpoints, indent=2))
    _out("")
    _out(f"Bulwark is starting (data dir {config.data_dir})")
    _out(f"  gateway          http://{config.host}:{config.gateway_port}   (dashboard: /, API docs: /docs)")
    if config.venue.simulated:
        _out(f"  venue simulator  http://{config.host}:{config.venue_port}   (state: /_sim/state)")
    else:
        _out(venue_cli.venue_line(config.venue))
    paper_line = venue_cli.paper_line(config.paper, config.venue.simulated, config.url("http", config.venue_port))
    if paper_line:
        _out(paper_line)
    if config.backup_venue:
        _out(
            f"  backup venue     {endpoints['backup_venue']}   ({config.backup_venue}, traded by "
            f"{backup_position_program(config)}; state: /_sim/state)"
        )
    if config.paper_link:
        _out(f"  paper link       {endpoints['paper_venue']}   ({config.paper_venue}: paper strategies' orders only)")
    _out(f"  nats             {endpoints['nats_url']}")
    _out(f"  postgres         {endpoints['pg_dsn']}")
    _out(f"  admin token      {creds.admin_token}")
    _out(f"  operator token   {creds.operator_token}")
    _out(f"  viewer token     {creds.viewer_token}")
    if config.venue.simulated:
        _out(f"  venue api key    {creds.venue_api_key} (secret in {config.data_dir / 'credentials.json'})")
    else:
        _out(f"  venue api key    from {config.venue.key_source}; the key itself is never shown")
    if config.backup_venue:
        _out(f"  backup api key   {creds.backup_venue_api_key} (secret in the same file)")
    _out(f"  logs             {config.data_dir / 'logs'}")
    _out("Press Ctrl-C to stop.")
    try:
        while not stop_requested["flag"]:
            if not system.alive():
                _err("bulwark up: supervisord exited unexpectedly; see logs/supervisord.log")
                return 1
            try:
                for name in system.revive_fatal():
                    _err(f"bulwark up: {name} kept failing at start; starting it again")
            except OSError:
                pass
            for _ in range(50):
                if stop_requested["flag"]:
                    break
                time.sleep(0.1)
    finally:
        _out("stopping...")
        system.stop()
        _out("stopped")
    return 0


def _token(data_dir: Path) -> str:
    if os.environ.get("BULWARK_ADMIN_TOKEN"):
        return os.environ["BULWARK_ADMIN_TOKEN"]
    if (data_dir / "credentials.json").exists():
        return load_credentials(data_dir).viewer_token
    return ""


def cmd_chaos(args: argparse.Namespace) -> int:
    from entrypoints.chaos import experiments

    if args.chaos_command == "list":
        for name, experiment in sorted(experiments.REGISTRY.items()):
            _out(f"{name:<24} {experiment.description}")
        return 0
    if args.all == bool(args.name):
        _err("bulwark chaos run: name one experiment, or give --all (not both)")
        return 2
    names = sorted(experiments.REGISTRY) if args.all else [args.name]
    unknown = [name for name in names if name not in experiments.REGISTRY]
    if unknown:
        _err(f"bulwark chaos: unknown experiment {unknown[0]!r}; see `bulwark chaos list`")
        return 2
    log = _err if args.json else _out
    reports: dict[str, Any] = {}
    with progress(f"{len(names)} chaos experiment(s)", len(names), quiet=args.json) as advance:
        for name in names:
            reports[name] = experiments.REGISTRY[name].run(
                gateway=args.gateway, data_dir=args.data_dir.resolve(), log=log
            )
            advance(1)
    passed = all(r.get("passed") for r in reports.values())
    report = reports[names[0]] if not args.all else {"passed": passed, "experiments": reports}
    text = json.dumps(report, indent=2, sort_keys=True)
    if args.report:
        args.report.write_text(text)
    _out(text)
    return 0 if report.get("passed") else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from entrypoints.bench import registry

    if args.name == "list":
        for name, bench in sorted(registry.BENCHMARKS.items()):
            _out(f"{name:<16} {bench.description}")
        return 0
    selected = registry.BENCHMARKS.get(args.name)
    if selected is None:
        _err(f"bulwark bench: unknown benchmark {args.name!r}; see `bulwark bench list`")
        return 2
    options = {"repeats": args.repeats} if args.repeats else {}
    with progress(f"bench {selected.name}", None, quiet=args.json):
        result = selected.run(**options)
    _out(json.dumps(result, indent=2, sort_keys=True) if args.json else selected.format(result))
    return 0


def cmd_projections(args: argparse.Namespace) -> int:
    import asyncio

    from libs import projections
    from libs.bus import Bus
    from libs.errors import PermanentError
    from libs.settings import Settings

    settings = Settings.from_env()
    running = running_endpoints(args.data_dir)
    nats_url = args.nats_url or os.environ.get("BULWARK_NATS_URL") or running.get("nats_url") or settings.nats_url
    dsn = args.pg_dsn or os.environ.get("BULWARK_PG_DSN") or running.get("pg_dsn") or settings.pg_dsn
    dsn = tool_pg_dsn(args.data_dir, dsn, running.get("pg_dsn"))

    user, password = tool_bus_user(args.data_dir, settings)

    async def run() -> dict[str, Any]:
        bus = Bus("projections-cli")
        # The client retries an unreachable server forever by itself: bound the wait here.
        connect = bus.connect(nats_url, initial_connect_timeout_s=10.0, user=user, password=password)
        await asyncio.wait_for(connect, 15.0)
        try:
            if args.projections_command == "verify":
                return await projections.verify(bus, dsn)
            return await projections.rebuild(bus, dsn, apply=args.apply)
        finally:
            await bus.close()

    try:
        result = asyncio.run(run())
    except PermanentError as exc:
        _err(f"bulwark projections: {exc}; set BULWARK_NATS_USER and BULWARK_NATS_PASSWORD (docs/security.md)")
        return 1
    except (OSError, TimeoutError) as exc:
        _err(
            f"bulwark projections: NATS or Postgres not reachable ({type(exc).__name__} {exc}); "
            "is `bulwark up` running?"
        )
        return 1
    if args.json:
        _out(json.dumps(result, indent=2, sort_keys=True, default=str))
    elif args.projections_command == "verify":
        counts = {table: len(items) for table, items in result["differences"].items()}
        _out(f"consistent: {result['consistent']}  differences per table: {counts}")
        for table, items in result["differences"].items():
            for item in items[:20]:
                _out(f"  {table} {item['key']}: {item['problem']} {item.get('columns', '')}")
    else:
        _out(
            f"rebuilt into {result['target']}: {result['events']} events -> {result['orders']} orders, "
            f"{result['fills']} fills, {result['positions']} positions; orphan events {len(result['orphan_events'])}"
        )
    if args.projections_command == "verify":
        return 0 if result["consistent"] else 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "up":
        # Keep stdout for the command's own output (JSON reports); logs go to stderr.
        bulwark_logging.configure("WARNING", sys.stderr)
    if ops_cli.handles(args):
        return ops_cli.run(args)
    match args.command:
        case "up":
            return cmd_up(args)
        case "chaos":
            return cmd_chaos(args)
        case "bench":
            return cmd_bench(args)
        case "projections":
            return cmd_projections(args)
        case "preflight":
            return venue_cli.cmd_preflight(args, _out, _err, _token(args.data_dir))
        case "backtest":
            return backtest_cli.run(args)
        case "strategy":
            return strategy_cli.run(args, _out, _err)
        case "backup" | "restore":
            return backup_cli.run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())

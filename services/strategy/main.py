"""strategy process: one strategy instance per OS process (FM-C2 isolation).

`python -m services.strategy.main --name cascade-fade` (or `BULWARK_STRATEGY_NAME`); parameters
come from `BULWARK_STRATEGY_CONFIG` (TOML, see docs/strategies.md). The component is
`strategy-<name>`.

Several processes may run the same instance (hot standby): the one holding lease
`subjects.strategy_lease(name)` (libs/lease.py) runs it; the others wait and take over when it dies.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from nats.js.api import DeliverPolicy

from libs.clock import wall_clock
from libs.lease import LEASE_BUCKET, Lease
from libs.runtime.service import ServiceContext, main
from libs.settings import Settings
from libs.snapshot import SnapshotPolicy
from proto import subjects
from proto.enums import ComponentState, StrategyState

from .config import StrategyConfigError, config_dir, instance_config, read_config_file
from .handlers import INPUT_SUBJECTS, MARKET_SUBJECTS, StrategyService
from .runner import StrategyRunner
from .snapshot import snapshot_keeper


async def setup(ctx: ServiceContext) -> None:
    """Follow the inputs, compete for the instance's lease, and once it is held restore the
    strategy's state, serve commands and tick every 500 ms.

    An instance that cannot be configured (unknown kind, bad parameter, a trader's strategy file
    that does not load) runs no strategy: the process stays up DEGRADED with the reason in its
    heartbeat and one error in its log, instead of a traceback on every restart.
    """
    name = ctx.settings.strategy_name
    path = ctx.settings.strategy_config
    try:
        instance = instance_config(name, read_config_file(path), base_dir=config_dir(path))
    except StrategyConfigError as exc:
        problem = str(exc)
        ctx.log.error("strategy_config_invalid", strategy=name, error=problem, action_taken="no strategy runs")
        ctx.set_state(ComponentState.DEGRADED)
        ctx.details = lambda: {"state": StrategyState.FAILED.value, "config_error": problem[:1000]}
        return
    lease = Lease(
        await ctx.bus.kv(LEASE_BUCKET),
        subjects.strategy_lease(name),
        # The launcher's per-program id survives restarts (the lease is taken back at once);
        # without one every process is a new holder and waits for the old lease to expire.
        ctx.settings.instance_id or f"{socket.gethostname()}-{os.getpid()}-{wall_clock()}",
        ttl_s=ctx.settings.strategy_lease_ttl_s,
        log=ctx.log,
    )
    snapshots = snapshot_keeper(ctx.settings.pg_dsn, name, ctx.log)
    ctx.cleanups.append(snapshots.close)
    runner = StrategyRunner(
        ctx.bus,
        ctx.log,
        instance,
        ctx.settings.venue,
        wall_clock,
        symbols=ctx.settings.symbols,
        lease=lease,
        snapshots=snapshots,
        policy=SnapshotPolicy(
            clock=wall_clock,
            interval_ns=int(ctx.settings.snapshot_interval_s * 1e9),
            every_events=ctx.settings.snapshot_every_events,
        ),
        max_replay=ctx.settings.recovery_max_replay,
        order_venues=ctx.settings.venues,
    )
    service = StrategyService(runner)
    ctx.details = runner.details
    ctx.log.info("strategy_configured", strategy=name, kind=instance.kind, config=repr(instance.config))
    ctx.cleanups.append(runner.stop)
    for subject in INPUT_SUBJECTS:
        await ctx.bus.subscribe_core(subject, service.on_market_event)
    consuming = False

    async def acquired(token: int) -> None:
        nonlocal consuming
        await runner.on_lease_acquired(token)
        if not consuming:  # a standby does not pull commands it would only have to bounce
            consuming = True
            # Market data from where recovery (snapshot + tail) ended; on a later re-acquisition the
            # runner skips what its new recovery already covered (`on_market_data`).
            live_from = runner.recovery.live_from if runner.recovery is not None else None
            await ctx.bus.consume(
                stream=subjects.STREAM_MARKET_DATA.name,
                durable=subjects.strategy_market_data_consumer(name),
                filter_subjects=list(MARKET_SUBJECTS),
                handler=service.on_market_data,
                batch=1,  # a larger pull batch lingers waiting to fill: cascades are timed to the second
                start_sequence=live_from,
                deliver_policy=DeliverPolicy.NEW,  # only without a recovery: never the whole history
            )
            await ctx.bus.consume(
                stream=subjects.STREAM_SIGNALS.name,
                durable=subjects.strategy_commands_consumer(name),
                filter_subjects=[subjects.cmd_strategy_all(name)],
                handler=service.on_command,
            )

    runner.keep_task = ctx.spawn(
        lease.keep(on_acquired=acquired, on_lost=runner.on_lease_lost), f"strategy-{name}-lease"
    )
    ctx.spawn(service.run(0.5), f"strategy-{name}-ticks")


def run(argv: list[str] | None = None) -> None:
    """Entry point: `--name NAME` overrides `BULWARK_STRATEGY_NAME`."""
    parser = argparse.ArgumentParser(prog="services.strategy.main", description="run one strategy instance")
    parser.add_argument("--name", help="strategy instance name (default: BULWARK_STRATEGY_NAME)")
    parser.add_argument("--config", help="strategy config TOML (default: BULWARK_STRATEGY_CONFIG)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.name:
        os.environ["BULWARK_STRATEGY_NAME"] = args.name
    if args.config:
        os.environ["BULWARK_STRATEGY_CONFIG"] = args.config
    main(subjects.strategy_component(Settings.from_env().strategy_name), setup)


if __name__ == "__main__":
    run()

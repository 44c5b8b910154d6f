"""strategy process: one strategy instance per OS process (FM-C2 isolation).

`python -m services.strategy.main --name cascade-fade` (or `BULWARK_STRATEGY_NAME`); parameters
come from `BULWARK_STRATEGY_CONFIG` (TOML, see docs/strategies.md). The component is
`strategy-<name>`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from libs.runtime.service import ServiceContext, main
from libs.settings import Settings
from proto import subjects

from .config import instance_config, read_config_file
from .handlers import INPUT_SUBJECTS, StrategyRunner


async def setup(ctx: ServiceContext) -> None:
    """Restore the strategy's state, follow its inputs, serve commands, tick every 500 ms.

    Raises:
        StrategyConfigError: the instance cannot be configured (unknown kind, bad parameter).
    """
    name = ctx.settings.strategy_name
    instance = instance_config(name, read_config_file(ctx.settings.strategy_config))
    runner = StrategyRunner(ctx.bus, ctx.log, instance, ctx.settings.venue, time.time_ns, symbols=ctx.settings.symbols)
    ctx.details = runner.details
    ctx.log.info("strategy_configured", strategy=name, kind=instance.kind, config=repr(instance.config))
    await runner.start()
    ctx.cleanups.append(runner.stop)
    for subject in INPUT_SUBJECTS:
        await ctx.bus.subscribe_core(subject, runner.on_market_event)
    await ctx.bus.consume(
        stream=subjects.STREAM_SIGNALS.name,
        durable=f"strategy-{name}-commands",
        filter_subjects=[f"cmd.strategy.{name}.>"],
        handler=runner.on_command,
    )
    ctx.spawn(runner.run(0.5), f"strategy-{name}-ticks")


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

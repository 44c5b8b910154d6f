"""strategy process: `python -m services.strategy.main` (which strategy: BULWARK_STRATEGY_NAME)."""

from __future__ import annotations

import time

from libs.runtime.service import ServiceContext, main
from libs.settings import Settings
from proto import subjects

from .domain import ImbalanceConfig, ImbalanceStrategy
from .handlers import StrategyRunner

STRATEGIES = {"imbalance": (ImbalanceStrategy, ImbalanceConfig)}


async def setup(ctx: ServiceContext) -> None:
    """Restore the strategy's state, follow trades and positions, serve commands, tick every 500 ms."""
    name = ctx.settings.strategy_name
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    strategy_cls, config_cls = STRATEGIES[name]
    runner = StrategyRunner(
        ctx.bus, ctx.log, strategy_cls(name, config_cls.from_env()), ctx.settings.venue, time.time_ns
    )
    ctx.details = runner.details
    for subject in ("md.trade.>", "evt.position.>"):
        await ctx.bus.subscribe_core(subject, runner.on_market_event)
    await runner.start()
    await ctx.bus.consume(
        stream=subjects.STREAM_SIGNALS.name,
        durable=f"strategy-{name}-commands",
        filter_subjects=[f"cmd.strategy.{name}.>"],
        handler=runner.on_command,
    )
    ctx.spawn(runner.run(0.5), f"strategy-{name}-ticks")


def run() -> None:
    """Entry point."""
    main(subjects.strategy_component(Settings.from_env().strategy_name), setup)


if __name__ == "__main__":
    run()

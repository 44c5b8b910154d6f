"""The watchdog's evaluation round, once a second: adopt a level someone else persisted, observe
(heartbeats, hot state, links, resources, latencies), evaluate, and apply the effects; plus how the
evaluator is built from settings and the health and level persisted in KV.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from libs.clock import Clock
from libs.heartbeat import HeartbeatTracker
from libs.runtime.service import ServiceContext
from libs.settings import Settings
from proto import subjects
from proto.enums import DegradationLevel
from proto.kv import DegradationLevelValue, HealthValue
from services.watchdog import adapters, handlers
from services.watchdog.evaluator import WatchdogEvaluator
from services.watchdog.observer import Observer
from services.watchdog.rules import Thresholds

EVALUATION_PERIOD_S = 1.0


def thresholds_from(settings: Settings) -> Thresholds:
    """The evaluator's thresholds with the operator-tunable ones taken from settings."""
    return Thresholds(
        memory_max_pct=settings.watchdog_memory_max_pct,
        cpu_max_pct=settings.watchdog_cpu_max_pct,
        latency_floor_ms=settings.watchdog_latency_floor_ms,
        recovery_hold_ns=int(settings.watchdog_recovery_hold_s * 1e9),
        paper_venue=settings.paper_venue,
        backup_venue=settings.backup_venue,
    )


async def evaluator_from_kv(ctx: ServiceContext, clock: Clock) -> WatchdogEvaluator:
    """An evaluator that starts at the level and health persisted in KV (their authority, fail closed)."""
    settings = ctx.settings
    level, _ = await adapters.read_kv_value(ctx.bus, ctx.log, subjects.KEY_DEGRADATION_LEVEL, DegradationLevelValue)
    health, _ = await adapters.read_kv_value(ctx.bus, ctx.log, subjects.KEY_HEALTH, HealthValue)
    evaluator = WatchdogEvaluator(
        clock,
        grace_ns=int(settings.heartbeat_timeout_s * 1e9),
        initial_level=level.level if level is not None else None,
        initial_health=health.health if health is not None else None,
        thresholds=thresholds_from(settings),
    )
    if evaluator.level == DegradationLevel.HARD_SHUTDOWN:
        ctx.log.warning("hard_shutdown_kept", action_taken="degradation level stays HARD_SHUTDOWN")
    return evaluator


async def evaluation_loop(
    ctx: ServiceContext,
    tracker: HeartbeatTracker,
    observer: Observer,
    evaluator: WatchdogEvaluator,
    on_evaluated: Callable[[], None],
    clock: Clock,
) -> None:
    """Evaluate every `EVALUATION_PERIOD_S` until cancelled; a failed round is logged and retried."""
    settings = ctx.settings
    last_checks: dict[str, bool] = {}
    while True:
        await asyncio.sleep(EVALUATION_PERIOD_S)
        try:
            persisted, revision = await adapters.read_kv_value(
                ctx.bus, ctx.log, subjects.KEY_DEGRADATION_LEVEL, DegradationLevelValue
            )
            if persisted is not None:
                evaluator.adopt_level(persisted.level)
            views = tracker.view(clock())
            evaluation = evaluator.evaluate(
                views,
                symbols=await observer.symbols(),
                links=observer.link_observations(),
                resources=adapters.measure_resources(settings.watchdog_disk_path),
                latencies=observer.latencies(views),
            )
            await handlers.apply_evaluation(
                ctx, evaluation, level_revision=revision, checks_changed=evaluation.checks != last_checks
            )
            last_checks = evaluation.checks
            on_evaluated()
        except asyncio.CancelledError:
            raise
        except handlers.LevelWriteConflict as exc:
            ctx.log.warning("degradation_level_conflict", error=str(exc)[:200], action_taken="re-evaluate")
            evaluator.forget_level()
        except Exception as exc:
            ctx.log.exception("evaluation_failed", exc, action_taken="retry next period")

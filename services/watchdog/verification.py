"""The periodic full-replay verification of the projections (SPEC §8 "a periodic full replay verifies
that the log rebuilds the same state"): run it, publish the outcome, raise `projections-diverged` on
a difference and resolve it once consistent again; paused while risk pauses background work (CB-4).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from libs import projections
from libs.bus import Bus
from libs.runtime.service import ServiceContext
from proto import subjects
from proto.enums import AlertSeverity
from proto.kv import BackgroundWorkValue
from proto.messages import AlertRaised, AlertResolved, ProjectionsVerified
from services.watchdog import adapters, handlers
from services.watchdog.alerts import AlertRouter

PROJECTIONS_ALERT = "projections-diverged"
SAMPLE_DIFFERENCES = 5


async def verify_projections(bus: Bus, dsn: str) -> ProjectionsVerified:
    """Run `libs.projections.verify` (the same check as `bulwark projections verify`) and describe it."""
    started = time.monotonic()
    try:
        result = await projections.verify(bus, dsn)
    except Exception as exc:  # noqa: BLE001 - any failure is reported as the outcome `failed`, never raised
        return ProjectionsVerified(
            outcome="failed",
            consistent=False,
            error=f"{type(exc).__name__}: {str(exc)[:500]}",
            duration_ms=int((time.monotonic() - started) * 1000),
        )
    differences: dict[str, list[Any]] = result.get("differences", {})
    counts = {table: len(rows) for table, rows in differences.items()}
    consistent = bool(result.get("consistent"))
    return ProjectionsVerified(
        outcome="consistent" if consistent else "diverged",
        consistent=consistent,
        events=int(result.get("rebuild", {}).get("events", 0)),
        differences=counts,
        sample={table: rows[:SAMPLE_DIFFERENCES] for table, rows in differences.items() if rows},
        duration_ms=int((time.monotonic() - started) * 1000),
    )


class ProjectionsVerifier:
    """Verifies the projections against the ORDERS log, now (`verify_once`) or every period (`loop`).

    Args:
        ctx: the service context.
        router: the sinks' open alerts (is `projections-diverged` open?).
    """

    def __init__(self, ctx: ServiceContext, router: AlertRouter) -> None:
        self._ctx = ctx
        self._router = router
        self.last_verification: dict[str, Any] | None = None
        """The outcome of the last verification (kept in the watchdog snapshot)."""
        self.verifications = 0

    async def background_paused(self) -> bool:
        """CB-4: risk paused background work (KV `background_work`)."""
        value, _ = await adapters.read_kv_value(
            self._ctx.bus, self._ctx.log, subjects.KEY_BACKGROUND_WORK, BackgroundWorkValue
        )
        return value is not None and value.paused

    async def verify_once(self) -> ProjectionsVerified:
        """Rebuild the projections from the ORDERS stream and compare (`libs.projections.verify`); publish
        the outcome, raise `projections-diverged` on a difference, resolve it once consistent again."""
        ctx = self._ctx
        result = await verify_projections(ctx.bus, ctx.settings.pg_dsn)
        self.verifications += 1
        self.last_verification = {
            "outcome": result.outcome,
            "ts_ns": result.ts_event_ns,
            "events": result.events,
            "differences": dict(result.differences),
        }
        await ctx.bus.publish(subjects.EVT_PROJECTIONS_VERIFIED, result)
        match result.outcome:
            case "diverged":
                ctx.log.error(
                    "projections_diverged",
                    differences=dict(result.differences),
                    sample=result.sample,
                    action_taken="alert raised; `bulwark projections rebuild --apply` after a review",
                )
                await handlers.publish_alert(
                    ctx,
                    AlertRaised(
                        key=PROJECTIONS_ALERT,
                        severity=AlertSeverity.P1,
                        component=subjects.WATCHDOG,
                        title="projections differ from what the ORDERS log rebuilds (FM-C3)",
                        details={"differences": dict(result.differences), "sample": result.sample},
                    ),
                )
            case "consistent":
                ctx.log.info("projections_verified", events=result.events, duration_ms=result.duration_ms)
                if PROJECTIONS_ALERT in self._router.open:
                    await handlers.publish_alert(
                        ctx,
                        AlertResolved(
                            key=PROJECTIONS_ALERT,
                            component=subjects.WATCHDOG,
                            reason="projections rebuilt from the log equal the live tables again",
                        ),
                    )
            case _:
                ctx.log.warning("projections_verification_failed", error=result.error, action_taken="retry next period")
        return result

    async def loop(self, interval_s: float) -> None:
        """Verify every `interval_s` (0: off) unless background work is paused."""
        if interval_s <= 0:
            return
        while True:
            await asyncio.sleep(interval_s)
            try:
                if await self.background_paused():
                    self._ctx.log.info("projections_verification_skipped", reason="background work paused (CB-4)")
                    continue
                await self.verify_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - bus hiccup: logged, next period tries again
                self._ctx.log.warning("projections_verification_failed", error=f"{type(exc).__name__}: {exc}"[:300])

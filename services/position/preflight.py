"""The venue preflight of a position process: run the checks of `libs.binance.preflight` at start
(before the first reconciliation, so before any order of this process) and again at every
reconnect of the order link (its `LinkStateChanged` back to CONNECTED), publish the result
(KV `preflight.<venue>`, shown in `/v1/status` and by `bulwark preflight`) and act on it:

- a failed check HALTS trading through risk (`svc.risk.halt`, the path an operator's halt takes),
  with every failed check in the reason, and raises a P1 alert; the process itself keeps running
  (reconciliation, stops and cancels go on);
- passing again never resumes trading by itself: whoever halts for a reason they cannot see
  lifted must not be overruled by a machine, so the operator resumes (`POST /v1/trading/resume`)
  after reading the preflight; the alert is resolved;
- a venue that does not answer at all is an outage, not a verdict: the result says so, nothing is
  halted for it (the order link is down anyway), and the checks run again once the link is back;
- the venue's own rate limits (exchangeInfo `rateLimits`, and the account's order limits from
  `GET /fapi/v1/rateLimit/order`, the lower of the two) replace the request budget's (FM-N2); the
  `rate_limits` check's message names what was loaded;
- on the real-money profile (`BULWARK_VENUE_PROFILE=binance`) every start of the process halts
  trading, whatever the checks say: `bulwark up --venue binance` starts HALTED, and so do compose
  and Kubernetes, where nothing else could halt before the first order; a restart of the only
  process that sends orders to a real-money account wants a human look anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec

from libs.binance.preflight import (
    REAL_MONEY_PROFILE,
    PreflightConfig,
    PreflightReport,
    PreflightVenue,
    check_profile,
    parse_leverage,
    run_preflight,
)
from libs.clock import Clock
from libs.logging import Logger
from libs.ratelimit import RateBudget
from libs.runtime.service import ServiceContext
from libs.settings import Settings
from proto import subjects
from proto.codec import decode_as
from proto.enums import AlertSeverity, ConnectionState
from proto.kv import PreflightCheckValue, PreflightValue, encode_value
from proto.messages import AlertRaised, AlertResolved, LinkStateChanged
from proto.replies import TradingControlRequest

HALT_RETRY_S = 1.0
INCOMPLETE_RETRY_S = 5.0
"""An incomplete preflight (the venue gave no definite answer) is run again after this, even when the
order link stays up: entries wait for a verdict (`services.position.preflight_gate`)."""
HALT_ATTEMPTS_INLINE = 30
"""Tries before a halt request goes on in the background: a risk that stays down must not keep
position from reconciling, cancelling and protecting (nothing is approved without risk anyway)."""
START = "start"
RECONNECT = "reconnect"
REAL_MONEY_START_REASON = (
    "real-money venue (profile binance): trading starts HALTED; read the preflight (`bulwark preflight`, "
    "/v1/status) and resume (POST /v1/trading/resume) when it is all ok"
)


def preflight_config(
    settings: Settings, profile: str | None = None, rest_url: str | None = None
) -> tuple[PreflightConfig, list[PreflightCheckValue]]:
    """The account setup the settings ask for, and a failed `configuration` check per unusable setting
    (and for a real-money URL under another profile than `binance`)."""
    problems: list[PreflightCheckValue] = []
    mismatch = check_profile(profile or settings.venue_profile, rest_url or settings.venue_rest_url)
    if mismatch is not None:
        problems.append(mismatch)
    try:
        leverage = parse_leverage(settings.venue_leverage, settings.symbols)
    except ValueError as exc:
        leverage = {}
        problems.append(PreflightCheckValue(name="configuration", ok=False, message=f"BULWARK_VENUE_LEVERAGE: {exc}"))
    margin_type = settings.venue_margin_type.strip().upper()
    if margin_type not in ("CROSSED", "ISOLATED"):
        problems.append(
            PreflightCheckValue(
                name="configuration",
                ok=False,
                message=f"BULWARK_VENUE_MARGIN_TYPE={settings.venue_margin_type!r}: use CROSSED or ISOLATED",
            )
        )
        margin_type = "CROSSED"
    try:
        minimum = Decimal(settings.venue_min_balance.strip() or "0")
    except InvalidOperation:
        minimum = Decimal(0)
        problems.append(
            PreflightCheckValue(
                name="configuration",
                ok=False,
                message=f"BULWARK_VENUE_MIN_BALANCE={settings.venue_min_balance!r}: not a number",
            )
        )
    config = PreflightConfig(
        symbols=settings.symbols,
        leverage=leverage,
        margin_type=margin_type,
        multi_assets=settings.venue_multi_assets,
        min_available_balance=minimum,
    )
    return config, problems


class PreflightRunner:
    """Runs the preflight of one venue account and acts on its outcome.

    Args:
        bus: the message bus (KV, alerts, the halt request).
        log: structured logger.
        venue: the venue's REST client (any `PreflightVenue`).
        config: the account setup wanted.
        venue_name: the venue's name (KV key, alerts).
        component: this process's component name (alerts, the halt's operator).
        profile: the venue profile the system runs (shown with the result).
        budget: the request budget that takes the venue's rate limits (None: not adjusted).
        clock: wall clock in ns.
        problems: failed checks found before asking the venue (unusable settings).
        on_result: told every finished run's report (the order path's preflight gate).
    """

    def __init__(
        self,
        bus: Any,
        log: Logger,
        venue: PreflightVenue,
        config: PreflightConfig,
        *,
        venue_name: str,
        component: str,
        profile: str,
        budget: RateBudget | None,
        clock: Clock,
        problems: list[PreflightCheckValue] | None = None,
        on_result: Callable[[PreflightReport], None] | None = None,
    ) -> None:
        self.bus = bus
        self.log = log
        self.venue = venue
        self.config = config
        self.venue_name = venue_name
        self.component = component
        self.profile = profile
        self.budget = budget
        self.clock = clock
        self.problems = list(problems or [])
        self.on_result = on_result
        self.last: PreflightReport | None = None
        self.rerun = asyncio.Event()
        self._lock = asyncio.Lock()
        self._alerted = False
        self._halting: set[asyncio.Task[bool]] = set()

    @property
    def alert_key(self) -> str:
        return f"venue-preflight:{self.venue_name}"

    async def run(self, trigger: str) -> PreflightReport:
        """One preflight: check, publish, halt on a failure. Never raises for a venue's answer."""
        async with self._lock:
            report = await run_preflight(self.venue, self.config, self.clock)
            report.checks[:0] = self.problems
            self.last = report
            if report.limits is not None and self.budget is not None:
                self._apply_limits(report)
            value = PreflightValue(
                venue=self.venue_name,
                ok=report.ok,
                checks=report.checks,
                profile=self.profile,
                trigger=trigger,
                ts_ns=self.clock(),
            )
            if self.on_result is not None:
                self.on_result(report)  # before publishing: the gate must not wait for the bus
            await self.bus.kv_put(subjects.key_preflight(self.venue_name), encode_value(value))
            failed = [check.name for check in report.failures()]
            definite_failure = report.reachable and not report.ok
            if trigger == START and self.profile == REAL_MONEY_PROFILE and not definite_failure:
                await self.request_halt(f"{self.component}: {REAL_MONEY_START_REASON}")
            if report.ok:
                self.log.info("preflight_passed", trigger=trigger, checks=len(report.checks))
                if self._alerted:
                    self._alerted = False
                    await self.bus.publish(
                        subjects.EVT_ALERT_RESOLVED,
                        AlertResolved(
                            key=self.alert_key,
                            component=self.component,
                            reason="preflight passes again; trading stays HALTED until an operator resumes",
                        ),
                    )
            elif not definite_failure:
                self.log.warning(
                    "preflight_incomplete",
                    trigger=trigger,
                    reason=report.reason(),
                    action_taken="run again on reconnect",
                )
            else:
                reason = f"{self.component}: venue preflight failed ({trigger}): {report.reason()}"
                self.log.error("preflight_failed", trigger=trigger, failed=failed, action_taken="halt trading")
                await self._alert(reason, failed)
                await self.request_halt(reason[:1000])
            return report

    def _apply_limits(self, report: PreflightReport) -> None:
        assert report.limits is not None and self.budget is not None
        limits = report.limits
        if limits.weight_limit_1m:
            self.budget.weight_limit_1m = limits.weight_limit_1m
        if limits.order_limit_10s:
            self.budget.order_limit_10s = limits.order_limit_10s
        if limits.order_limit_1m:
            self.budget.order_limit_1m = limits.order_limit_1m

    async def _alert(self, reason: str, failed: list[str]) -> None:
        self._alerted = True
        alert = AlertRaised(
            key=self.alert_key,
            severity=AlertSeverity.P1,
            component=self.component,
            title="venue preflight failed: trading halted",
            details={"reason": reason[:1000], "failed": failed},
        )
        await self.bus.publish(subjects.EVT_ALERT_RAISED, alert)

    async def request_halt(self, reason: str) -> None:
        """Halt through risk: a few tries here, then on in the background until risk answers."""
        if await self.halt(reason, HALT_ATTEMPTS_INLINE):
            return
        self.log.error("preflight_halt_pending", reason=reason, action_taken="keep asking risk in the background")
        task = asyncio.create_task(self.halt(reason), name="preflight-halt")
        self._halting.add(task)
        task.add_done_callback(self._halting.discard)

    async def halt(self, reason: str, attempts: int | None = None) -> bool:
        """Ask risk to HALT until it answers (risk may still be starting); False after `attempts` tries."""
        payload = msgspec.json.encode(TradingControlRequest(operator=self.component, reason=reason))
        tried = 0
        while attempts is None or tried < attempts:
            tried += 1
            try:
                reply = await self.bus.request(subjects.SVC_RISK_HALT, payload)
            except Exception as exc:  # noqa: BLE001 - risk down or starting: ask again, the halt must land
                self.log.warning(
                    "preflight_halt_request_failed", error=f"{type(exc).__name__}: {exc}"[:300], attempt=tried
                )
                await asyncio.sleep(HALT_RETRY_S)
                continue
            self.log.warning("trading_halt_requested", reason=reason, reply=reply[:200].decode(errors="replace"))
            return True
        return False

    async def on_link(self, msg: Any) -> None:
        """The order link changed: back to CONNECTED after being down (or after an incomplete run)
        asks for another preflight."""
        try:
            event = decode_as(msg.data, LinkStateChanged)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.log.warning("preflight_link_event_unreadable", error=str(exc)[:200])
            return
        if event.current != ConnectionState.CONNECTED:
            return
        incomplete = self.last is None or not self.last.reachable
        if event.previous != ConnectionState.CONNECTED or incomplete:
            self.rerun.set()

    async def rerun_forever(self) -> None:
        """Run the preflight whenever `on_link` asks for it."""
        while True:
            if self.last is not None and not self.last.reachable:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.rerun.wait(), INCOMPLETE_RETRY_S)
            else:
                await self.rerun.wait()
            self.rerun.clear()
            try:
                await self.run(RECONNECT)
            except Exception as exc:  # noqa: BLE001 - the bus failed publishing; the next reconnect runs it again
                self.log.error("preflight_run_failed", error=f"{type(exc).__name__}: {exc}"[:300])


async def start_preflight(
    ctx: ServiceContext,
    venue: PreflightVenue,
    budget: RateBudget | None,
    venue_name: str,
    component: str,
    clock: Clock = time.time_ns,
    on_result: Callable[[PreflightReport], None] | None = None,
) -> PreflightRunner:
    """The position process's hook: the start-up preflight (done when this returns, before any
    reconciliation or order), then one at every reconnect of the order link; `on_result` is told
    each run's report."""
    settings = ctx.settings
    profile = settings.venue_profile if venue_name == settings.venue else "backup"
    config, problems = preflight_config(settings, profile, settings.venue_account(venue_name).rest_url)
    runner = PreflightRunner(
        ctx.bus,
        ctx.log,
        venue,
        config,
        venue_name=venue_name,
        component=component,
        profile=profile,
        budget=budget,
        clock=clock,
        problems=problems,
        on_result=on_result,
    )
    await ctx.bus.subscribe_core(subjects.evt_link(venue_name, subjects.ORDER_LINK), runner.on_link)
    await runner.run(START)
    ctx.spawn(runner.rerun_forever(), "preflight")
    return runner

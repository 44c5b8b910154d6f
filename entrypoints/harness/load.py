"""Operator order load for e2e tests, chaos experiments and operators: a deterministic script of
orders sent through the gateway at a bounded rate, and the checks that compare what the system
believes with what the venue recorded.

- `build_script` makes the same N steps for the same seed: market and limit orders on both sides,
  limit orders that rest (and are cancelled later) or cross at once, repeated idempotency keys and
  cancels. `expected_outcome` is what an uninterrupted run of it must end with.
- `LoadDriver` sends the script like a careful client (FM-C8/C9): the same `Idempotency-Key` again
  on a connection error, 5xx, 429 or 409 `request_in_progress`, until a deadline; every answer is
  recorded. It can kill processes at chosen steps (`KillPlan`), concurrently with the order flow.
- `collect_outcome`, `check_consistency`, `comparable` and `check_books` read the gateway and the
  simulator (`/_sim/state`, `/_sim/book`) and say what differs.
- `recovery_from_events` reads `/v1/events` for how long each killed component took to come back.

Compared across runs (and with `expected_outcome`): per script step its symbol, side, type,
quantity, final venue status and executed quantity, the set of client order ids on the venue, and
the signed position per symbol. Not compared: fill prices and order times, which depend on when in
the replayed market an order arrived (the two runs do not see the same book at the same step).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from typing import Any, Literal

import httpx

from entrypoints.harness.system import market_streams_connected
from libs.ids import client_order_id_for

StepKind = Literal["submit", "repeat", "cancel"]

TERMINAL_VENUE_STATUSES = frozenset({"FILLED", "CANCELED", "EXPIRED", "REJECTED"})
RETRY_STATUS_CODES = frozenset({429, 500, 502, 503, 504})
INFRA_TARGETS = ("nats", "postgres", "valkey")

# Tick size, and quantities that clear the venue's minimum notional also at 0.8 x the reference price.
SYMBOL_RULES: dict[str, tuple[Decimal, tuple[str, ...]]] = {
    "BTCUSDT": (Decimal("0.10"), ("0.003", "0.004", "0.005")),
    "ETHUSDT": (Decimal("0.01"), ("0.02", "0.03", "0.04")),
}
# Net position the script never exceeds per symbol (in units of the smallest quantity), far below
# the risk limit even halved by REDUCED_FUNCTIONALITY.
NET_CAP_UNITS = 8


@dataclass(frozen=True)
class Step:
    """One thing the script does: submit an order, repeat an earlier key, or cancel an order."""

    index: int
    kind: StepKind
    key: str
    symbol: str
    body: dict[str, str] | None = None
    resting: bool = False

    @property
    def client_order_id(self) -> str:
        return client_order_id_for(self.key)


@dataclass(frozen=True)
class Script:
    seed: int
    steps: tuple[Step, ...]

    def submits(self) -> list[Step]:
        return [step for step in self.steps if step.kind == "submit"]


def _round_to_tick(price: Decimal, tick: Decimal) -> Decimal:
    return (price / tick).to_integral_value(rounding=ROUND_DOWN) * tick


def build_script(n: int, seed: int, reference_prices: dict[str, Decimal], key_prefix: str | None = None) -> Script:
    """A deterministic script of `n` steps (plus the final cancels of every order still resting).

    Args:
        n: number of steps before the final cancels.
        seed: the same seed and prices give the same script.
        reference_prices: a recent price per symbol; resting limits are placed 3 % away from it and
            crossing limits 2 % through it (inside the venue's ±5 % PERCENT_PRICE band, which risk
            enforces), so whether a limit fills does not depend on timing over a run.
        key_prefix: prefix of every idempotency key (default `load-<seed>`); two runs compared
            with each other must use the same one.
    """
    rng = random.Random(seed)
    prefix = key_prefix or f"load-{seed}"
    symbols = sorted(symbol for symbol in reference_prices if symbol in SYMBOL_RULES)
    if not symbols:
        raise ValueError(f"no reference price for any of {sorted(SYMBOL_RULES)}")
    net_units = dict.fromkeys(symbols, 0)
    steps: list[Step] = []
    submitted: list[Step] = []
    resting: list[Step] = []

    def add_submit(symbol: str, body: dict[str, str], is_resting: bool) -> None:
        step = Step(len(steps), "submit", f"{prefix}-{len(steps):04d}", symbol, body, is_resting)
        steps.append(step)
        submitted.append(step)
        if is_resting:
            resting.append(step)

    for _ in range(n):
        roll = rng.random()
        if roll < 0.10 and submitted:
            earlier = rng.choice(submitted)
            steps.append(Step(len(steps), "repeat", earlier.key, earlier.symbol, earlier.body, earlier.resting))
            continue
        if roll < 0.25 and resting:
            target = resting.pop(rng.randrange(len(resting)))
            steps.append(Step(len(steps), "cancel", target.key, target.symbol))
            continue
        symbol = rng.choice(symbols)
        tick, quantities = SYMBOL_RULES[symbol]
        quantity = rng.choice(quantities)
        reference = reference_prices[symbol]
        side = rng.choice(("BUY", "SELL"))
        kind = rng.random()
        if kind < 0.30:
            # Inside the venue's PERCENT_PRICE band (±5 % of the mark): farther is refused with 422.
            far = Decimal("0.97") if side == "BUY" else Decimal("1.03")
            price = _round_to_tick(reference * far, tick)
            add_submit(symbol, _body(symbol, side, "LIMIT", quantity, price), True)
            continue
        units = int(Decimal(quantity) / Decimal(quantities[0]))
        signed = units if side == "BUY" else -units
        if abs(net_units[symbol] + signed) > NET_CAP_UNITS:
            side, signed = ("SELL", -units) if side == "BUY" else ("BUY", units)
        net_units[symbol] += signed
        if kind < 0.45:
            through = Decimal("1.02") if side == "BUY" else Decimal("0.98")
            price = _round_to_tick(reference * through, tick)
            add_submit(symbol, _body(symbol, side, "LIMIT", quantity, price), False)
        else:
            add_submit(symbol, _body(symbol, side, "MARKET", quantity), False)
    for target in resting:
        steps.append(Step(len(steps), "cancel", target.key, target.symbol))
    return Script(seed=seed, steps=tuple(steps))


def _body(symbol: str, side: str, order_type: str, quantity: str, price: Decimal | None = None) -> dict[str, str]:
    body = {"symbol": symbol, "side": side, "type": order_type, "quantity": quantity}
    if price is not None:
        body["price"] = str(price)
    return body


def expected_outcome(script: Script) -> dict[str, Any]:
    """What an uninterrupted run of `script` ends with, in the shape `comparable` returns."""
    steps: dict[int, tuple[str, ...]] = {}
    positions: dict[str, Decimal] = {}
    for step in script.submits():
        assert step.body is not None
        quantity = Decimal(step.body["quantity"])
        if step.resting:
            status, executed = "CANCELED", Decimal(0)
        else:
            status, executed = "FILLED", quantity
            signed = executed if step.body["side"] == "BUY" else -executed
            positions[step.symbol] = positions.get(step.symbol, Decimal(0)) + signed
        steps[step.index] = _step_row(step, status, executed)
    return {
        "steps": steps,
        "client_order_ids": sorted(step.client_order_id for step in script.submits()),
        "positions": {symbol: qty for symbol, qty in positions.items() if qty != 0},
    }


def _step_row(step: Step, status: str, executed: Decimal) -> tuple[str, ...]:
    assert step.body is not None
    return (
        step.symbol,
        step.body["side"],
        step.body["type"],
        str(Decimal(step.body["quantity"]).normalize()),
        status,
        str(executed.normalize()),
    )


# --------------------------------------------------------------------------- records


@dataclass
class Attempt:
    """One HTTP exchange of a step."""

    key: str
    started_ns: int
    elapsed_s: float
    status_code: int | None
    body: Any = None
    error: str | None = None


@dataclass
class StepResult:
    step: Step
    attempts: list[Attempt] = field(default_factory=list)
    final_key: str | None = None
    final_status_code: int | None = None
    final_body: Any = None
    resubmitted_keys: list[str] = field(default_factory=list)
    denied_keys: list[str] = field(default_factory=list)

    @property
    def order_status(self) -> str | None:
        return self.final_body.get("status") if isinstance(self.final_body, dict) else None


@dataclass
class KillRecord:
    """One SIGKILL the driver sent, and how long the target took to come back."""

    target: str
    pid: int
    step: int
    killed_ns: int
    restart_s: float | None = None
    new_pid: int | None = None
    system_ready_s: float | None = None
    events: dict[str, float | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "pid": self.pid,
            "step": self.step,
            "restart_s": self.restart_s,
            "new_pid": self.new_pid,
            "system_ready_s": self.system_ready_s,
            "events": self.events,
        }


@dataclass
class LoadReport:
    results: list[StepResult]
    kills: list[KillRecord]
    duration_s: float
    # What the venue held before the run (other orders on a shared system): not the script's doing.
    earlier_client_order_ids: frozenset[str] = frozenset()
    earlier_positions: dict[str, Decimal] = field(default_factory=dict)

    def accepted_keys(self) -> dict[str, Step]:
        """Idempotency key -> its submit step, for every key the gateway did not deny."""
        accepted: dict[str, Step] = {}
        for result in self.results:
            if result.step.kind == "submit" and result.final_key and result.order_status not in (None, "DENIED"):
                accepted[result.final_key] = result.step
        return accepted

    def denied_keys(self) -> list[str]:
        return [key for result in self.results for key in result.denied_keys]

    def unfinished(self) -> list[StepResult]:
        """Steps that never got a decisive answer before their deadline."""
        return [result for result in self.results if result.final_status_code is None]


# --------------------------------------------------------------------------- targets


PidLookup = Callable[[str], Awaitable[int | None]]


@dataclass(frozen=True)
class KillPlan:
    """Kill `target` (a component name from `/v1/status`, or nats/postgres/valkey) at `step`,
    `delay_s` after that step's request started (so the kill lands while it is in flight)."""

    step: int
    target: str
    delay_s: float = 0.0
    between_requests: bool = False


def random_kill_plan(
    seed: int, steps: int, targets: list[str], *, first: int = 3, max_delay_s: float = 0.5
) -> list[KillPlan]:
    """One kill of each of `targets` at seeded random steps (spread over the script) and delays."""
    rng = random.Random(seed)
    order = list(targets)
    rng.shuffle(order)
    usable = range(first, max(first + len(order), steps - 2))
    at = sorted(rng.sample(usable, len(order)))
    return [
        KillPlan(step, target, round(rng.uniform(0, max_delay_s), 3)) for step, target in zip(at, order, strict=True)
    ]


async def _status(client: httpx.AsyncClient) -> dict[str, Any] | None:
    try:
        response = await client.get("/v1/status", timeout=5.0)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    result: dict[str, Any] = response.json()
    return result


async def wait_system_ready(client: httpx.AsyncClient, timeout_s: float) -> dict[str, Any] | None:
    """The status once every component is READY and trading ACTIVE with every symbol VALID, or None."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = await _status(client)
        if status is not None and not not_ready(status):
            return status
        await asyncio.sleep(0.25)
    return None


def not_ready(status: dict[str, Any] | None) -> list[str]:
    """What keeps the system from being ready (empty: ready), for logs and test failures."""
    if status is None:
        return ["no answer from /v1/status"]
    components = status.get("components") or {}
    symbols = status.get("symbols") or {}
    reasons = [f"{name} {comp.get('state')}" for name, comp in components.items() if comp.get("state") != "READY"]
    if not components:
        reasons.append("no components")
    if status.get("trading_state") != "ACTIVE":
        open_breakers = [
            f"{name} ({breaker.get('reason')})"
            for name, breaker in (status.get("breakers") or {}).items()
            if isinstance(breaker, dict) and breaker.get("state") == "OPEN"
        ]
        reasons.append(f"trading {status.get('trading_state')}" + (f", open: {open_breakers}" if open_breakers else ""))
    reasons += [f"{name} {sym.get('hot_state')}" for name, sym in symbols.items() if sym.get("hot_state") != "VALID"]
    if not market_streams_connected(status):
        reasons.append("market streams not connected")
    return reasons


# --------------------------------------------------------------------------- the driver


class LoadDriver:
    """Sends a `Script` through the gateway as a careful operator client would.

    Args:
        client: an httpx client on the gateway with an operator (or admin) token.
        script: what to send.
        rate_per_s: at most this many steps start per second.
        request_deadline_s: how long one step keeps retrying the same key.
        gate: before each submit, wait (bounded) until trading is ACTIVE and the symbol VALID, as a
            careful operator does; without it, orders sent during a halt are DENIED and re-sent.
        max_resubmits: a DENIED submit is sent again under `<key>.r<n>` after the gate, this often.
        infra_pid: pid of an infrastructure server by name (nats/postgres/valkey), for kills.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        script: Script,
        *,
        rate_per_s: float = 4.0,
        request_deadline_s: float = 90.0,
        gate: bool = True,
        gate_timeout_s: float = 60.0,
        max_resubmits: int = 3,
        infra_pid: PidLookup | None = None,
        seed: int = 0,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.client = client
        self.script = script
        self.rate_per_s = rate_per_s
        self.request_deadline_s = request_deadline_s
        self.gate = gate
        self.gate_timeout_s = gate_timeout_s
        self.max_resubmits = max_resubmits
        self.infra_pid = infra_pid
        self.log = log
        self._rng = random.Random(seed)
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._one_kill_at_a_time = asyncio.Lock()
        self.kills: list[KillRecord] = []
        self._final_keys: dict[str, str] = {}

    async def run(self, kills: list[KillPlan] | None = None) -> LoadReport:
        """Run every step in order; kills run alongside. Returns every answer recorded."""
        plans: dict[int, list[KillPlan]] = {}
        for plan in kills or []:
            plans.setdefault(plan.step, []).append(plan)
        started = time.monotonic()
        results: list[StepResult] = []
        kill_tasks: list[asyncio.Task[None]] = []
        interval = 1.0 / self.rate_per_s if self.rate_per_s > 0 else 0.0
        try:
            for step in self.script.steps:
                step_start = time.monotonic()
                for plan in plans.get(step.index, []):
                    kill_tasks.append(asyncio.create_task(self._kill(plan)))
                    await asyncio.sleep(0)
                results.append(await self._run_step(step))
                pause = interval - (time.monotonic() - step_start)
                if pause > 0:
                    await asyncio.sleep(pause)
            if kill_tasks:
                await asyncio.gather(*kill_tasks)
        finally:
            for task in kill_tasks:
                task.cancel()
            await asyncio.gather(*kill_tasks, return_exceptions=True)
        return LoadReport(results=results, kills=self.kills, duration_s=time.monotonic() - started)

    # ---------------------------------------------------------------- steps

    async def _run_step(self, step: Step) -> StepResult:
        result = StepResult(step=step)
        if step.kind == "cancel":
            await self._cancel(step, result)
            return result
        key = step.key
        for attempt in range(self.max_resubmits + 1):
            if self.gate and step.kind == "submit":
                await self._wait_tradeable(step.symbol)
            await self._submit(step, key, result)
            if step.kind == "submit":
                self._final_keys[step.key] = key
            if result.order_status != "DENIED" or step.kind == "repeat":
                return result
            result.denied_keys.append(key)
            key = f"{step.key}.r{attempt + 1}"
            result.resubmitted_keys.append(key)
            self.log(f"step {step.index}: DENIED ({result.final_body.get('reason')}); re-sent as {key}")
        return result

    async def _wait_tradeable(self, symbol: str) -> None:
        deadline = time.monotonic() + self.gate_timeout_s
        while time.monotonic() < deadline:
            status = await _status(self.client)
            if (
                status is not None
                and status.get("trading_state") == "ACTIVE"
                and (status.get("symbols") or {}).get(symbol, {}).get("hot_state") == "VALID"
                and market_streams_connected(status)
            ):
                return
            await asyncio.sleep(0.25)

    async def _exchange(self, method: str, url: str, key: str, **kwargs: Any) -> Attempt:
        started_ns = time.time_ns()
        start = time.monotonic()
        self._in_flight += 1
        self._idle.clear()
        try:
            response = await self.client.request(method, url, timeout=30.0, **kwargs)
        except httpx.HTTPError as exc:
            return Attempt(key, started_ns, time.monotonic() - start, None, error=f"{type(exc).__name__}: {exc}"[:200])
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text[:500]
        return Attempt(key, started_ns, time.monotonic() - start, response.status_code, body)

    @staticmethod
    def _retryable(attempt: Attempt) -> bool:
        if attempt.status_code is None or attempt.status_code in RETRY_STATUS_CODES:
            return True
        if attempt.status_code == 409 and isinstance(attempt.body, dict):
            return bool(attempt.body.get("error", {}).get("code") == "request_in_progress")
        return False

    @staticmethod
    def _backoff(tries: int) -> float:
        # Short and capped: the point is to be back as soon as the system is (Retry-After is 1-5 s).
        return min(0.25 * 2**tries, 2.0)

    async def _until_decisive(
        self, result: StepResult, key: str, send: Callable[[], Awaitable[Attempt]], decisive: Callable[[Attempt], bool]
    ) -> None:
        """Send (backing off) until an answer is decisive, recording every attempt; the step's final
        answer is that one, none when `request_deadline_s` passed first."""
        deadline = time.monotonic() + self.request_deadline_s
        tries = 0
        while True:
            attempt = await send()
            result.attempts.append(attempt)
            if decisive(attempt):
                result.final_key, result.final_status_code, result.final_body = key, attempt.status_code, attempt.body
                return
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(self._backoff(tries))
            tries += 1

    async def _submit(self, step: Step, key: str, result: StepResult) -> None:
        async def send() -> Attempt:
            return await self._exchange("POST", "/v1/orders", key, json=step.body, headers={"Idempotency-Key": key})

        await self._until_decisive(result, key, send, lambda attempt: not self._retryable(attempt))

    async def _cancel(self, step: Step, result: StepResult) -> None:
        # The order the submit step ended with: a DENIED submit was re-sent under another key.
        key = self._final_keys.get(step.key, step.key)

        async def send() -> Attempt:
            return await self._exchange("DELETE", f"/v1/orders/{client_order_id_for(key)}", key)

        # 404 is not decisive: the order may not be in the projection yet (position restarting, Postgres down).
        await self._until_decisive(
            result, key, send, lambda attempt: attempt.status_code in (202, 409) and not self._retryable(attempt)
        )

    # ---------------------------------------------------------------- kills

    async def _pid(self, target: str) -> int | None:
        if target in INFRA_TARGETS:
            return await self.infra_pid(target) if self.infra_pid is not None else None
        status = await _status(self.client)
        component = (status or {}).get("components", {}).get(target, {})
        pid = component.get("pid")
        return int(pid) if pid and component.get("state") == "READY" else None

    async def _kill(self, plan: KillPlan) -> None:
        # One at a time, each on a healthy system: a kill stacked on an unfinished recovery
        # measures nothing clear.
        async with self._one_kill_at_a_time:
            await self._kill_one(plan)

    async def _kill_one(self, plan: KillPlan) -> None:
        await wait_system_ready(self.client, 120.0)
        pid = await self._pid(plan.target)
        if pid is None:
            self.log(f"kill {plan.target}: no pid; not ready: {not_ready(await _status(self.client))}")
            return
        if plan.between_requests:
            await self._idle.wait()
        await asyncio.sleep(plan.delay_s)
        killed_ns = time.time_ns()
        start = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        record = KillRecord(plan.target, pid, plan.step, killed_ns)
        self.kills.append(record)
        self.log(f"kill -9 {plan.target} (pid {pid}) at step {plan.step}")
        deadline = start + 120.0
        while time.monotonic() < deadline and record.new_pid is None:
            current = await self._pid(plan.target)
            if current is not None and current != pid:
                record.new_pid, record.restart_s = current, time.monotonic() - start
            else:
                await asyncio.sleep(0.2)
        if await wait_system_ready(self.client, max(1.0, deadline - time.monotonic())) is not None:
            record.system_ready_s = time.monotonic() - start
        self.log(f"  {plan.target}: restarted after {record.restart_s}s, system ready after {record.system_ready_s}s")
        if record.system_ready_s is None:
            self.log(f"  not ready: {not_ready(await _status(self.client))}")


# --------------------------------------------------------------------------- reading the outcome


@dataclass
class Outcome:
    """What the gateway and the venue say after a run."""

    orders: dict[str, dict[str, Any]]
    positions: dict[str, Decimal]
    venue_orders: dict[str, list[dict[str, Any]]]
    venue_positions: dict[str, Decimal]


async def collect_outcome(client: httpx.AsyncClient, venue_url: str) -> Outcome:
    """Every order (all pages) and position from the gateway, and the venue's own record."""
    orders: dict[str, dict[str, Any]] = {}
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 500}
        if cursor:
            params["cursor"] = cursor
        response = await client.get("/v1/orders", params=params)
        response.raise_for_status()
        page = response.json()
        for order in page["orders"]:
            orders[order["client_order_id"]] = order
        cursor = page.get("next_cursor")
        if not cursor:
            break
    response = await client.get("/v1/positions")
    response.raise_for_status()
    positions: dict[str, Decimal] = {}
    for row in response.json()["positions"]:
        positions[row["symbol"]] = positions.get(row["symbol"], Decimal(0)) + Decimal(str(row["quantity"]))
    async with httpx.AsyncClient(timeout=10.0) as venue:
        state = (await venue.get(f"{venue_url}/_sim/state")).json()
    venue_orders: dict[str, list[dict[str, Any]]] = {}
    for order in state["orders"]:
        venue_orders.setdefault(order["client_order_id"], []).append(order)
    venue_positions = {row["symbol"]: Decimal(str(row["quantity"])) for row in state["positions"]}
    return Outcome(orders, positions, venue_orders, venue_positions)


def _nonzero(positions: dict[str, Decimal]) -> dict[str, Decimal]:
    return {symbol: qty for symbol, qty in positions.items() if qty != 0}


def check_consistency(outcome: Outcome, report: LoadReport) -> list[str]:
    """Everything that disagrees between the answers, the gateway and the venue (empty: consistent).

    - every accepted idempotency key has exactly one venue order, every denied key none;
    - every venue order is one the script placed;
    - `/v1/orders` has each venue order with the venue's status and executed quantity (so no order
      stuck non-terminal that the venue has terminal);
    - every order the script cancelled is terminal at the venue;
    - `/v1/positions` equals the venue's positions.
    """
    problems: list[str] = []
    accepted = report.accepted_keys()
    accepted_ids = {client_order_id_for(key): key for key in accepted}
    for key in accepted:
        coid = client_order_id_for(key)
        count = len(outcome.venue_orders.get(coid, []))
        if count != 1:
            problems.append(f"accepted key {key} ({coid}) has {count} venue orders")
    for key in report.denied_keys():
        coid = client_order_id_for(key)
        if outcome.venue_orders.get(coid):
            problems.append(f"denied key {key} ({coid}) reached the venue")
    for result in report.unfinished():
        problems.append(f"step {result.step.index} ({result.step.kind} {result.step.key}) got no decisive answer")
    for coid, venue_orders in sorted(outcome.venue_orders.items()):
        if coid in report.earlier_client_order_ids:
            continue
        if coid not in accepted_ids and (outcome.orders.get(coid) or {}).get("source", "OPERATOR") == "OPERATOR":
            # Strategy and risk orders (a system whose strategies trade) are checked below like any other.
            problems.append(f"venue order {coid} was not placed by the script")
        for venue_order in venue_orders:
            local = outcome.orders.get(coid)
            if local is None:
                problems.append(f"venue order {coid} ({venue_order['status']}) missing from /v1/orders")
                continue
            if local["status"] != venue_order["status"]:
                problems.append(f"order {coid}: gateway {local['status']}, venue {venue_order['status']}")
            if Decimal(str(local["filled_quantity"])) != Decimal(venue_order["executed_qty"]):
                problems.append(
                    f"order {coid}: gateway filled {local['filled_quantity']}, venue {venue_order['executed_qty']}"
                )
    for coid, local in sorted(outcome.orders.items()):
        if coid in accepted_ids and coid not in outcome.venue_orders and local["status"] not in ("DENIED", "REJECTED"):
            problems.append(f"order {coid} is {local['status']} in /v1/orders but unknown to the venue")
    for result in report.results:
        if result.step.kind == "cancel" and result.final_status_code in (202, 409):
            # 202: the cancel was taken; 409: the gateway said the order was already terminal.
            coid = client_order_id_for(result.final_key or result.step.key)
            for venue_order in outcome.venue_orders.get(coid, []):
                if venue_order["status"] not in TERMINAL_VENUE_STATUSES:
                    problems.append(f"order {coid} cancelled but {venue_order['status']} at the venue")
    gateway_positions, venue_positions = _nonzero(outcome.positions), _nonzero(outcome.venue_positions)
    if gateway_positions != venue_positions:
        problems.append(f"positions: gateway {gateway_positions}, venue {venue_positions}")
    return problems


def comparable(outcome: Outcome, report: LoadReport) -> dict[str, Any]:
    """The part of a run that deterministic replay makes comparable (see the module docstring).

    Positions are what the run moved them by (the venue's positions before it are subtracted).

    A step DENIED during a halt and re-sent under `<key>.rN` counts under its step's own client
    order id, so the set compares steps that reached the venue (`LoadReport` lists the re-sends).
    """
    steps: dict[int, tuple[str, ...]] = {}
    for result in report.results:
        step = result.step
        if step.kind != "submit":
            continue
        key = result.final_key or step.key
        venue_orders = outcome.venue_orders.get(client_order_id_for(key), [])
        if len(venue_orders) == 1:
            steps[step.index] = _step_row(step, venue_orders[0]["status"], Decimal(venue_orders[0]["executed_qty"]))
        else:
            # The gateway's last answer says why (e.g. the reason of a denial).
            steps[step.index] = _step_row(
                step, f"{len(venue_orders)} venue orders; answered {_answer(result)}", Decimal(0)
            )
    by_step = {client_order_id_for(key): result.step.key for result in report.results for key in _keys(result)}
    ours = [coid for coid in outcome.venue_orders if coid not in report.earlier_client_order_ids]
    moved = {
        symbol: outcome.venue_positions.get(symbol, Decimal(0)) - report.earlier_positions.get(symbol, Decimal(0))
        for symbol in set(outcome.venue_positions) | set(report.earlier_positions)
    }
    return {
        "steps": steps,
        "client_order_ids": sorted(client_order_id_for(by_step.get(coid, coid)) for coid in ours),
        "positions": _nonzero(moved),
    }


def _answer(result: StepResult) -> str:
    body = result.final_body
    if isinstance(body, dict):
        detail = body.get("reason") or body.get("error") or body.get("status")
    else:
        detail = body
    return f"{result.final_status_code} {detail!s:.200} after {len(result.attempts)} attempts"


def _keys(result: StepResult) -> list[str]:
    return [result.step.key, *result.resubmitted_keys]


def differences(left: dict[str, Any], right: dict[str, Any]) -> list[str]:
    """Human-readable differences between two `comparable` (or `expected_outcome`) results."""
    problems = [
        f"step {index}: {left['steps'].get(index)} vs {right['steps'].get(index)}"
        for index in sorted(set(left["steps"]) | set(right["steps"]))
        if left["steps"].get(index) != right["steps"].get(index)
    ]
    only_left = sorted(set(left["client_order_ids"]) - set(right["client_order_ids"]))
    only_right = sorted(set(right["client_order_ids"]) - set(left["client_order_ids"]))
    if only_left or only_right:
        problems.append(f"client order ids only in the first: {only_left}; only in the second: {only_right}")
    if left["positions"] != right["positions"]:
        problems.append(f"positions {left['positions']} vs {right['positions']}")
    return problems


async def settle(
    client: httpx.AsyncClient, venue_url: str, report: LoadReport, timeout_s: float = 60.0
) -> tuple[Outcome, list[str]]:
    """Read the outcome until it is consistent or `timeout_s` passed; the last outcome and its problems."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            outcome = await collect_outcome(client, venue_url)
        except httpx.HTTPError as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"outcome not readable: {exc}") from exc
            await asyncio.sleep(1.0)
            continue
        problems = check_consistency(outcome, report)
        if not problems or time.monotonic() > deadline:
            return outcome, problems
        await asyncio.sleep(1.0)


async def check_books(client: httpx.AsyncClient, venue_url: str, symbols: list[str], depth: int = 20) -> list[str]:
    """Each symbol's book VALID and equal to the venue's at the same update id (empty: all equal)."""
    problems: list[str] = []
    async with httpx.AsyncClient(timeout=10.0) as venue:
        for symbol in symbols:
            book = (await client.get(f"/v1/book/{symbol}", params={"depth": depth})).json()
            if book.get("status") != "VALID":
                problems.append(f"{symbol} book is {book.get('status')}")
                continue
            truth = (
                await venue.get(
                    f"{venue_url}/_sim/book/{symbol}", params={"depth": depth, "update_id": book["last_update_id"]}
                )
            ).json()
            for side in ("bids", "asks"):
                ours = [(Decimal(p), Decimal(q)) for p, q in book[side]]
                theirs = [(Decimal(p), Decimal(q)) for p, q in truth.get(side, [])]
                if ours != theirs:
                    problems.append(f"{symbol} {side} at update {book['last_update_id']} differ from the venue's")
    return problems


# --------------------------------------------------------------------------- recovery times


async def _events(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await client.get("/v1/events", params={"limit": 500, **params})
    response.raise_for_status()
    events: list[dict[str, Any]] = response.json()["events"]
    return events


async def recovery_from_events(client: httpx.AsyncClient, kill: KillRecord) -> dict[str, float | None]:
    """Seconds from the kill to the first event saying the target is back, from `/v1/events`.

    `ready`: the component's next `ComponentStatusChanged` to READY (published by the watchdog, so
    the watchdog's own restart has none); for the state-builder and market-data also
    `valid.<SYM>`: each symbol's next `HotStateStatusChanged` to VALID.
    """
    found: dict[str, float | None] = {}
    if kill.target not in INFRA_TARGETS:
        changes = await _events(client, type="ComponentStatusChanged", component=kill.target, since_ns=kill.killed_ns)
        ready = [
            event["ts_event_ns"]
            for event in changes
            if event["payload"].get("current") == "READY" and event["payload"].get("pid") != kill.pid
        ]
        found["ready"] = (min(ready) - kill.killed_ns) / 1e9 if ready else None
    if kill.target in ("state-builder", "market-data", "nats"):
        hot = await _events(client, type="HotStateStatusChanged", since_ns=kill.killed_ns)
        first_valid: dict[str, int] = {}
        for event in hot:
            payload = event["payload"]
            if payload.get("current") == "VALID":
                symbol = payload.get("symbol")
                first_valid[symbol] = min(first_valid.get(symbol, event["ts_event_ns"]), event["ts_event_ns"])
        for symbol, ts in sorted(first_valid.items()):
            found[f"valid.{symbol}"] = (ts - kill.killed_ns) / 1e9
    if kill.target in INFRA_TARGETS:
        trading = await _events(client, type="TradingStateChanged", since_ns=kill.killed_ns)
        active = [e["ts_event_ns"] for e in trading if e["payload"].get("current") == "ACTIVE"]
        found["trading_active"] = (min(active) - kill.killed_ns) / 1e9 if active else None
    return found


# --------------------------------------------------------------------------- one run, checked


async def reference_prices(venue_url: str) -> dict[str, Decimal]:
    """The venue's current mark price per symbol (rounded to whole units), for `build_script`."""
    async with httpx.AsyncClient(timeout=10.0) as venue:
        books = (await venue.get(f"{venue_url}/_sim/state")).json()["books"]
    return {
        symbol: Decimal(book["mark_price"]).to_integral_value()
        for symbol, book in books.items()
        if book.get("mark_price") and symbol in SYMBOL_RULES
    }


@dataclass
class CheckedRun:
    """A script run with its kills, the settled outcome and everything found wrong."""

    report: LoadReport
    outcome: Outcome
    problems: list[str]
    book_problems: list[str]
    server_errors: list[str]

    def summary(self) -> dict[str, Any]:
        return {
            "steps": len(self.report.results),
            "duration_s": round(self.report.duration_s, 1),
            "kills": [kill.as_dict() for kill in self.report.kills],
            "resubmitted": {r.step.key: r.resubmitted_keys for r in self.report.results if r.resubmitted_keys},
            "retried_steps": sum(1 for r in self.report.results if len(r.attempts) > 1),
            "problems": self.problems,
            "book_problems": self.book_problems,
            "server_errors": self.server_errors,
        }


async def run_checked(
    gateway: str,
    token: str,
    venue_url: str,
    script: Script,
    kills: list[KillPlan] | None = None,
    *,
    infra_pid: PidLookup | None = None,
    settle_timeout_s: float = 90.0,
    log: Callable[[str], None] = lambda line: None,
    **driver_options: Any,
) -> CheckedRun:
    """Run `script` with `kills` against a running system, settle, and check everything.

    `server_errors` lists answers with a status the operator contract never allows (500, or a 5xx
    other than 503): a dependency that is down must be a 503 with a reason.
    """
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=gateway, headers=headers, timeout=15.0) as client:
        await wait_system_ready(client, 120.0)
        before = await collect_outcome(client, venue_url)
        driver = LoadDriver(client, script, infra_pid=infra_pid, log=log, **driver_options)
        report = await driver.run(kills)
        report.earlier_client_order_ids = frozenset(before.venue_orders)
        report.earlier_positions = dict(before.venue_positions)
        outcome, problems = await settle(client, venue_url, report, settle_timeout_s)
        await wait_system_ready(client, 60.0)
        book_problems = await check_books(client, venue_url, sorted({step.symbol for step in script.steps}))
        for kill in report.kills:
            kill.events = await recovery_from_events(client, kill)
    server_errors = [
        f"step {r.step.index} {r.step.kind}: {a.status_code} {a.body}"[:300]
        for r in report.results
        for a in r.attempts
        if a.status_code is not None and a.status_code >= 500 and a.status_code != 503
    ]
    return CheckedRun(report, outcome, problems, book_problems, server_errors)

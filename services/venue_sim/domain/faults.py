"""Fault scheduling (SPEC §10): what to break, when, for how long, how often — deterministic.

A fault is armed when created and becomes active once `after_messages` market messages (of its
symbol, when given) have been published. It stays active until `duration_s` has passed since
activation, its `count` is used up, or it is deleted. Kinds that describe a condition (stall,
outage, latency, refused connections) default to "until deleted"; one-shot kinds default to
`count = 1`. Randomness (where a kind needs any) comes from a generator seeded by the simulator
seed and the fault id, so a run is reproducible.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from libs.clock import Clock
from services.venue_sim.domain.frames import CORRUPT_MODES, Frame, collapse_depth, corrupt_frame

# kind -> (default params, is a condition that lasts until deleted by default)
KINDS: dict[str, tuple[dict[str, Any], bool]] = {
    "ws_close": ({"code": 1001, "abrupt": False}, False),
    "ws_stall": ({}, True),
    "drop_depth": ({}, False),
    "duplicate_depth": ({}, False),
    "reorder_depth": ({}, False),
    "corrupt": ({"mode": "invalid_json", "channel": "depth"}, False),
    "future_ts": ({"offset_ms": 60_000, "channel": "depth"}, False),
    "backward_ts": ({"offset_ms": 5_000, "channel": "depth"}, False),
    "price_spike": ({"pct": 25, "direction": "random"}, False),
    "http_429": ({"retry_after_s": 2}, False),
    "http_418": ({"retry_after_s": 10}, False),
    "http_5xx": ({"status": 503}, False),
    "outage": ({}, True),
    # The REST API (orders, account, snapshots) answers 503 / -1001 while the WebSocket streams
    # keep flowing: the venue's order path is down, its market data is not (FM-N6 failover).
    "rest_outage": ({}, True),
    "latency": ({"ms": 500}, True),
    "refuse_connections": ({}, True),
    "order_timeout_placed": ({"ms": 11_000}, False),
    "order_timeout_not_placed": ({"ms": 11_000}, False),
    "order_reject": ({"code": -2019, "msg": "Margin is insufficient.", "status": 400}, False),
    "partial_fill": ({"ratio": "0.5"}, False),
    "delayed_fill": ({"ms": 2_000}, False),
    # Order side (issue 5): a 5xx answer to an order placement, placed or not behind it, and the
    # venue's clock running ahead, so signed requests get -1021 until the client resyncs its offset.
    "order_http_5xx": ({"status": 503, "placed": False}, False),
    "clock_skew": ({"offset_ms": 10_000}, True),
    # Abnormal markets for the CB-2 breaker (issue 5): the stream reports a book whose liquidity
    # has all but vanished (every depth quantity scaled by `factor`), or a funding rate far from
    # normal (every mark price update carries `rate`). Both last until deleted or `duration_s`.
    "depth_collapse": ({"factor": "0.01"}, True),
    "funding_jump": ({"rate": "0.01"}, True),
    # A real market move for CB-2's "price > 20 % in < 1 min" (unlike `price_spike`, a bad print
    # on the stream only): the market itself moves `pct` % over `over_s` seconds, so book, trades,
    # mark price frames and REST (premiumIndex, ticker, depth) all agree, and stays there. One
    # shift per fault (count 1); deleting it stops the move where it is. Synthetic markets only.
    "price_shift": ({"pct": 25, "direction": "up", "over_s": 5}, False),
    # A venue that stalls a triggered conditional order (issue 18): the next algo order (stop or
    # take-profit) of the symbol whose trigger is crossed moves to TRIGGERING and stays there, its
    # MARKET order never placed; the position it protects is not closed (`Exchange.check_algo_orders`).
    "stop_stuck_triggering": ({}, False),
}


class FaultError(ValueError):
    """A fault request is invalid (unknown kind, bad parameter)."""


@dataclass
class Fault:
    """One scheduled fault and its progress."""

    id: str
    kind: str
    symbol: str | None
    after_messages: int
    duration_s: float | None
    count: int | None
    params: dict[str, Any]
    created_ns: int
    rng: random.Random
    messages_seen: int = 0
    activated_ns: int | None = None
    used: int = 0
    deleted: bool = False

    def view(self, now_ns: int) -> dict[str, Any]:
        """JSON view for `GET /_sim/faults`."""
        return {
            "id": self.id,
            "kind": self.kind,
            "symbol": self.symbol,
            "after_messages": self.after_messages,
            "duration_s": self.duration_s,
            "count": self.count,
            "params": self.params,
            "state": self.state(now_ns),
            "used": self.used,
            "messages_seen": self.messages_seen,
        }

    def state(self, now_ns: int) -> str:
        """pending, active or expired."""
        if self.deleted or (self.count is not None and self.used >= self.count):
            return "expired"
        if self.activated_ns is None:
            return "pending"
        if self.duration_s is not None and now_ns - self.activated_ns >= self.duration_s * 1e9:
            return "expired"
        return "active"


def _int(params: Mapping[str, Any], name: str, low: int, high: int) -> int:
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise FaultError(f"params.{name} must be an integer")
    try:
        number = int(value)
    except ValueError as exc:
        raise FaultError(f"params.{name} must be an integer") from exc
    if not low <= number <= high:
        raise FaultError(f"params.{name} must be between {low} and {high}")
    return number


def _decimal_param(params: Mapping[str, Any], name: str) -> Decimal:
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise FaultError(f"params.{name} must be a decimal number")
    try:
        number = Decimal(str(value))
    except InvalidOperation as exc:
        raise FaultError(f"params.{name} must be a decimal number") from exc
    if not number.is_finite():
        raise FaultError(f"params.{name} must be a finite number")
    return number


def _validate_params(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    merged = {**KINDS[kind][0], **params}
    match kind:
        case "corrupt":
            if merged["mode"] not in (*CORRUPT_MODES, "random"):
                raise FaultError(f"params.mode must be one of {', '.join(CORRUPT_MODES)} or random")
        case "future_ts" | "backward_ts":
            merged["offset_ms"] = _int(merged, "offset_ms", 1, 10**10)
        case "latency" | "order_timeout_placed" | "order_timeout_not_placed" | "delayed_fill":
            merged["ms"] = _int(merged, "ms", 0, 600_000)
        case "http_429" | "http_418":
            merged["retry_after_s"] = _int(merged, "retry_after_s", 0, 86_400)
        case "order_http_5xx":
            merged["status"] = _int(merged, "status", 500, 599)
            if not isinstance(merged["placed"], bool):
                raise FaultError("params.placed must be true or false")
        case "clock_skew":
            merged["offset_ms"] = _int(merged, "offset_ms", -(10**8), 10**8)
        case "http_5xx":
            merged["status"] = _int(merged, "status", 500, 599)
        case "ws_close":
            merged["code"] = _int(merged, "code", 1000, 4999)
        case "order_reject":
            merged["code"] = _int(merged, "code", -99999, -1)
            merged["status"] = _int(merged, "status", 400, 599)
            if not isinstance(merged["msg"], str):
                raise FaultError("params.msg must be a string")
        case "partial_fill":
            try:
                ratio = float(merged["ratio"])
            except (TypeError, ValueError) as exc:
                raise FaultError("params.ratio must be a number") from exc
            if not 0 <= ratio < 1:
                raise FaultError("params.ratio must be in [0, 1)")
            merged["ratio"] = str(merged["ratio"])
        case "depth_collapse":
            factor = _decimal_param(merged, "factor")
            if not 0 <= factor < 1:
                raise FaultError("params.factor must be in [0, 1)")
            merged["factor"] = str(factor)
        case "funding_jump":
            rate = _decimal_param(merged, "rate")
            if not -1 < rate < 1:
                raise FaultError("params.rate must be in (-1, 1)")
            merged["rate"] = str(rate)
        case "price_spike":
            try:
                pct = float(merged["pct"])
            except (TypeError, ValueError) as exc:
                raise FaultError("params.pct must be a number") from exc
            if not 0 < pct < 100:
                raise FaultError("params.pct must be in (0, 100)")
            if merged["direction"] not in ("up", "down", "random"):
                raise FaultError("params.direction must be up, down or random")
        case "price_shift":
            shift_pct = _decimal_param(merged, "pct")
            if not 0 < shift_pct < 100:
                raise FaultError("params.pct must be in (0, 100)")
            over_s = _decimal_param(merged, "over_s")
            if not 0 <= over_s <= 600:
                raise FaultError("params.over_s must be in [0, 600]")
            if merged["direction"] not in ("up", "down", "random"):
                raise FaultError("params.direction must be up, down or random")
            merged["pct"], merged["over_s"] = str(shift_pct), float(over_s)
    if "channel" in merged and merged["channel"] not in (
        "depth",
        "aggTrade",
        "trade",
        "markPrice",
        "forceOrder",
        "bookTicker",
        "any",
    ):
        raise FaultError("params.channel must be a stream channel (depth, aggTrade, markPrice, ...) or any")
    return merged


class FaultScheduler:
    """Holds the faults and answers "does fault X apply now" for the handlers."""

    def __init__(self, clock: Clock, seed: int) -> None:
        self.clock = clock
        self.seed = seed
        self.faults: dict[str, Fault] = {}
        self._next_id = 1
        self._held: dict[str, Frame] = {}
        self._last_event_ms: dict[str, int] = {}

    def add(self, spec: Mapping[str, Any]) -> Fault:
        """Schedule a fault from its JSON request.

        Raises:
            FaultError: unknown kind or invalid field.
        """
        if not isinstance(spec, Mapping):
            raise FaultError("body must be a JSON object")
        unknown = set(spec) - {"kind", "symbol", "after_messages", "duration_s", "count", "params"}
        if unknown:
            raise FaultError(f"unknown field(s): {', '.join(sorted(unknown))}")
        kind = spec.get("kind")
        if kind not in KINDS:
            raise FaultError(f"unknown fault kind {kind!r}; known: {', '.join(sorted(KINDS))}")
        symbol = spec.get("symbol")
        if symbol is not None and (not isinstance(symbol, str) or not symbol.isalnum()):
            raise FaultError("symbol must be a symbol name such as BTCUSDT")
        after = spec.get("after_messages", 0)
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise FaultError("after_messages must be a non-negative integer")
        duration = spec.get("duration_s")
        if duration is not None and (
            isinstance(duration, bool) or not isinstance(duration, int | float) or duration <= 0
        ):
            raise FaultError("duration_s must be a positive number")
        count = spec.get("count")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise FaultError("count must be a positive integer")
        params = spec.get("params") or {}
        if not isinstance(params, dict):
            raise FaultError("params must be an object")
        params = _validate_params(kind, params)
        is_condition = KINDS[kind][1]
        if count is None and duration is None and not is_condition:
            count = 1
        fault_id = f"f{self._next_id}"
        self._next_id += 1
        now = self.clock()
        fault = Fault(
            id=fault_id,
            kind=kind,
            symbol=symbol.upper() if symbol else None,
            after_messages=after,
            duration_s=float(duration) if duration is not None else None,
            count=count,
            params=params,
            created_ns=now,
            rng=random.Random(f"{self.seed}:{fault_id}"),
            activated_ns=now if after == 0 else None,
        )
        self.faults[fault_id] = fault
        return fault

    def remove(self, fault_id: str) -> bool:
        """Delete one fault; False when unknown."""
        fault = self.faults.pop(fault_id, None)
        if fault is not None:
            fault.deleted = True
        return fault is not None

    def clear(self) -> int:
        """Delete every fault; returns how many there were."""
        count = len(self.faults)
        for fault in self.faults.values():
            fault.deleted = True
        self.faults.clear()
        return count

    def views(self) -> list[dict[str, Any]]:
        """All faults with their state."""
        now = self.clock()
        return [fault.view(now) for fault in self.faults.values()]

    def on_message(self, symbol: str) -> None:
        """Count one published market message toward `after_messages`."""
        now = self.clock()
        for fault in self.faults.values():
            if fault.activated_ns is None and (fault.symbol is None or fault.symbol == symbol):
                fault.messages_seen += 1
                if fault.messages_seen >= fault.after_messages:
                    fault.activated_ns = now

    def active(self, kind: str, symbol: str | None = None) -> Fault | None:
        """The first active fault of a kind that applies to `symbol` (None = any), not consumed."""
        now = self.clock()
        for fault in self.faults.values():
            if fault.kind != kind or fault.state(now) != "active":
                continue
            if fault.symbol is None or symbol is None or fault.symbol == symbol:
                return fault
        return None

    def take(self, kind: str, symbol: str | None = None) -> Fault | None:
        """Like `active`, and use one of its count."""
        fault = self.active(kind, symbol)
        if fault is not None:
            fault.used += 1
        return fault

    def any_active(self) -> bool:
        """True when some fault is currently active (fast path for the hot loop)."""
        now = self.clock()
        return any(fault.state(now) == "active" for fault in self.faults.values())

    # --------------------------------------------------------------- frame transforms
    def _channel_fault(self, kind: str, symbol: str, channel: str) -> Fault | None:
        fault = self.active(kind, symbol)
        if fault is None or fault.params.get("channel", "depth") not in (channel, "any"):
            return None
        fault.used += 1
        return fault

    def transform(self, stream: str, symbol: str, channel: str, data: dict[str, Any]) -> list[Frame]:
        """Apply the frame-level faults to one outgoing stream message.

        Returns:
            The frames to send instead (none when dropped, two when duplicated, ...).
        """
        held = self._held.pop(stream, None)
        frames: list[Frame]
        if not self.faults:
            frames = [Frame(data)]
        else:
            frames = self._transform(stream, symbol, channel, data)
        if "E" in data and isinstance(data["E"], int):
            self._last_event_ms[stream] = max(self._last_event_ms.get(stream, 0), data["E"])
        if held is not None:
            frames.append(held)
        return frames

    def _transform(self, stream: str, symbol: str, channel: str, data: dict[str, Any]) -> list[Frame]:
        if channel == "depth":
            if self.take("drop_depth", symbol):
                return []
            if self.take("reorder_depth", symbol):
                self._held[stream] = Frame(data)
                return []
            collapse = self.take("depth_collapse", symbol)
            if collapse is not None:
                data = collapse_depth(data, Decimal(collapse.params["factor"]))
        elif channel == "markPrice":
            jump = self.take("funding_jump", symbol)
            if jump is not None and "r" in data:
                data = dict(data, r=jump.params["rate"])
        frame = Frame(data)
        fault = self._channel_fault("future_ts", symbol, channel)
        if fault is not None and "E" in data:
            frame.data = dict(data, E=int(data["E"]) + fault.params["offset_ms"])
        fault = self._channel_fault("backward_ts", symbol, channel)
        if fault is not None and "E" in data:
            previous = self._last_event_ms.get(stream, int(data["E"]))
            frame.data = dict(data, E=previous - fault.params["offset_ms"])
        fault = self._channel_fault("corrupt", symbol, channel)
        if fault is not None:
            mode = fault.params["mode"]
            if mode == "random":
                mode = fault.rng.choice(CORRUPT_MODES)
            frame = corrupt_frame(frame.data, mode)
        if channel == "depth" and self.take("duplicate_depth", symbol):
            return [frame, Frame(copy.deepcopy(frame.data), frame.corrupt)]
        return [frame]

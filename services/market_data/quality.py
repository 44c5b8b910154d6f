"""Data-quality rules of market-data, pure: FM-D2 trade-id sequence, FM-D3 event timestamps,
FM-D4 corruption rate, FM-D5 sanity of prices, volumes and open interest, and the FM-N1 comparison
of the state re-synced after a reconnect. Each takes the time it needs as an argument.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

_MS = 1_000_000


# --------------------------------------------------------------------------- FM-D4 corruption


class CorruptionMonitor:
    """Rolling share of bad frames; above `threshold` (5 %) the link is degraded (SPEC FM-D4).

    Counts go into one-second buckets over `window_s`; no verdict before `min_frames` frames, and
    the degraded flag clears only below `recover_below`, so a rate near 5 % does not flap.
    """

    def __init__(
        self,
        *,
        window_s: float = 30.0,
        threshold: float = 0.05,
        recover_below: float = 0.025,
        min_frames: int = 40,
    ) -> None:
        self._window_s = int(window_s)
        self.threshold = threshold
        self.recover_below = recover_below
        self.min_frames = min_frames
        self._buckets: deque[list[int]] = deque()  # [second, total, bad]
        self._total = 0
        self._bad = 0
        self.degraded = False

    @property
    def rate(self) -> float:
        return self._bad / self._total if self._total else 0.0

    def record(self, now_ns: int, *, bad: bool) -> bool | None:
        """Count one frame. Returns True when the link just became degraded, False when it just
        recovered, None when nothing changed."""
        second = now_ns // 1_000_000_000
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        self._total += 1
        if bad:
            bucket[2] += 1
            self._bad += 1
        while self._buckets and self._buckets[0][0] <= second - self._window_s:
            _, total, bad_count = self._buckets.popleft()
            self._total -= total
            self._bad -= bad_count
        if self._total < self.min_frames:
            return None
        if not self.degraded and self.rate > self.threshold:
            self.degraded = True
            return True
        if self.degraded and self.rate < self.recover_below:
            self.degraded = False
            return False
        return None


# --------------------------------------------------------------------------- FM-D3 timestamps


class TimestampVerdict(StrEnum):
    OK = "ok"
    FUTURE = "future"
    """Event time more than the tolerance ahead of now: reject."""
    BACKWARD = "backward"
    """Event time before the previous one of the same stream: use the receive time, flag suspect."""


@dataclass(frozen=True, slots=True)
class TimestampCheck:
    verdict: TimestampVerdict
    ts_ns: int
    """The time to put on the message (event time, or receive time when suspect)."""
    repeated: bool = False
    """For FUTURE: rejections are repeating (alert)."""


class TimestampGuard:
    """SPEC FM-D3 on stream event times, per stream (e.g. `BTCUSDT@depth`)."""

    def __init__(self, *, future_tolerance_ms: int = 5000, repeat_count: int = 3, repeat_window_s: float = 60.0):
        self._future_ns = future_tolerance_ms * _MS
        self._repeat_count = repeat_count
        self._repeat_window_ns = int(repeat_window_s * 1e9)
        self._last_ms: dict[str, int] = {}
        self._future: deque[int] = deque()
        self.rejected = 0
        self.suspect = 0

    def check(self, stream: str, event_ms: int, now_ns: int) -> TimestampCheck:
        """Judge one event time against the local clock and the stream's previous event time."""
        event_ns = event_ms * _MS
        if event_ns > now_ns + self._future_ns:
            self.rejected += 1
            self._future.append(now_ns)
            while self._future and now_ns - self._future[0] > self._repeat_window_ns:
                self._future.popleft()
            return TimestampCheck(TimestampVerdict.FUTURE, now_ns, repeated=len(self._future) >= self._repeat_count)
        previous = self._last_ms.get(stream)
        if previous is not None and event_ms < previous:
            self.suspect += 1
            return TimestampCheck(TimestampVerdict.BACKWARD, now_ns)
        self._last_ms[stream] = event_ms
        return TimestampCheck(TimestampVerdict.OK, event_ns)


# --------------------------------------------------------------------------- FM-D5 sanity


class Verdict(StrEnum):
    WARNING = "warning"
    REJECTED = "rejected"
    FLAG = "flag"


@dataclass(frozen=True, slots=True)
class Finding:
    """One failed sanity rule."""

    check: str
    verdict: Verdict
    detail: str


class PriceSanity:
    """Price rules of SPEC FM-D5 for one series (a symbol's trades, or its mark prices).

    - |Δ| > 20 % against the recent reference (median of the last accepted prices) → WARNING,
      for the caller to confirm with a second source;
    - price < 0.5 x the lowest accepted price → REJECTED;
    - rolling z-score of the log return > 5 → FLAG.
    `check` judges, `accept` records; a rejected or unconfirmed value is never recorded.
    """

    def __init__(
        self,
        *,
        jump: Decimal = Decimal("0.20"),
        floor_ratio: Decimal = Decimal("0.5"),
        z_limit: float = 5.0,
        window: int = 50,
        min_samples: int = 30,
    ) -> None:
        self.jump = jump
        self.floor_ratio = floor_ratio
        self.z_limit = z_limit
        self.min_samples = min_samples
        self._recent: deque[Decimal] = deque(maxlen=window)
        self._returns: deque[float] = deque(maxlen=window * 4)
        self.minimum: Decimal | None = None
        self.last: Decimal | None = None

    def reference(self) -> Decimal | None:
        """Median of the recent accepted prices."""
        if not self._recent:
            return None
        ordered = sorted(self._recent)
        return ordered[len(ordered) // 2]

    def check(self, price: Decimal) -> list[Finding]:
        """The rules `price` breaks (empty: fine)."""
        findings: list[Finding] = []
        if price <= 0:
            return [Finding("price_not_positive", Verdict.REJECTED, f"price {price}")]
        if self.minimum is not None and price < self.minimum * self.floor_ratio:
            findings.append(
                Finding("price_below_min", Verdict.REJECTED, f"{price} < {self.floor_ratio} x min {self.minimum}")
            )
            return findings
        reference = self.reference()
        if reference is not None and abs(price - reference) / reference > self.jump:
            change = (price - reference) / reference * 100
            findings.append(Finding("price_jump", Verdict.WARNING, f"{change:+.1f}% vs recent {reference}"))
            return findings
        z = self._zscore(price)
        if z is not None and abs(z) > self.z_limit:
            findings.append(Finding("zscore", Verdict.FLAG, f"z = {z:.1f}"))
        return findings

    def accept(self, price: Decimal) -> None:
        """Record an accepted price."""
        if self.last is not None and self.last > 0:
            self._returns.append(math.log(float(price / self.last)))
        self.last = price
        self._recent.append(price)
        self.minimum = price if self.minimum is None else min(self.minimum, price)

    def rebase(self, price: Decimal) -> None:
        """A second source confirmed a jump: the recent reference moves to the new level."""
        self._recent.clear()
        self._returns.clear()
        self.last = None
        self.accept(price)

    def _zscore(self, price: Decimal) -> float | None:
        if self.last is None or len(self._returns) < self.min_samples:
            return None
        std = statistics.pstdev(self._returns)
        if std <= 0:
            return None
        mean = statistics.fmean(self._returns)
        return (math.log(float(price / self.last)) - mean) / std


class VolumeSanity:
    """Trade size > 10 x the largest seen so far → WARNING (SPEC FM-D5), once history exists."""

    def __init__(self, *, factor: Decimal = Decimal(10), min_samples: int = 50) -> None:
        self.factor = factor
        self.min_samples = min_samples
        self.maximum = Decimal(0)
        self.samples = 0

    def check(self, quantity: Decimal) -> list[Finding]:
        findings = []
        if self.samples >= self.min_samples and self.maximum > 0 and quantity > self.maximum * self.factor:
            findings.append(Finding("volume", Verdict.WARNING, f"{quantity} > {self.factor} x max {self.maximum}"))
        self.samples += 1
        self.maximum = max(self.maximum, quantity)
        return findings


class OpenInterestSanity:
    """OI < 0 → REJECTED; change > 50 % against the last value → WARNING (SPEC FM-D5)."""

    def __init__(self, *, change: Decimal = Decimal("0.5")) -> None:
        self.change = change
        self.last: Decimal | None = None

    def check(self, value: Decimal) -> list[Finding]:
        if value < 0:
            return [Finding("oi_negative", Verdict.REJECTED, f"open interest {value}")]
        findings = []
        if self.last is not None and self.last > 0 and abs(value - self.last) / self.last > self.change:
            findings.append(Finding("oi_change", Verdict.WARNING, f"{self.last} -> {value}"))
        self.last = value
        return findings


def confirms(reference: Decimal, candidate: Decimal, second_source: Decimal) -> bool:
    """Does the second source agree with the jumped `candidate` rather than with the old `reference`?"""
    return abs(second_source - candidate) < abs(second_source - reference)


# --------------------------------------------------------------------------- FM-D2 trades


class TradeAction(StrEnum):
    APPLY = "apply"
    DUPLICATE = "duplicate"
    BACKFILL = "backfill"
    """A gap of fewer than `backfill_below` ids: fetch them over REST."""
    RESYNC = "resync"
    """A larger gap: treated like a book gap."""


@dataclass(frozen=True, slots=True)
class TradeCheck:
    action: TradeAction
    missing_from: int = 0
    missing_to: int = 0
    """Inclusive range of the missing ids (BACKFILL, RESYNC)."""


class TradeSequence:
    """Aggregate-trade ids are consecutive (SPEC FM-D2): gap < 10 → backfill, ≥ 10 → book gap."""

    def __init__(self, *, backfill_below: int = 10) -> None:
        self.backfill_below = backfill_below
        self.last_id: int | None = None
        self.gaps = 0

    def on_trade(self, trade_id: int) -> TradeCheck:
        """Judge the next trade id."""
        last = self.last_id
        if last is None:
            self.last_id = trade_id
            return TradeCheck(TradeAction.APPLY)
        if trade_id <= last:
            return TradeCheck(TradeAction.DUPLICATE)
        self.last_id = trade_id
        missing = trade_id - last - 1
        if missing == 0:
            return TradeCheck(TradeAction.APPLY)
        self.gaps += 1
        action = TradeAction.BACKFILL if missing < self.backfill_below else TradeAction.RESYNC
        return TradeCheck(action, last + 1, trade_id - 1)


# --------------------------------------------------------------------------- FM-N1 after reconnect


def reconnect_findings(
    last_mark: Decimal | None, new_mark: Decimal | None, last_oi: Decimal | None, new_oi: Decimal | None
) -> list[tuple[str, str]]:
    """Compare the state re-synced after a reconnect with the last known (SPEC FM-N1).

    Returns:
        (check, title) pairs: price moved > 5 % → "possible data gap"; OI changed > 20 % →
        "missed liquidations".
    """
    findings: list[tuple[str, str]] = []
    if last_mark is not None and new_mark is not None and last_mark > 0:
        moved = abs(new_mark - last_mark) / last_mark
        if moved > Decimal("0.05"):
            findings.append(("data_gap", f"possible data gap: mark moved {moved * 100:.1f}% while disconnected"))
    if last_oi is not None and new_oi is not None and last_oi > 0:
        changed = abs(new_oi - last_oi) / last_oi
        if changed > Decimal("0.20"):
            findings.append(("missed_liquidations", f"missed liquidations: OI changed {changed * 100:.1f}%"))
    return findings

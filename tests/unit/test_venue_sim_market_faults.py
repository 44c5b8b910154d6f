"""The simulator's abnormal-market faults for CB-2: depth collapse and funding jump (pure)."""

from __future__ import annotations

import pytest

from services.venue_sim.domain.faults import FaultError, FaultScheduler


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000_000

    def __call__(self) -> int:
        return self.now


def test_depth_collapse_when_active_then_quantities_scaled_and_removals_kept() -> None:
    faults = FaultScheduler(FakeClock(), seed=1)
    faults.add({"kind": "depth_collapse", "symbol": "ETHUSDT", "params": {"factor": "0.01"}})
    data = {"u": 5, "b": [["100.00", "20.5"], ["99.99", "0"]], "a": [["100.01", "3"]]}
    (frame,) = faults.transform("s", "ETHUSDT", "depth", data)
    assert frame.data["b"] == [["100.00", "0.205"], ["99.99", "0"]]
    assert frame.data["a"] == [["100.01", "0.03"]]
    assert frame.data["u"] == 5
    (other,) = faults.transform("s", "BTCUSDT", "depth", data)
    assert other.data["b"][0] == ["100.00", "20.5"]


def test_funding_jump_when_active_then_mark_frames_carry_the_rate_until_it_expires() -> None:
    clock = FakeClock()
    faults = FaultScheduler(clock, seed=1)
    faults.add({"kind": "funding_jump", "duration_s": 2, "params": {"rate": "0.01"}})
    mark = {"e": "markPriceUpdate", "p": "3000", "r": "0.00010000"}
    assert faults.transform("s", "ETHUSDT", "markPrice", mark)[0].data["r"] == "0.01"
    assert faults.transform("s", "ETHUSDT", "depth", {"u": 1})[0].data == {"u": 1}
    clock.now += 3_000_000_000
    assert faults.transform("s", "ETHUSDT", "markPrice", mark)[0].data["r"] == "0.00010000"


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "depth_collapse", "params": {"factor": "1.5"}},
        {"kind": "depth_collapse", "params": {"factor": "abc"}},
        {"kind": "funding_jump", "params": {"rate": True}},
        {"kind": "funding_jump", "params": {"rate": "NaN"}},
    ],
)
def test_market_fault_when_parameter_invalid_then_refused(spec: dict[str, object]) -> None:
    with pytest.raises(FaultError):
        FaultScheduler(FakeClock(), seed=1).add(spec)

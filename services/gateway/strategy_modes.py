"""Where an enabled strategy's orders go, live or paper, and who may send it live (pure).

`POST /v1/strategies/{name}/enable` takes an optional body `{"mode": "live"|"paper", "override":
bool, "reason": str}`. A strategy that CB-3 disabled (its breaker `CB-3-<name>` is open) or that
FM-C2 made FAILED comes back only through paper: a live enable is refused (409, with why) unless
it runs on paper right now, or the operator overrides with a reason (audited). Paper needs a paper
order link (`bulwark up --paper`); without one a paper enable is refused, because risk would deny
every order of the strategy anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

from proto.enums import BreakerState, StrategyMode, StrategyState
from services.gateway.fields import Text

ON_PAPER_STATES = frozenset(
    {StrategyState.SCANNING, StrategyState.SETUP, StrategyState.IN_POSITION, StrategyState.EXITING}
)
"""States in which a strategy enabled on paper is running there (not stopped, not FAILED)."""


class EnableRequest(BaseModel):
    """Optional body of `POST /v1/strategies/{name}/enable`; no body is `{"mode": "live"}`."""

    model_config = ConfigDict(extra="forbid")

    mode: StrategyMode = StrategyMode.LIVE
    override: bool = False
    """Enable live a strategy that CB-3 or FAILED keeps on paper (needs a `reason`; audited)."""
    reason: Text = Field(default="", max_length=500)

    @model_validator(mode="after")
    def _override_is_live_with_reason(self) -> EnableRequest:
        if self.override and self.mode != StrategyMode.LIVE:
            raise ValueError("override applies to a live enable only (paper is always allowed)")
        if self.override and not self.reason.strip():
            raise ValueError('an override needs a "reason" (it is recorded in the audit log)')
        return self


@dataclass(frozen=True)
class Standing:
    """What the gateway knows of a strategy before enabling it.

    Attributes:
        state: its persisted state (KV `strategy.<name>`), None if never written.
        cb3: its CB-3 breaker's state (KV `breaker.CB-3-<name>`), None if never written.
        mode: its current order mode (KV `strategy_mode.<name>`).
        paper_link: the system has a paper order link.
    """

    state: StrategyState | None
    cb3: BreakerState | None
    mode: StrategyMode
    paper_link: bool


@dataclass(frozen=True)
class Refusal:
    """Why an enable is refused: HTTP status, error code, message, details."""

    status: int
    code: str
    message: str
    details: dict[str, str]


def restriction(standing: Standing) -> str:
    """Why this strategy may not simply go live ("" when it may): `CB-3` and/or `FAILED`."""
    found = []
    if standing.cb3 in (BreakerState.OPEN, BreakerState.HALF_OPEN):
        found.append("CB-3")
    if standing.state == StrategyState.FAILED:
        found.append("FAILED")
    return "+".join(found)


def judge_enable(name: str, request: EnableRequest, standing: Standing) -> Refusal | None:
    """The refusal of this enable, or None when it may go ahead.

    Paper is always allowed where there is a paper order link. Live is allowed unless CB-3 or
    FAILED restricts the strategy; then only from paper (it runs on paper now) or by override.
    """
    if request.mode == StrategyMode.PAPER:
        if not standing.paper_link:
            return Refusal(
                409,
                "no_paper_link",
                f"strategy {name}: this system has no paper order link; start it with `bulwark up --paper-link` "
                "(paper beside live) or `bulwark up --paper` to trade strategies on paper",
                {"mode": request.mode.value},
            )
        return None
    why = restriction(standing)
    if not why or request.override:
        return None
    on_paper = standing.mode == StrategyMode.PAPER and standing.state in ON_PAPER_STATES
    if on_paper:
        return None
    causes = {"CB-3": "its CB-3 breaker (strategy malfunction) is open", "FAILED": "it is FAILED (FM-C2 crashes)"}
    because = " and ".join(causes[part] for part in why.split("+"))
    return Refusal(
        409,
        "paper_first",
        f"strategy {name} comes back only through paper: {because}. Enable it with "
        '{"mode": "paper"} first, or force live with {"override": true, "reason": "..."} (audited)',
        {"restricted_by": why, "mode": standing.mode.value},
    )

"""The preflight gate of the order link: orders that may add exposure go to the venue only once the
venue preflight of the current connection has passed (issue 18, SPEC FM-N6).

The preflight runs at start and again at every reconnect of the order link; orders approved while
the link was down wait in the queue until then, and without this gate they would go out as soon as
reconciliation is done, in parallel with (or before) the checks that may find the account unusable
(hedge mode, a key without trading rights, a halted symbol). What it decides, per order:

- the link went down (any state but CONNECTED): the gate is PENDING again, whatever passed before;
- PENDING (checks running, or the venue could not be asked): entries stay queued, the queue shows
  why; the result is waited for;
- PASSED: every order goes;
- FAILED: an entry is REJECTED with the failed checks as its reason (risk HALTS trading for the same
  result, so nothing new is approved; an order approved before the halt is not held for hours and
  then sent into an account someone has meanwhile changed — the trader decides again after reading
  the preflight);
- reduce-only orders (protective stops, flatten and protect-close, an operator's reduce-only close)
  pass whatever the gate says: they cannot add exposure, and holding a stop back leaves a position
  bare. The venue may refuse them (e.g. reduceOnly in hedge mode): that is a venue rejection, seen
  and alerted like any other.
"""

from __future__ import annotations

import enum

from libs.orders_model import OrderRecord


class GateState(enum.Enum):
    """Where the preflight of the current connection of the order link stands."""

    PENDING = "PENDING"
    PASSED = "PASSED"
    FAILED = "FAILED"


class PreflightGate:
    """The preflight's verdict on the current connection, as the order path asks for it."""

    def __init__(self) -> None:
        self.armed = False
        """No preflight is wired (a process or test without one): the gate never holds anything."""
        self.state = GateState.PASSED
        self.reason = ""

    def arm(self) -> None:
        """A preflight runs for this process: entries wait for its first verdict."""
        self.armed = True
        self.state = GateState.PENDING
        self.reason = "venue preflight not run yet"

    def link_down(self) -> None:
        """The order link left CONNECTED: the next connection is checked again before entries go."""
        if not self.armed:
            return
        self.state = GateState.PENDING
        self.reason = "venue preflight of this connection pending"

    def settle(self, ok: bool, reachable: bool, reason: str) -> None:
        """A preflight finished: passed, failed, or (venue not reachable) still pending."""
        if ok:
            self.state, self.reason = GateState.PASSED, ""
        elif reachable:
            self.state, self.reason = GateState.FAILED, f"venue preflight failed: {reason}"
        else:
            self.state, self.reason = GateState.PENDING, f"venue preflight incomplete: {reason}"

    def holds(self, order: OrderRecord) -> bool:
        """Must `order` wait in the queue for the preflight?"""
        return self.state == GateState.PENDING and not order.reduce_only

    def refuses(self, order: OrderRecord) -> bool:
        """Must `order` be rejected because the preflight of this connection failed?"""
        return self.state == GateState.FAILED and not order.reduce_only

    def fields(self) -> dict[str, str]:
        """For the service's details (`/v1/status` heartbeat)."""
        return {"preflight_gate": self.state.value, **({"preflight_gate_reason": self.reason} if self.reason else {})}

"""What every part of the risk service shares: the rebuilt `state` (changed only by `state.apply`),
the trading state record, the followed view of the outside (hot state, links, state-builder, bus,
degradation level), the breakers, the locks, the bus, log and clocks they act through, and the
snapshot operations on that state (capture, restore, replay of one ORDERS message).

The parts (`decisions`, `dependencies`, `breaker_effects`, `monitor`, `flattening`,
`trading_control`, `recovery`) take a `RiskCore`; `handlers.RiskService` adds the message → handler
tables that route to them, so no part imports the service object.
"""

from __future__ import annotations

import asyncio

from libs.bus import Bus
from libs.clock import Clock, monotonic_clock
from libs.latency import LatencyWindow
from libs.logging import Logger
from libs.service_snapshots import RecoveryReport, SnapshotKeeper
from libs.snapshot import SnapshotPolicy
from libs.stamping import Stamper
from proto.enums import ConnectionState, DegradationLevel, HotStateStatus
from proto.envelope import Message
from proto.kv import TradingStateValue

from . import adapters
from . import snapshot as snap
from .breaker_rules import BreakerBoard, restore_newer
from .checks import RiskLimits
from .exposure import PendingExposure
from .liveness import StateBuilderWatch
from .paper import PaperModes
from .state import RiskState, apply
from .trades import TradeTracker


class RiskCore:
    """What risk's parts share (one instance per process).

    Shared: the rebuilt `state` (changed only by `state.apply`), the trading state record, the
    followed view of the outside (hot state, links, state-builder, bus, degradation level), the
    breakers, and the bus, log and clocks they act through.
    """

    def __init__(
        self,
        bus: Bus,
        log: Logger,
        limits: RiskLimits,
        venue: str,
        clock: Clock,
        trading: TradingStateValue,
        *,
        breakers: BreakerBoard | None = None,
        monotonic: Clock = monotonic_clock,
        resources: adapters.ProcResources | None = None,
        snapshots: SnapshotKeeper[snap.RiskSnapshot] | None = None,
        policy: SnapshotPolicy | None = None,
        backup_venue: str = "",
        paper: PaperModes | None = None,
    ) -> None:
        self.bus = bus
        self.log = log
        self.limits = limits
        self.venue = venue
        """The main venue (market data, and orders unless routed to the backup)."""
        self.backup_venue = backup_venue
        self.rules_required = False
        """The venues publish their rules (`BULWARK_VENUE_RULES_REQUIRED`): until a symbol's are in
        KV, its entries are denied ("venue rules not loaded"); reduce-only orders still go."""
        """A configured backup venue ("" none): new entries in flat symbols go there while the main
        venue's order link is down (FM-N6, `route_order`)."""
        self.order_links: dict[str, ConnectionState | None] = {}
        """Order link state per venue, from the position processes' `LinkStateChanged` (link `orders`)."""
        self.clock = clock
        self.stamp = Stamper(clock)
        """Builds the messages risk decides (ids and times from `clock`; tests give it `sequential_ids`)."""
        self.monotonic = monotonic
        self.trading = trading
        self.hot_state: dict[str, HotStateStatus | None] = {}
        self.market_link: ConnectionState | None = None
        """The venue's market-data stream state (None: never heard of; no market-data to wait for)."""
        self.paper = paper or PaperModes()
        """Which strategies trade on paper, and whether this system has a paper order link."""
        self.state = RiskState(venue=venue, backup_venue=backup_venue, paper_venue=self.paper.venue)
        """What risk derives from the ORDERS stream: changed only by `apply` (live and replay alike)."""
        self.degradation: DegradationLevel | None = DegradationLevel.NORMAL
        self.since: dict[str, int] = {}
        """When a followed dependency took its current value (UTC ns), by `entry_gates.since_key`: what
        the entry gates report as since-when (`svc.risk.entry_gates`)."""
        self.breakers = breakers
        self.latency = LatencyWindow(size=200, minimum=20)  # decision latency for CB-4 (its baseline is configured)
        self.resources = resources
        self.trading_lock = asyncio.Lock()
        self.decide_lock = asyncio.Lock()
        self.breaker_lock = asyncio.Lock()
        self.state_builder = StateBuilderWatch()
        self.bus_lost: str | None = None
        """Why new entries are HALTED by a lost bus connection (FM-C6), None when not; never persisted."""
        self.bus_tasks: set[asyncio.Task[None]] = set()
        self.revalidation: asyncio.Task[None] | None = None
        self.snapshots = snapshots
        self.policy = policy
        self.recovery: RecoveryReport | None = None

    @property
    def venues(self) -> tuple[str, ...]:
        """Venues this desk trades on: the main one, then the backup if configured."""
        return self.state.venues

    @property
    def pending(self) -> PendingExposure:
        """Approved orders not yet filled, rejected or canceled."""
        return self.state.pending

    @property
    def trades(self) -> TradeTracker:
        """Position changes as trades (CB-1/CB-3 inputs)."""
        return self.state.trades

    @property
    def orders_seq(self) -> int:
        """Highest ORDERS sequence reflected in memory (live consumer or replay)."""
        return self.state.orders_seq

    def capture(self, orders_seq: int) -> snap.RiskSnapshot:
        """Everything risk derived from the ORDERS stream up to `orders_seq`, plus breakers and trading state."""
        return snap.capture(self.state, orders_seq, self.breakers, self.trading, self.clock())

    def restore(self, snapshot: snap.RiskSnapshot) -> None:
        """Load a snapshot into memory (breakers only where newer than what is loaded: see `load_breakers`)."""
        snap.restore(self.state, snapshot)
        if self.breakers is not None:
            restore_newer(self.breakers, snapshot.breakers)

    def replay_message(self, message: Message, stream_seq: int) -> None:
        """Apply one ORDERS message of the replayed range to memory only (idempotent).

        No publishes and no breaker counting: everything in the range was processed with its effects
        before (KV breaker records include it), or is an order command whose decision follows on the log.
        """
        self.state.orders_seq = max(self.state.orders_seq, stream_seq)
        apply(self.state, message)

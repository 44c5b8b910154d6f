"""Who may publish and subscribe to what on the bus: one NATS user per component, least privilege.

Every process connects as the user named after its component (`risk`, `position-<venue>`,
`strategy-<name>`, ...) and may only publish the subjects it owns and subscribe (core NATS) to the
subjects it listens to, all built from `proto.subjects`. Market-data cannot publish orders, the
gateway cannot publish market data, only risk answers `svc.risk.*`, only a venue's position
process publishes that venue's fills and positions.

What every user needs besides its domain subjects: its heartbeat, alerts, dead letters of its own
durable consumers, replies (`_INBOX.>` to subscribe; answers to requests it received are allowed
by `allow_responses`), and the part of the JetStream API its code uses, named stream by stream and
consumer by consumer (`jetstream_api`): stream information, reads of the key-value buckets, the
latest message of a subject where it asks for one, its own durable consumers (create, update its
filter, information, fetch, acknowledge, delete to restart it at a sequence) and its own replay
consumers (`replay_consumers`). No service may create, fetch from, acknowledge for or delete another
service's consumer, nor delete or purge a stream. Every service may create a missing Bulwark stream
or bucket (with the configuration `proto.subjects` gives it, so whichever starts first declares
them); only the provisioner (`STREAM_PROVISIONERS`: the watchdog, and the admin user of
`bulwark up`) may change an existing stream's configuration.

`ADMIN` (the launcher, operator tools, the test harness) may do anything except delete or purge a
stream. `tests/unit/test_bus_permissions.py` checks this table against the subjects the services'
code actually uses, so it cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass

from proto import subjects

ADMIN = "bulwark-admin"
"""The user of the launcher, `bulwark projections` and test harnesses: every subject."""
KV_LEASES = "bulwark-leases"
"""The single-writer lease bucket (`libs.lease.LEASE_BUCKET`)."""
LEASE_KEY_PREFIX = "lease."
"""A lease's key in `KV_LEASES` is this and its name (`libs.lease.lease_key`)."""

JETSTREAM_API_PREFIX = "$JS.API"
INBOX = "_INBOX.>"
JETSTREAM_DESTRUCTIVE: tuple[str, ...] = (
    "$JS.API.STREAM.DELETE.>",
    "$JS.API.STREAM.PURGE.>",
    "$JS.API.STREAM.MSG.DELETE.>",
)
"""Nobody's code deletes or purges a stream: the log is the source of truth (SPEC FM-C3)."""
KV_BUCKETS: tuple[str, ...] = (subjects.KV_STATE, KV_LEASES)
"""The key-value buckets of Bulwark; their streams are `KV_<bucket>`."""
STREAM_PROVISIONERS: tuple[str, ...] = (subjects.WATCHDOG,)
"""Besides `ADMIN`: who may update an existing stream's configuration (a changed spec, more replicas)."""

MARKET_WS_LINK = subjects.MARKET_WS_LINK
MARKET_REST_LINK = "market-rest"
"""market-data's REST link to its venue (`services.market_data.adapters.MARKET_REST_LINK`)."""
MARKET_LINKS: tuple[str, ...] = (MARKET_WS_LINK, MARKET_REST_LINK)
"""The links market-data publishes the state of (`evt.link.<venue>.<link>`, KV `link.<venue>.<link>`)."""
ALERTS: tuple[str, ...] = (subjects.EVT_ALERT_RAISED, subjects.EVT_ALERT_RESOLVED)
ANY = "*"


def kv_subject(bucket: str, key: str = ">") -> str:
    """The subject a write (put, create, update, delete) of `key` in `bucket` is published on."""
    return f"$KV.{bucket}.{key}"


@dataclass(frozen=True)
class Grant:
    """What one user may do. Subjects may carry NATS wildcards (`*` one token, `>` the rest)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    deny_publish: tuple[str, ...] = JETSTREAM_DESTRUCTIVE


def _position_venue(component: str, main_venue: str) -> str:
    return main_venue if component == subjects.POSITION else component.removeprefix(f"{subjects.POSITION}-")


def kv_stream(bucket: str) -> str:
    """The stream that holds key-value bucket `bucket`."""
    return f"KV_{bucket}"


REPLAY_SLOTS = 4
"""Replay consumers a user may have on a stream at once: the processes of one component (an active
and a standby, a restart beside the process it replaces) each replay under a free one."""


def replay_consumers(component: str) -> tuple[str, ...]:
    """The names of `component`'s replay consumers on a stream (`libs.bus.Bus.replay`).

    Fixed names, so that a user's rights can name them (NATS permissions match whole tokens only,
    never a name's prefix); a replay takes the first one free (created with the server's exclusive
    create, so two processes never share one).
    """
    return tuple(f"{component}-replay-{slot}" for slot in range(1, REPLAY_SLOTS + 1))


def _api(*tokens: str) -> str:
    return ".".join((JETSTREAM_API_PREFIX, *tokens))


def _consumer_rights(stream: str, consumer: str, *, durable: bool) -> tuple[str, ...]:
    """Create (or update the filter of), read, fetch from and delete one named consumer of `stream`."""
    rights = (
        _api("CONSUMER", "CREATE", stream, consumer),
        # With a single filter subject the client appends it to the create subject.
        _api("CONSUMER", "CREATE", stream, consumer, ">"),
        _api("CONSUMER", "INFO", stream, consumer),
        _api("CONSUMER", "DELETE", stream, consumer),
        _api("CONSUMER", "MSG", "NEXT", stream, consumer),
    )
    if not durable:
        return rights  # a replay consumer acknowledges nothing
    return (
        *rights,
        _api("CONSUMER", "DURABLE", "CREATE", stream, consumer),
        f"$JS.ACK.{stream}.{consumer}.>",
    )


def jetstream_api(
    component: str,
    consumers: tuple[tuple[str, str], ...] = (),
    replays: tuple[str, ...] = (),
    last_messages: tuple[str, ...] = (),
    kv_watches: tuple[str, ...] = (),
) -> tuple[str, ...]:
    """The JetStream API subjects `component`'s user may send.

    Args:
        component: the user.
        consumers: (stream, durable) of each durable consumer it runs.
        replays: the streams it replays (`replay_consumers`).
        last_messages: the streams it asks for the latest message of a subject (`Bus.last_message`).
        kv_watches: the KV buckets it watches (`libs.kv_watch`: an ordered consumer, which the client
            creates without a name, recreates after a gap and keeps flowing with flow-control replies).
    """
    streams = (*(spec.name for spec in subjects.ALL_STREAMS), *(kv_stream(bucket) for bucket in KV_BUCKETS))
    rights = [_api("INFO")]
    rights += [_api("STREAM", "INFO", stream) for stream in streams]
    rights += [_api("STREAM", "CREATE", stream) for stream in streams]
    if component in STREAM_PROVISIONERS:
        rights += [_api("STREAM", "UPDATE", stream) for stream in streams]
    for bucket in KV_BUCKETS:
        # A key's value: a direct get (`DIRECT.GET.<stream>.<key subject>`) or, without direct
        # access, a message get; key-value writes are publishes on `$KV.<bucket>.<key>`, granted per key.
        rights += [
            _api("DIRECT", "GET", kv_stream(bucket)),
            _api("DIRECT", "GET", kv_stream(bucket), ">"),
            _api("STREAM", "MSG", "GET", kv_stream(bucket)),
        ]
    rights += [_api("STREAM", "MSG", "GET", stream) for stream in last_messages]
    for stream, durable in consumers:
        rights += _consumer_rights(stream, durable, durable=True)
    for stream in replays:
        for name in replay_consumers(component):
            rights += _consumer_rights(stream, name, durable=False)
    for bucket in kv_watches:
        rights += [
            _api("CONSUMER", "CREATE", kv_stream(bucket)),
            _api("CONSUMER", "INFO", kv_stream(bucket), ANY),  # its pending count at the start
            _api("CONSUMER", "DELETE", kv_stream(bucket), ANY),
            f"$JS.FC.{kv_stream(bucket)}.>",
        ]
    return tuple(rights)


def _common(
    component: str,
    consumers: tuple[tuple[str, str], ...] = (),
    *,
    replays: tuple[str, ...] = (),
    last_messages: tuple[str, ...] = (),
    dead_letters: tuple[str, ...] = (),
    kv_watches: tuple[str, ...] = (),
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(publish, subscribe) every component needs: its JetStream API, heartbeat, alerts, its dead letters.

    Args:
        dead_letters: names it dead-letters under besides its durables (a projection writer).
    """
    publish = (
        *jetstream_api(component, consumers, replays, last_messages, kv_watches),
        subjects.heartbeat(component),
        *ALERTS,
        *(subjects.dlq(name) for name in (*(durable for _, durable in consumers), *dead_letters)),
    )
    return publish, (INBOX,)


def _gateway() -> Grant:
    publish, subscribe = _common(subjects.GATEWAY)
    return Grant(
        publish=(
            *publish,
            subjects.CMD_ORDER_SUBMIT,
            subjects.CMD_ORDER_CANCEL,
            subjects.cmd_strategy(ANY, ANY),
            subjects.evt_operator(ANY),
            subjects.EVT_DEGRADATION,
            subjects.SVC_RISK_HALT,
            subjects.SVC_RISK_RESUME,
            subjects.SVC_RISK_STATE,
            subjects.SVC_RISK_BREAKER_RESET,
            subjects.SVC_RISK_VALIDATE_ORDER,
            subjects.SVC_RISK_ENTRY_GATES,
            subjects.SVC_STATE_BUILDER_BOOK,
            subjects.SVC_STATE_BUILDER_SYMBOLS,
            kv_subject(subjects.KV_STATE, subjects.KEY_DEGRADATION_LEVEL),
            # An operator's enable sets the strategy's order mode (live or paper).
            kv_subject(subjects.KV_STATE, subjects.key_strategy_mode(ANY)),
        ),
        # The live event stream (SSE) and order outcomes follow every event; heartbeats give components.
        subscribe=(*subscribe, subjects.EVT_ALL, subjects.HEARTBEAT_ALL),
    )


def _market_data() -> Grant:
    publish, subscribe = _common(subjects.MARKET_DATA)
    return Grant(
        publish=(
            *publish,
            # A spot link publishes under its own venue name (`binance-spot`): every venue token.
            subjects.MD_ALL,
            *(subjects.evt_link(ANY, link) for link in MARKET_LINKS),
            subjects.evt_breaker("venue.>"),
            subjects.SVC_RISK_HALT,
            *(kv_subject(subjects.KV_STATE, subjects.key_link(ANY, link)) for link in MARKET_LINKS),
            kv_subject(subjects.KV_STATE, subjects.key_breaker("venue.>")),
            kv_subject(subjects.KV_STATE, "ratelimit.>"),
        ),
        subscribe=(*subscribe, subjects.SVC_MARKET_DATA_RESYNC, kv_subject(subjects.KV_STATE, "ratelimit.>")),
    )


def _state_builder() -> Grant:
    publish, subscribe = _common(
        subjects.STATE_BUILDER,
        ((subjects.STREAM_MARKET_DATA.name, subjects.STATE_BUILDER_MARKET_DATA_CONSUMER),),
        replays=(subjects.STREAM_MARKET_DATA.name,),
    )
    return Grant(
        publish=(
            *publish,
            subjects.evt_hot_state(ANY),
            subjects.SVC_MARKET_DATA_RESYNC,
            kv_subject(subjects.KV_STATE, subjects.key_hot_state(ANY)),
        ),
        subscribe=(
            *subscribe,
            subjects.SVC_STATE_BUILDER_BOOK,
            subjects.SVC_STATE_BUILDER_SYMBOLS,
            subjects.evt_link_all_venues(subjects.MARKET_WS_LINK),
        ),
    )


def _risk() -> Grant:
    consumers = (
        (subjects.STREAM_ORDERS.name, subjects.RISK_ORDER_EVENTS_CONSUMER),
        (subjects.STREAM_ORDERS.name, subjects.RISK_ORDERS_CONSUMER),
        (subjects.STREAM_SIGNALS.name, subjects.RISK_SIGNALS_CONSUMER),
    )
    publish, subscribe = _common(
        subjects.RISK,
        consumers,
        replays=(subjects.STREAM_ORDERS.name,),
        last_messages=(subjects.STREAM_ORDERS.name,),
        kv_watches=(subjects.KV_STATE,),  # strategy modes (services/risk/paper.py)
    )
    return Grant(
        publish=(
            *publish,
            subjects.evt_order("approved", ANY, ANY),
            subjects.evt_order("denied", ANY, ANY),
            # Flattening cancels resting entries (SPEC CB-1).
            subjects.CMD_ORDER_CANCEL,
            subjects.cmd_strategy(ANY, "enable"),
            subjects.cmd_strategy(ANY, "disable"),
            subjects.EVT_TRADING_STATE,
            subjects.EVT_BACKGROUND_WORK,
            subjects.evt_breaker(">"),
            subjects.SVC_STATE_BUILDER_BOOK,
            subjects.SVC_STATE_BUILDER_SYMBOLS,
            kv_subject(subjects.KV_STATE, subjects.KEY_TRADING_STATE),
            kv_subject(subjects.KV_STATE, subjects.KEY_BACKGROUND_WORK),
            kv_subject(subjects.KV_STATE, subjects.key_breaker(">")),
        ),
        subscribe=(
            *subscribe,
            subjects.service_query(subjects.RISK, ANY),
            subjects.EVT_HOT_STATE_ALL,
            subjects.MD_MARK_ALL,
            subjects.EVT_DEGRADATION,
            subjects.CMD_STRATEGY_ENABLE_ALL,
            subjects.heartbeat(subjects.STATE_BUILDER),
            subjects.EVT_LINK_ALL,
        ),
    )


def _position(component: str, venue: str) -> Grant:
    consumers = (
        (subjects.STREAM_ORDERS.name, subjects.position_orders_consumer(component)),
        (subjects.STREAM_ORDERS.name, subjects.position_denials_consumer(component)),
        (subjects.STREAM_ORDERS.name, subjects.position_cancels_consumer(component)),
    )
    publish, subscribe = _common(
        component,
        consumers,
        replays=(subjects.STREAM_ORDERS.name,),
        # Not a durable: the projection rows Postgres refused are dead-lettered under this name.
        dead_letters=(subjects.position_projections_writer(component),),
    )
    return Grant(
        publish=(
            *publish,
            # Its own venue only: order events (including the approval of an order it issues
            # itself, a protective or flattening order), fills, positions, its link and breaker.
            subjects.evt_order(ANY, venue, ANY),
            subjects.evt_fill(venue, ANY),
            subjects.evt_position(venue, ANY),
            subjects.evt_link(venue, subjects.ORDER_LINK),
            subjects.evt_breaker(subjects.position_venue_breaker(venue)),
            subjects.EVT_DEGRADATION,
            subjects.SVC_RISK_HALT,
            kv_subject(subjects.KV_STATE, subjects.key_link(venue, subjects.ORDER_LINK)),
            kv_subject(subjects.KV_STATE, subjects.key_breaker(subjects.position_venue_breaker(venue))),
            kv_subject(subjects.KV_STATE, subjects.key_protection(venue, ANY)),
            kv_subject(subjects.KV_STATE, subjects.key_symbol_rules(venue, ANY)),
            kv_subject(subjects.KV_STATE, subjects.key_preflight(venue)),
            kv_subject(subjects.KV_STATE, subjects.KEY_DEGRADATION_LEVEL),
            kv_subject(subjects.KV_STATE, "ratelimit.>"),
            kv_subject(KV_LEASES, f"{LEASE_KEY_PREFIX}{component}"),
        ),
        subscribe=(
            *subscribe,
            subjects.svc_position_state(component),
            # Its venue's refusals, to learn the venue's rules from them.
            subjects.evt_order("rejected", venue, ANY),
            # Its own order link's state: a reconnect runs the venue preflight again.
            subjects.evt_link(venue, subjects.ORDER_LINK),
            kv_subject(subjects.KV_STATE, "ratelimit.>"),
        ),
    )


def _watchdog() -> Grant:
    consumers = (
        (subjects.STREAM_CONTROL.name, subjects.WATCHDOG_ALERTS_CONSUMER),
        (subjects.STREAM_DLQ.name, subjects.WATCHDOG_DLQ_CONSUMER),
        *((spec.name, durable) for spec, durable in subjects.WATCHDOG_AUDIT_CONSUMERS),
    )
    # Its recovery replays CONTROL; the periodic verification of the projections replays ORDERS;
    # an alert about a position is resolved by the position's latest event.
    publish, subscribe = _common(
        subjects.WATCHDOG,
        consumers,
        replays=(subjects.STREAM_CONTROL.name, subjects.STREAM_ORDERS.name),
        last_messages=(subjects.STREAM_ORDERS.name,),
    )
    return Grant(
        publish=(
            *publish,
            subjects.evt_component(ANY),
            subjects.EVT_HEALTH,
            subjects.EVT_DEGRADATION,
            subjects.EVT_PROJECTIONS_VERIFIED,
            subjects.SVC_STATE_BUILDER_SYMBOLS,
            kv_subject(subjects.KV_STATE, subjects.KEY_HEALTH),
            kv_subject(subjects.KV_STATE, subjects.KEY_DEGRADATION_LEVEL),
        ),
        subscribe=(*subscribe, subjects.HEARTBEAT_ALL, subjects.EVT_LINK_ALL),
    )


def _strategy(component: str) -> Grant:
    name = component.removeprefix("strategy-")
    consumers = (
        (subjects.STREAM_MARKET_DATA.name, subjects.strategy_market_data_consumer(name)),
        (subjects.STREAM_SIGNALS.name, subjects.strategy_commands_consumer(name)),
    )
    publish, subscribe = _common(
        component, consumers, replays=(subjects.STREAM_MARKET_DATA.name,), last_messages=(subjects.STREAM_ORDERS.name,)
    )
    return Grant(
        publish=(
            *publish,
            subjects.evt_signal(name, ANY),
            subjects.evt_strategy_state(name),
            subjects.evt_strategy_crashed(name),
            subjects.SVC_STATE_BUILDER_BOOK,  # book depth for a strategy that asks for it (docs/strategies.md)
            subjects.SVC_STATE_BUILDER_SYMBOLS,
            kv_subject(subjects.KV_STATE, subjects.key_strategy(name)),
            kv_subject(subjects.KV_STATE, subjects.key_strategy_crashes(name)),
            kv_subject(KV_LEASES, f"{LEASE_KEY_PREFIX}{subjects.strategy_lease(name)}"),
        ),
        # Market data comes through its durable consumer (JetStream), not core subscriptions.
        subscribe=(*subscribe, subjects.EVT_LINK_ALL, subjects.EVT_POSITION_ALL),
    )


def _admin() -> Grant:
    return Grant(publish=(">",), subscribe=(">",))


def grant(component: str, main_venue: str = subjects.DEFAULT_VENUE) -> Grant:
    """The permissions of `component`'s user.

    Args:
        component: a component name (`subjects.CORE_COMPONENTS`, `position-<venue>`,
            `strategy-<name>`) or `ADMIN`.
        main_venue: `BULWARK_VENUE`, the venue the `position` component trades.

    Raises:
        ValueError: `component` is no component of Bulwark.
    """
    match component:
        case subjects.GATEWAY:
            return _gateway()
        case subjects.MARKET_DATA:
            return _market_data()
        case subjects.STATE_BUILDER:
            return _state_builder()
        case subjects.RISK:
            return _risk()
        case subjects.WATCHDOG:
            return _watchdog()
        case name if name == ADMIN:
            return _admin()
        case name if name == subjects.POSITION or name.startswith(f"{subjects.POSITION}-"):
            return _position(name, _position_venue(name, main_venue))
        case name if name.startswith("strategy-") and len(name) > len("strategy-"):
            return _strategy(name)
    raise ValueError(f"{component!r} is no Bulwark component: no bus user")


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether `subject` (which may itself hold wildcards) is inside `pattern` by NATS rules.

    A wildcard in `subject` is only inside a pattern that has a wildcard at least as wide there,
    so `subject_matches("evt.>", "evt.order.*")` is true and
    `subject_matches("evt.order.approved.*", "evt.order.*.x")` false: the question is whether
    every concrete subject `subject` stands for is allowed.
    """
    want = pattern.split(".")
    have = subject.split(".")
    for index, token in enumerate(want):
        if token == ">":
            return len(have) > index
        if index >= len(have):
            return False
        if token == "*":
            if have[index] == ">":
                return False
            continue
        if have[index] != token:
            return False
    return len(have) == len(want)


def may_publish(component: str, subject: str, main_venue: str = subjects.DEFAULT_VENUE) -> bool:
    """Whether `component`'s user may publish `subject` (denials included)."""
    rules = grant(component, main_venue)
    if any(subject_matches(denied, subject) for denied in rules.deny_publish):
        return False
    return any(subject_matches(allowed, subject) for allowed in rules.publish)


def may_subscribe(component: str, subject: str, main_venue: str = subjects.DEFAULT_VENUE) -> bool:
    """Whether `component`'s user may subscribe to `subject` on core NATS."""
    return any(subject_matches(allowed, subject) for allowed in grant(component, main_venue).subscribe)


def may_update_streams(user: str) -> bool:
    """Whether `user` may change an existing stream's configuration (empty: a server without users)."""
    if not user:
        return True
    try:
        return may_publish(user, _api("STREAM", "UPDATE", subjects.STREAM_ORDERS.name))
    except ValueError:
        return False

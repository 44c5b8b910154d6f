"""The bus permission table (`proto.permissions`) against what the services' code does.

The scan reads every module of a service and finds each `subjects.<name>` it uses. Where the
subject is the argument of a publish (publish, request, a KV write) it must be in the service's
publish grant; of a core subscription (`subscribe_core`, `serve`) in its subscribe grant; a
JetStream consumer's filter needs no grant (reading a stream is open). Any other use must be
covered by one of the grants or be a persisted subject (read through a consumer). A service that
starts using a subject its user may not touch fails here, not in production with a permissions
violation.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from libs import lease
from proto import permissions, subjects
from proto.permissions import (
    MARKET_REST_LINK,
    MARKET_WS_LINK,
    grant,
    kv_subject,
    may_publish,
    may_subscribe,
    subject_matches,
)
from services.market_data import adapters as market_data_adapters

ROOT = Path(__file__).resolve().parents[2]
BACKUP_VENUE = "binance-usdm-backup"
STRATEGY = "cascade-fade"

SERVICES: dict[str, tuple[str, ...]] = {
    "gateway": (subjects.GATEWAY,),
    "market_data": (subjects.MARKET_DATA,),
    "state_builder": (subjects.STATE_BUILDER,),
    "risk": (subjects.RISK,),
    "position": (subjects.POSITION, subjects.position_component(BACKUP_VENUE, subjects.DEFAULT_VENUE)),
    "watchdog": (subjects.WATCHDOG,),
    "strategy": (subjects.strategy_component(STRATEGY),),
}
PUBLISH_VERBS = {"publish", "publish_buffered", "publish_core", "publish_many", "request", "_request", "_publish"}
SUBSCRIBE_VERBS = {"subscribe_core", "serve"}
KV_WRITE_VERBS = {"kv_put", "_kv_put", "kv", "put", "create", "update", "delete"}
READ_VERBS = {"last_message", "replay", "consume"}
READ_KEYWORDS = {"filter_subjects", "filter_subject", "durable"}
SUBJECT_PREFIXES = ("md.", "evt.", "cmd.", "hb.", "svc.", "dlq.")
KNOWN_VALUES: dict[str, dict[str, tuple[str, ...]]] = {
    # What the scan cannot see: the values an expression takes at run time (the scan runs once per value).
    "market_data": {
        "transition.name": ("venue.{venue}",),
        "link": (MARKET_WS_LINK, MARKET_REST_LINK),
    },
    "position": {
        "transition.name": (subjects.position_venue_breaker("{venue}"),),
        "self.orders_durable": (subjects.position_orders_consumer("{component}"),),
        "self.writer": (subjects.position_projections_writer("{component}"),),
    },
}
PERSISTED = tuple(pattern for spec in subjects.ALL_STREAMS for pattern in spec.subjects)


@dataclass(frozen=True)
class Use:
    """One subject a service's code names, and how it uses it."""

    subject: str
    how: str  # publish, subscribe, kv, read, other
    where: str


def _value(node: ast.expr, component: str, venue: str, known: dict[str, str]) -> object:
    """The value of an argument: literals and `subjects.X` constants; names standing for a venue,
    a strategy or a component become that; anything else a wildcard token."""
    if isinstance(node, ast.Constant):
        return node.value
    if _is_subjects(node):
        return getattr(subjects, node.attr)  # type: ignore[attr-defined]
    if isinstance(node, ast.Call) and _is_subjects(node.func):
        function = getattr(subjects, node.func.attr)  # type: ignore[attr-defined]
        return function(*(_value(arg, component, venue, known) for arg in node.args))
    text = ast.unparse(node)
    if text in known:
        return known[text].format(venue=venue, component=component)
    if "venue" in text:
        return venue
    if component.startswith("strategy-") and ("name" in text or "strategy" in text):
        return component.removeprefix("strategy-")
    if "component" in text:
        return component
    return permissions.ANY


def _evaluate(
    node: ast.Attribute, parents: dict[ast.AST, ast.AST], component: str, venue: str, known: dict[str, str]
) -> str | None:
    """The subject `subjects.<name>` at `node` stands for (None: not a subject, or an argument of another)."""
    parent = parents.get(node)
    grandparent = parents.get(parent) if parent is not None else None
    if isinstance(parent, ast.Call) and parent.func is not node and _is_subjects(parent.func):
        return None  # an argument of a subjects function: evaluated with it
    if isinstance(grandparent, ast.Call) and _is_subjects(grandparent.func) and isinstance(parent, ast.Call):
        return None
    target = getattr(subjects, node.attr, None)
    if isinstance(parent, ast.Call) and parent.func is node and callable(target):
        params = inspect.signature(target).parameters
        args = [_value(arg, component, venue, known) for arg in parent.args][: len(params)]
        value = target(*args)
    else:
        value = target
    if not isinstance(value, str) or value.endswith("."):
        return None  # a name, or a prefix (`SERVICE_QUERY_PREFIX`)
    return value


def _is_subjects(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "subjects"


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _verb(call: ast.Call) -> str | None:
    return call.func.attr if isinstance(call.func, ast.Attribute) else None


def _how(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> str:
    """How the subject at `node` is used: the nearest enclosing call or keyword decides."""
    child, current = node, parents.get(node)
    while current is not None:
        if isinstance(current, ast.keyword) and current.arg in READ_KEYWORDS:
            return "read"
        if isinstance(current, ast.Call) and child is not current.func:
            verb = _verb(current)
            first = current.args[0] if current.args else None
            on_first = first is not None and (child is first or any(child is n for n in ast.walk(first)))
            if verb in READ_VERBS:
                return "read"
            if on_first and verb in PUBLISH_VERBS:
                return "publish"
            if on_first and verb in SUBSCRIBE_VERBS:
                return "subscribe"
            if on_first and verb in KV_WRITE_VERBS:
                return "kv"
        if isinstance(current, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Module):
            break
        child, current = current, parents.get(current)
    return "other"


def _loop_uses(tree: ast.Module, constants: dict[str, ast.expr]) -> Iterator[tuple[ast.expr, str]]:
    """Subjects subscribed or published in a loop over a tuple (`for subject in FOLLOWED: subscribe_core(subject)`)."""
    for loop in ast.walk(tree):
        if not (isinstance(loop, ast.For | ast.AsyncFor) and isinstance(loop.target, ast.Name)):
            continue
        source = constants.get(loop.iter.id) if isinstance(loop.iter, ast.Name) else loop.iter
        if source is None:
            continue
        for call in ast.walk(loop):
            if not (isinstance(call, ast.Call) and call.args and isinstance(call.args[0], ast.Name)):
                continue
            if call.args[0].id != loop.target.id:
                continue
            verb = _verb(call)
            how = "publish" if verb in PUBLISH_VERBS else "subscribe" if verb in SUBSCRIBE_VERBS else None
            if how is not None:
                yield source, how


def service_uses(package: str, component: str, venue: str) -> list[Use]:
    """Every subject the modules of `services/<package>` name, with how each is used."""
    modules = sorted((ROOT / "services" / package).rglob("*.py"))
    trees = {path: ast.parse(path.read_text()) for path in modules}
    constants: dict[str, ast.expr] = {}
    for tree in trees.values():
        for statement in tree.body:
            if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
                target = statement.targets[0]
                if isinstance(target, ast.Name):
                    constants[target.id] = statement.value
    parents: dict[ast.AST, ast.AST] = {}
    for tree in trees.values():
        parents.update(_parents(tree))
    alternatives = KNOWN_VALUES.get(package, {})
    variants = max((len(values) for values in alternatives.values()), default=1)
    uses: list[Use] = []
    for variant in range(variants):
        known = {text: values[min(variant, len(values) - 1)] for text, values in alternatives.items()}
        uses += _scan(trees, constants, parents, component, venue, known)
    return uses


def _scan(
    trees: dict[Path, ast.Module],
    constants: dict[str, ast.expr],
    parents: dict[ast.AST, ast.AST],
    component: str,
    venue: str,
    known: dict[str, str],
) -> list[Use]:
    uses: list[Use] = []
    for path, tree in trees.items():
        where = str(path.relative_to(ROOT))
        for node in ast.walk(tree):
            if not _is_subjects(node):
                continue
            assert isinstance(node, ast.Attribute)
            subject = _evaluate(node, parents, component, venue, known)
            if subject is None:
                continue
            how = _how(node, parents)
            if how == "kv":
                uses.append(Use(kv_subject(subjects.KV_STATE, subject), "publish", where))
            elif subject.startswith(SUBJECT_PREFIXES):
                uses.append(Use(subject, how, where))
        for source, how in _loop_uses(tree, constants):
            for node in ast.walk(source):
                if isinstance(node, ast.Attribute) and _is_subjects(node):
                    subject = _evaluate(node, parents, component, venue, known)
                    if subject is not None and subject.startswith(SUBJECT_PREFIXES):
                        uses.append(Use(subject, how, where))
    return uses


def _cases() -> list[tuple[str, str, str]]:
    cases = []
    for package, components in SERVICES.items():
        for component in components:
            venue = BACKUP_VENUE if component.endswith(BACKUP_VENUE) else subjects.DEFAULT_VENUE
            cases.append((package, component, venue))
    return cases


@pytest.mark.parametrize(("package", "component", "venue"), _cases())
def test_grant_when_service_code_names_a_subject_then_its_user_may_use_it(
    package: str, component: str, venue: str
) -> None:
    uses = service_uses(package, component, venue)
    assert len(uses) >= 3, f"the scan found almost nothing in services/{package}"
    problems = []
    for use in uses:
        match use.how:
            case "publish":
                allowed = may_publish(component, use.subject)
            case "subscribe":
                allowed = may_subscribe(component, use.subject)
            case "read":
                allowed = True
            case _:
                allowed = (
                    may_publish(component, use.subject)
                    or may_subscribe(component, use.subject)
                    or any(subject_matches(pattern, use.subject) for pattern in PERSISTED)
                )
        if not allowed:
            problems.append(f"{use.where}: {use.how} {use.subject}")
    assert not problems, f"{component} may not: " + "; ".join(sorted(set(problems)))


def _stream_name(node: ast.expr | None, constants: dict[str, ast.expr]) -> str | None:
    """`subjects.STREAM_X.name` (directly or through a module or function constant), else None."""
    if isinstance(node, ast.Name) and node.id in constants:
        node = constants[node.id]
    if isinstance(node, ast.Attribute) and node.attr == "name" and _is_subjects(node.value):
        spec = getattr(subjects, node.value.attr)  # type: ignore[attr-defined]
        return str(spec.name)
    return None


def jetstream_uses(package: str, component: str, venue: str) -> list[Use]:
    """The JetStream API requests the modules of `services/<package>` make that name a stream:
    durable consumers (`consume(stream=..., durable=...)`), replays of a `StreamLog`, the latest
    message of a subject (`last_message`) and KV watches (`watch_keys`). Streams or durables the scan
    cannot resolve are left out."""
    uses: list[Use] = []
    known = {text: values[0] for text, values in KNOWN_VALUES.get(package, {}).items()}
    for path in sorted((ROOT / "services" / package).rglob("*.py")):
        tree = ast.parse(path.read_text())
        where = str(path.relative_to(ROOT))
        constants = {
            target.id: node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        for call in ast.walk(tree):
            if not isinstance(call, ast.Call):
                continue
            keywords = {keyword.arg: keyword.value for keyword in call.keywords}
            name = _verb(call) or (call.func.id if isinstance(call.func, ast.Name) else None)
            if name == "consume":
                stream = _stream_name(keywords.get("stream"), constants)
                durable = _value(keywords["durable"], component, venue, known) if "durable" in keywords else None
                if stream and isinstance(durable, str) and durable != permissions.ANY:
                    for request in (
                        f"CONSUMER.DURABLE.CREATE.{stream}.{durable}",
                        f"CONSUMER.MSG.NEXT.{stream}.{durable}",
                    ):
                        uses.append(Use(f"$JS.API.{request}", "publish", where))
                    uses.append(Use(f"$JS.ACK.{stream}.{durable}.1.1.1.1.1", "publish", where))
            elif name == "last_message":
                stream = _stream_name(call.args[0] if call.args else None, constants)
                if stream:
                    uses.append(Use(f"$JS.API.STREAM.MSG.GET.{stream}", "publish", where))
            elif name == "watch_keys":  # libs.kv_watch: an ordered consumer on the bucket's stream
                bucket = _value(keywords["bucket"], component, venue, known) if "bucket" in keywords else None
                stream = permissions.kv_stream(bucket if isinstance(bucket, str) else subjects.KV_STATE)
                uses.append(Use(f"$JS.API.CONSUMER.CREATE.{stream}", "publish", where))
                uses.append(Use(f"$JS.API.CONSUMER.INFO.{stream}.server-named", "publish", where))
                uses.append(Use(f"$JS.FC.{stream}.1.1", "publish", where))
            elif name == "StreamLog":
                stream = _stream_name(call.args[2] if len(call.args) > 2 else None, constants)
                if stream:
                    for replay in permissions.replay_consumers(component):
                        uses.append(Use(f"$JS.API.CONSUMER.CREATE.{stream}.{replay}", "publish", where))
                        uses.append(Use(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{replay}", "publish", where))
    return uses


@pytest.mark.parametrize(("package", "component", "venue"), _cases())
def test_grant_when_service_code_uses_a_stream_or_consumer_then_its_user_may_call_that_api(
    package: str, component: str, venue: str
) -> None:
    uses = jetstream_uses(package, component, venue)
    problems = sorted({f"{use.where}: {use.subject}" for use in uses if not may_publish(component, use.subject)})
    assert not problems, f"{component} may not: " + "; ".join(problems)


def test_jetstream_scan_when_services_consume_replay_and_read_then_it_sees_them() -> None:
    # The scan must resolve the calls, or the test above proves nothing.
    risk = {use.subject for use in jetstream_uses("risk", subjects.RISK, subjects.DEFAULT_VENUE)}
    assert f"$JS.API.CONSUMER.DURABLE.CREATE.ORDERS.{subjects.RISK_ORDERS_CONSUMER}" in risk
    assert f"$JS.API.CONSUMER.DURABLE.CREATE.SIGNALS.{subjects.RISK_SIGNALS_CONSUMER}" in risk
    assert "$JS.API.STREAM.MSG.GET.ORDERS" in risk
    assert "$JS.API.CONSUMER.CREATE.ORDERS.risk-replay-1" in risk
    assert f"$JS.API.CONSUMER.CREATE.KV_{subjects.KV_STATE}" in risk  # the strategy modes' watch
    position = {use.subject for use in jetstream_uses("position", subjects.POSITION, subjects.DEFAULT_VENUE)}
    assert f"$JS.API.CONSUMER.MSG.NEXT.ORDERS.{subjects.position_cancels_consumer(subjects.POSITION)}" in position
    watchdog = {use.subject for use in jetstream_uses("watchdog", subjects.WATCHDOG, subjects.DEFAULT_VENUE)}
    assert f"$JS.API.CONSUMER.DURABLE.CREATE.DLQ.{subjects.WATCHDOG_DLQ_CONSUMER}" in watchdog
    strategy = jetstream_uses("strategy", subjects.strategy_component(STRATEGY), subjects.DEFAULT_VENUE)
    assert f"$JS.API.CONSUMER.MSG.NEXT.SIGNALS.{subjects.strategy_commands_consumer(STRATEGY)}" in {
        use.subject for use in strategy
    }


def test_scan_when_a_service_publishes_outside_its_grant_then_it_is_found() -> None:
    # The scan must see direct publishes, KV writes and looped subscriptions, or the test above proves nothing.
    risk = service_uses("risk", subjects.RISK, subjects.DEFAULT_VENUE)
    assert Use(subjects.EVT_TRADING_STATE, "publish", "services/risk/trading_control.py") in risk
    assert any(use.how == "subscribe" and use.subject == subjects.heartbeat(subjects.STATE_BUILDER) for use in risk)
    assert any(use.subject == kv_subject(subjects.KV_STATE, subjects.KEY_TRADING_STATE) for use in risk)
    gateway = service_uses("gateway", subjects.GATEWAY, subjects.DEFAULT_VENUE)
    assert any(use.how == "publish" and use.subject == subjects.CMD_ORDER_SUBMIT for use in gateway)
    assert not may_publish(subjects.MARKET_DATA, subjects.CMD_ORDER_SUBMIT)


@pytest.mark.parametrize(
    ("component", "subject"),
    [
        (subjects.MARKET_DATA, subjects.CMD_ORDER_SUBMIT),
        (subjects.MARKET_DATA, subjects.CMD_ORDER_CANCEL),
        (subjects.MARKET_DATA, subjects.evt_order("approved", subjects.DEFAULT_VENUE, "BTCUSDT")),
        (subjects.GATEWAY, subjects.md_depth(subjects.DEFAULT_VENUE, "BTCUSDT")),
        (subjects.GATEWAY, subjects.evt_order("approved", subjects.DEFAULT_VENUE, "BTCUSDT")),
        (subjects.GATEWAY, subjects.evt_fill(subjects.DEFAULT_VENUE, "BTCUSDT")),
        (subjects.GATEWAY, subjects.EVT_TRADING_STATE),
        (subjects.strategy_component(STRATEGY), subjects.CMD_ORDER_SUBMIT),
        (subjects.strategy_component(STRATEGY), subjects.evt_signal("trend", "BTCUSDT")),
        (subjects.STATE_BUILDER, subjects.md_depth(subjects.DEFAULT_VENUE, "BTCUSDT")),
        (subjects.RISK, subjects.evt_fill(subjects.DEFAULT_VENUE, "BTCUSDT")),
        (subjects.RISK, subjects.evt_position(subjects.DEFAULT_VENUE, "BTCUSDT")),
        (subjects.WATCHDOG, subjects.CMD_ORDER_SUBMIT),
        (subjects.POSITION, subjects.evt_fill(BACKUP_VENUE, "BTCUSDT")),
        (subjects.POSITION, subjects.CMD_ORDER_SUBMIT),
        (subjects.POSITION, subjects.EVT_TRADING_STATE),
        (subjects.position_component(BACKUP_VENUE, subjects.DEFAULT_VENUE), subjects.evt_fill("binance-usdm", "X")),
        (subjects.MARKET_DATA, kv_subject(subjects.KV_STATE, subjects.KEY_TRADING_STATE)),
        (subjects.GATEWAY, kv_subject(subjects.KV_STATE, subjects.KEY_TRADING_STATE)),
        (subjects.MARKET_DATA, subjects.heartbeat(subjects.RISK)),
        (subjects.RISK, "$JS.API.STREAM.PURGE.ORDERS"),
        (subjects.RISK, "$JS.API.STREAM.DELETE.ORDERS"),
        (permissions.ADMIN, "$JS.API.STREAM.DELETE.ORDERS"),
    ],
)
def test_grant_when_component_publishes_what_another_owns_then_refused(component: str, subject: str) -> None:
    assert not may_publish(component, subject)


def test_grant_when_answering_risk_queries_then_only_risk_subscribes() -> None:
    everyone = [subjects.GATEWAY, subjects.MARKET_DATA, subjects.STATE_BUILDER, subjects.POSITION, subjects.WATCHDOG]
    everyone.append(subjects.strategy_component(STRATEGY))
    for query in (subjects.SVC_RISK_HALT, subjects.SVC_RISK_RESUME, subjects.SVC_RISK_BREAKER_RESET):
        assert may_subscribe(subjects.RISK, query)
        assert [name for name in everyone if may_subscribe(name, query)] == []


def test_grant_when_order_events_of_a_venue_then_only_its_position_process_publishes_fills() -> None:
    fill = subjects.evt_fill(subjects.DEFAULT_VENUE, "BTCUSDT")
    filled = subjects.evt_order("filled", subjects.DEFAULT_VENUE, "BTCUSDT")
    components = [*(c for group in SERVICES.values() for c in group), permissions.ADMIN]
    assert [c for c in components if may_publish(c, fill)] == [subjects.POSITION, permissions.ADMIN]
    assert [c for c in components if may_publish(c, filled)] == [subjects.POSITION, permissions.ADMIN]


def test_grant_when_any_component_then_it_may_read_streams_and_buckets_and_get_replies() -> None:
    for component in (*(c for group in SERVICES.values() for c in group), permissions.ADMIN):
        assert may_publish(component, "$JS.API.STREAM.INFO.ORDERS")
        assert may_publish(component, "$JS.API.STREAM.INFO.KV_bulwark-state")
        assert may_publish(component, "$JS.API.DIRECT.GET.KV_bulwark-state.$KV.bulwark-state.trading_state")
        assert may_publish(component, "$JS.API.STREAM.CREATE.ORDERS")
        assert may_subscribe(component, "_INBOX.abc.def")


ALL_COMPONENTS = tuple(c for group in SERVICES.values() for c in group)
RISK_EVENTS = subjects.RISK_ORDER_EVENTS_CONSUMER
POSITION_ORDERS = subjects.position_orders_consumer(subjects.POSITION)


@pytest.mark.parametrize(
    ("subject", "allowed"),
    [
        # Its own durable: create (legacy and named form, with the filter appended), fetch, ack, info, delete.
        (f"$JS.API.CONSUMER.DURABLE.CREATE.ORDERS.{RISK_EVENTS}", {subjects.RISK}),
        (f"$JS.API.CONSUMER.CREATE.ORDERS.{RISK_EVENTS}", {subjects.RISK}),
        (f"$JS.API.CONSUMER.CREATE.ORDERS.{RISK_EVENTS}.evt.order.>", {subjects.RISK}),
        (f"$JS.API.CONSUMER.MSG.NEXT.ORDERS.{RISK_EVENTS}", {subjects.RISK}),
        (f"$JS.ACK.ORDERS.{RISK_EVENTS}.1.2.3.4.5", {subjects.RISK}),
        (f"$JS.API.CONSUMER.INFO.ORDERS.{RISK_EVENTS}", {subjects.RISK}),
        (f"$JS.API.CONSUMER.DELETE.ORDERS.{POSITION_ORDERS}", {subjects.POSITION}),
        (f"$JS.ACK.ORDERS.{POSITION_ORDERS}.1.2.3.4.5", {subjects.POSITION}),
        # Its durable's name on another stream is not its durable.
        (f"$JS.API.CONSUMER.CREATE.MARKET_DATA.{RISK_EVENTS}", set()),
        # A consumer of a server-made name (the legacy ephemeral form): nobody but the admin.
        ("$JS.API.CONSUMER.CREATE.ORDERS", set()),
        ("$JS.API.CONSUMER.CREATE.KV_bulwark-state", {subjects.RISK}),  # its strategy-mode watch only
        # Replays under its own replay consumer, on the streams it replays.
        ("$JS.API.CONSUMER.CREATE.ORDERS.risk-replay-1", {subjects.RISK}),
        ("$JS.API.CONSUMER.CREATE.ORDERS.risk-replay-4", {subjects.RISK}),
        ("$JS.API.CONSUMER.CREATE.ORDERS.risk-replay-5", set()),  # as many as REPLAY_SLOTS, no more
        ("$JS.API.CONSUMER.MSG.NEXT.MARKET_DATA.state-builder-replay-2", {subjects.STATE_BUILDER}),
        ("$JS.API.CONSUMER.MSG.NEXT.ORDERS.watchdog-replay-3", {subjects.WATCHDOG}),
        # The latest position of a symbol (risk's and a strategy's exposure).
        ("$JS.API.STREAM.MSG.GET.ORDERS", {subjects.RISK, subjects.WATCHDOG, subjects.strategy_component(STRATEGY)}),
        # Changing a stream's configuration is the provisioner's.
        ("$JS.API.STREAM.UPDATE.ORDERS", {subjects.WATCHDOG}),
        ("$JS.API.STREAM.UPDATE.KV_bulwark-state", {subjects.WATCHDOG}),
        ("$JS.API.STREAM.CREATE.SOMETHING_ELSE", set()),
        ("$JS.API.STREAM.DELETE.ORDERS", set()),
        ("$JS.API.STREAM.PURGE.ORDERS", set()),
        ("$JS.API.STREAM.MSG.DELETE.ORDERS", set()),
        ("$JS.API.ACCOUNT.PURGE.x", set()),
    ],
)
def test_jetstream_api_when_a_consumer_or_stream_is_another_s_then_refused(subject: str, allowed: set[str]) -> None:
    assert {c for c in ALL_COMPONENTS if may_publish(c, subject)} == allowed
    if not subject.startswith(("$JS.API.STREAM.DELETE", "$JS.API.STREAM.PURGE", "$JS.API.STREAM.MSG.DELETE")):
        assert may_publish(permissions.ADMIN, subject)


def test_may_update_streams_when_provisioner_or_admin_then_true() -> None:
    assert permissions.may_update_streams(permissions.ADMIN)
    assert permissions.may_update_streams(subjects.WATCHDOG)
    assert permissions.may_update_streams("")  # a server without users
    assert not permissions.may_update_streams(subjects.MARKET_DATA)
    assert not permissions.may_update_streams("intruder")


def test_grant_when_unknown_component_then_error() -> None:
    with pytest.raises(ValueError, match="no Bulwark component"):
        grant("intruder")


def test_link_names_when_permissions_name_them_then_they_match_market_data() -> None:
    assert MARKET_WS_LINK == market_data_adapters.MARKET_WS_LINK
    assert MARKET_REST_LINK == market_data_adapters.MARKET_REST_LINK


def test_lease_names_when_permissions_name_them_then_they_match_the_lease_library() -> None:
    assert permissions.KV_LEASES == lease.LEASE_BUCKET
    assert lease.lease_key("x") == f"{permissions.LEASE_KEY_PREFIX}x"


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("evt.>", "evt.order.*", True),
        ("evt.>", "evt", False),
        ("evt.order.*.x.*", "evt.order.filled.x.BTC", True),
        ("evt.order.*.x.*", "evt.order.*.y.BTC", False),
        ("evt.order.approved.*.*", "evt.order.*.x.BTC", False),
        ("svc.risk.*", "svc.risk.halt", True),
        ("svc.risk.*", "svc.risk.halt.more", False),
        ("a.*", "a.>", False),
    ],
)
def test_subject_matches_when_wildcards_then_nats_rules(pattern: str, subject: str, expected: bool) -> None:
    assert subject_matches(pattern, subject) is expected

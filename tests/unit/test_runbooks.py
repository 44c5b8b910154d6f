"""The runbooks in `docs/runbooks/`: one page per failure mode and breaker of the catalogue
(`docs/FAILURE_MODES.md`), each with every section an on-call engineer needs, an index linking all of
them, and every alert the code can raise mapped to a page that names it (`libs/runbooks.py`)."""

from __future__ import annotations

import ast
import re
from decimal import Decimal
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

from libs.runbooks import ALERT_RUNBOOKS, DEFAULT_RUNBOOK_BASE_URL, INDEX_PAGE, runbook_page, runbook_url
from proto.enums import AlertSeverity
from proto.messages import AlertRaised
from services.market_data.quality import reconnect_findings
from services.risk.breakers import ABNORMAL_MARKET, RAPID_LOSS, RESOURCE_EXHAUSTION, strategy_breaker_id
from services.watchdog import alerts
from tests.support.repository import ROOT

RUNBOOKS = ROOT / "docs" / "runbooks"
CATALOGUE = ROOT / "docs" / "FAILURE_MODES.md"
ID_HEADING = re.compile(r"^### ((?:FM-[A-Z]+[0-9]+|CB-[0-9]+)) — (.+)$", re.MULTILINE)
SECTIONS = (
    "## What you see",
    "## What the system has already done",
    "## What to check",
    "## How to recover",
    "## How to verify",
    "## When to escalate",
)
PLACEHOLDER = "<x>"


def catalogue_ids() -> dict[str, str]:
    return dict(ID_HEADING.findall(CATALOGUE.read_text()))


def sections_of(page: Path) -> dict[str, str]:
    """Each `## ` heading of a page and the text under it."""
    parts = re.split(r"^(## .+)$", page.read_text(), flags=re.MULTILINE)
    return {heading.strip(): body.strip() for heading, body in zip(parts[1::2], parts[2::2], strict=True)}


def missing_sections(page: Path) -> list[str]:
    found = sections_of(page)
    return [section for section in SECTIONS if len(found.get(section, "")) < 40]


# --------------------------------------------------------------------------- pages


def test_runbooks_when_the_catalogue_lists_an_id_then_its_page_has_the_title_and_every_section() -> None:
    ids = catalogue_ids()
    assert len(ids) >= 27 and {"FM-N1", "FM-D1", "FM-C1", "CB-1"} <= ids.keys()
    problems: dict[str, object] = {}
    for identifier, title in ids.items():
        page = RUNBOOKS / f"{identifier}.md"
        if not page.is_file():
            problems[identifier] = "no page"
            continue
        first = page.read_text().splitlines()[0]
        if first != f"# {identifier} — {title}":
            problems[identifier] = f"title {first!r}"
        elif missing := missing_sections(page):
            problems[identifier] = missing
    assert problems == {}


def test_runbooks_when_a_page_is_mapped_from_alerts_then_it_exists_with_every_section() -> None:
    pages = {page for _, page in ALERT_RUNBOOKS}
    assert {page: missing_sections(RUNBOOKS / f"{page}.md") for page in pages if page in catalogue_ids()} == {
        page: [] for page in pages if page in catalogue_ids()
    }
    for page in pages - catalogue_ids().keys():
        path = RUNBOOKS / f"{page}.md"
        assert path.is_file(), page
        assert missing_sections(path) == [], page


def test_runbooks_index_when_read_then_links_every_page_and_every_link_resolves() -> None:
    index = (RUNBOOKS / f"{INDEX_PAGE}.md").read_text()
    linked = set(re.findall(r"\]\(([^)#]+\.md)\)", index))
    pages = {path.name for path in RUNBOOKS.glob("*.md")} - {f"{INDEX_PAGE}.md"}
    assert pages <= linked
    assert all((RUNBOOKS / target).is_file() for target in linked)


def test_runbooks_when_a_page_links_another_document_then_the_target_exists() -> None:
    broken = []
    for page in RUNBOOKS.glob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            if not (page.parent / target).resolve().exists():
                broken.append(f"{page.name} -> {target}")
    assert broken == []


# --------------------------------------------------------------------------- alert kinds -> runbooks


def _literal(node: ast.expr | None, names: dict[str, list[ast.expr]], depth: int = 0) -> list[str]:
    """The alert keys an expression can produce, with `<x>` for every interpolated part."""
    if node is None or depth > 3:
        return []
    match node:
        case ast.Constant(value=str(value)):
            return [value]
        case ast.JoinedStr(values=parts):
            return ["".join(part.value if isinstance(part, ast.Constant) else PLACEHOLDER for part in parts)]
        case ast.IfExp(body=body, orelse=orelse):
            return _literal(body, names, depth + 1) + _literal(orelse, names, depth + 1)
        case ast.BinOp(left=left, op=ast.Add(), right=right):
            return [a + b for a in _literal(left, names, depth + 1) for b in _literal(right, names, depth + 1)]
        case ast.Name(id=name) | ast.Attribute(attr=name):
            return [key for value in names.get(name, []) for key in _literal(value, {}, depth + 1)]
        case ast.Call(func=ast.Name(id=name) | ast.Attribute(attr=name), args=args):
            if name == "scoped" and args:
                return _literal(args[0], names, depth + 1)
            return [key for value in names.get(name, []) for key in _literal(value, {}, depth + 1)]
    return []


def _assignments(scope: ast.AST) -> dict[str, list[ast.expr]]:
    """Names (and functions, by their return values) assigned in a scope."""
    names: dict[str, list[ast.expr]] = {}
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                pairs: list[tuple[ast.expr, ast.expr]] = [(target, node.value)]
                if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                    pairs = list(zip(target.elts, node.value.elts, strict=False))
                for name, value in pairs:
                    if isinstance(name, ast.Name):
                        names.setdefault(name.id, []).append(value)
        elif isinstance(node, ast.FunctionDef):
            returns = [ret.value for ret in ast.walk(node) if isinstance(ret, ast.Return) and ret.value is not None]
            names.setdefault(node.name, []).extend(returns)
    return names


def raised_alert_keys() -> dict[str, set[str]]:
    """Every alert key the code raises, as a template (`md.clock_offset.<x>`), and where.

    Read from the source: `AlertRaised(key=...)`, the services' `alert(key, ...)` and
    `raise_alert(key, ...)` helpers, and the watchdog's `Finding(key, ...)` rules; names are
    followed to their assignments in the function or module, and `scoped(...)` to its argument.
    """
    found: dict[str, set[str]] = {}
    for path in sorted([*(ROOT / "services").rglob("*.py"), *(ROOT / "libs").rglob("*.py")]):
        tree = ast.parse(path.read_text())
        calls = {"alert", "raise_alert"} | ({"Finding"} if "watchdog" in path.parts else set())
        module_names = _assignments(tree)
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            names = {**module_names, **_assignments(function)}
            for node in ast.walk(function):
                if not isinstance(node, ast.Call):
                    continue
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", "")
                if name in ("AlertRaised", "AlertResolved"):
                    expressions = [keyword.value for keyword in node.keywords if keyword.arg == "key"]
                elif name in calls and node.args:
                    expressions = [node.args[0]]
                else:
                    continue
                for expression in expressions:
                    for key in _literal(expression, names):
                        found.setdefault(key, set()).add(str(path.relative_to(ROOT)))
    return found


def concrete_keys(template: str) -> list[str]:
    """Keys whose kind is itself interpolated, spelt out from the code's own values."""
    if template == f"breaker.{PLACEHOLDER}":
        return [
            f"breaker.{breaker}"
            for breaker in (RAPID_LOSS, ABNORMAL_MARKET, strategy_breaker_id("trend"), RESOURCE_EXHAUSTION)
        ]
    if template == f"md.{PLACEHOLDER}.{PLACEHOLDER}":
        checks = reconnect_findings(Decimal(100), Decimal(200), Decimal(100), Decimal(300))
        assert len(checks) == 2
        return [f"md.{check}.BTCUSDT" for check, _ in checks]
    return [template]


def test_alert_keys_when_any_service_can_raise_one_then_it_maps_to_a_runbook_page_that_names_it() -> None:
    keys = raised_alert_keys()
    # The scan sees the alerts of every service and the watchdog's rules (it can fail).
    assert {"component_down:<x>", "data_stale_long:<x>", "md.clock_offset.<x>", "breaker.<x>"} <= keys.keys()
    assert {"venue-order-link:<x>", "strategy-failed:<x>", "bus-lost.risk", "projections-diverged"} <= keys.keys()
    assert len(keys) >= 40
    problems = {}
    for template, where in sorted(keys.items()):
        for key in concrete_keys(template):
            page = runbook_page(key)
            path = RUNBOOKS / f"{page}.md"
            pattern = next((pattern for pattern, _ in ALERT_RUNBOOKS if fnmatchcase(key, pattern)), "")
            named = "`" + pattern.split("*", 1)[0]  # the page names the kind as the table does
            if page == INDEX_PAGE:
                problems[key] = f"no runbook pattern ({sorted(where)})"
            elif not path.is_file():
                problems[key] = f"page {page}.md missing"
            elif named not in path.read_text():
                problems[key] = f"{page}.md does not name {named}`"
    assert problems == {}


@pytest.mark.parametrize(
    ("key", "page"),
    [
        ("component_down:state-builder", "FM-C1"),
        ("component_down:strategy-trend", "FM-C2"),
        ("component_down:position-binance-usdm-backup", "FM-C9"),
        ("component_down:risk", "component-down"),
        ("link:binance-usdm.market-rest", "FM-N2"),
        ("link:binance-usdm.orders", "FM-N6"),
        ("link:binance-usdm.market-ws", "FM-N1"),
        ("breaker.CB-3-trend", "CB-3"),
        ("md.clock_offset.binance-usdm.halt", "FM-D3"),
        ("something-new", INDEX_PAGE),
    ],
)
def test_runbook_page_when_a_key_is_specific_then_the_specific_page_wins(key: str, page: str) -> None:
    assert runbook_page(key) == page


def test_alert_notice_when_raised_without_a_runbook_then_gets_the_page_of_its_key_under_the_base() -> None:
    base = "https://git.example/bulwark/blob/main/docs/runbooks/"
    router = alerts.AlertRouter(runbook_base_url=base)
    raised = AlertRaised(
        key="breaker.CB-1", severity=AlertSeverity.P0, component="risk", title="CB-1 rapid loss tripped"
    )
    own = AlertRaised(key="x", severity=AlertSeverity.P3, component="risk", title="t", runbook_url="https://r/own.md")

    notice = alerts.apply(router, raised)
    kept = alerts.apply(router, own)

    assert notice is not None and notice.runbook_url == "https://git.example/bulwark/blob/main/docs/runbooks/CB-1.md"
    assert kept is not None and kept.runbook_url == "https://r/own.md"
    assert runbook_url("breaker.CB-1", "") == f"{DEFAULT_RUNBOOK_BASE_URL}/CB-1.md"
    assert (ROOT / runbook_url("breaker.CB-1")).is_file()  # the default points at the page in the checkout

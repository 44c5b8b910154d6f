"""The operator dashboard in a real headless browser (Debian's chromium driven by selenium) against
one whole running system: sign in, see the state live, halt and resume from the page with a reason
and a confirmation, watch an order placed through the API appear and fill, and a viewer sees no
buttons. Screenshots of each step are kept in `artifacts/dashboard/` (git-ignored) for a person to look at.

The cancel from the page and the emergency stop (which ends trading on the system) are the slow
test, last in the module: the default run keeps to the system start and the main walk-through.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from entrypoints.harness.system import RunningSystem
from proto import subjects
from tests.support.debian import require_binary
from tests.support.polling import eventually_blocking

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "dashboard"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1600,2200",
)
PAGE_TIMEOUT_S = 45.0
ORDER = {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.002"}
LIVE_TRADING_ROW = '#events tr[data-type="TradingStateChanged"][data-origin="stream"]'


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    driver_path = require_binary("chromedriver", "chromium", "chromium-driver")
    options = Options()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _screenshot(driver: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    # The whole page, not just the window: the sections below the fold are what a reviewer checks.
    # The window only grows (a resize re-lays the page out, which costs time on a busy machine).
    height = int(driver.execute_script("return document.documentElement.scrollHeight")) + 40
    if height > driver.get_window_size()["height"]:
        driver.set_window_size(1600, height)
    driver.save_screenshot(str(path))
    return path


def _wait(driver: WebDriver, check: Callable[[], Any], what: str, timeout_s: float = PAGE_TIMEOUT_S) -> Any:
    """`check` becomes truthy in the page, or the test fails naming `what` (with a screenshot)."""

    def attempt() -> Any:
        try:
            return check()
        except (StaleElementReferenceException, WebDriverException):
            return None  # the section was redrawn under the lookup: look again

    try:
        return eventually_blocking(attempt, timeout_s, interval_s=0.25)
    except AssertionError:
        shot = _screenshot(driver, f"failed-{what.replace(' ', '-')[:40]}")
        raise AssertionError(f"dashboard: {what} not seen within {timeout_s:.0f} s (screenshot {shot})") from None


def _text(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def _sign_in(driver: WebDriver, system: RunningSystem, token: str, role: str) -> None:
    driver.get(system.gateway + "/")
    # A token kept in this tab signs in again by itself: wait for the page to settle either way.
    _wait(
        driver,
        lambda: (
            driver.find_element(By.ID, "token").is_displayed() or driver.find_element(By.ID, "signout").is_displayed()
        ),
        "page loaded",
    )
    if driver.find_element(By.ID, "signout").is_displayed():
        driver.find_element(By.ID, "signout").click()
    _wait(driver, lambda: driver.find_element(By.ID, "token").is_displayed(), "sign-in form")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "signin-button").click()
    _wait(driver, lambda: role in _text(driver, "who"), f"signed in as {role}")
    stored = driver.execute_script("return sessionStorage.getItem('bulwark-token')")
    assert stored == token, "the token is kept in sessionStorage for this tab"


def _control(driver: WebDriver, action: str, reason: str, word: str | None = None) -> None:
    """Click a control, check it insists on a reason (and on the typed `word`), then confirm it."""
    driver.find_element(By.CSS_SELECTOR, f'[data-action="{action}"]').click()
    _wait(driver, lambda: driver.find_element(By.ID, "confirm").is_displayed(), f"{action} confirmation")
    driver.find_element(By.ID, "confirm-ok").click()
    _wait(driver, lambda: "reason is required" in _text(driver, "confirm-error"), f"{action} asks for a reason")
    assert driver.find_element(By.ID, "confirm").is_displayed(), "no reason: nothing is done"
    driver.find_element(By.ID, "confirm-reason").send_keys(reason)
    if word is not None:
        driver.find_element(By.ID, "confirm-ok").click()
        _wait(driver, lambda: f"Type {word}" in _text(driver, "confirm-error"), f"{action} asks to type {word}")
        assert driver.find_element(By.ID, "confirm").is_displayed(), "not typed: nothing is done"
        driver.find_element(By.ID, "confirm-typed").send_keys(word)
    if action != "resume":  # resume's dialog looks like halt's
        _screenshot(driver, f"confirm-{action}")
    driver.find_element(By.ID, "confirm-ok").click()
    _wait(driver, lambda: not driver.find_element(By.ID, "confirm").is_displayed(), f"{action} dialog closed")


def _page_errors(driver: WebDriver) -> list[str]:
    """Script errors and policy violations the page logged (an API answering 4xx/5xx is not one:
    the page shows those itself)."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and "Failed to load resource" not in entry["message"]
    ]


def _page_number(text: str) -> Decimal | None:
    """A number as the page writes it ("65,000.1", "+1.25"); None for "-"."""
    cleaned = text.replace(",", "").replace("+", "").strip()
    return Decimal(cleaned) if cleaned not in ("", "-") else None


def _position_matches_api(driver: WebDriver, client: Any, symbol: str) -> bool:
    """The page's position row shows the mark and unrealized PnL `/v1/positions` answers now, both
    taken from the API (the mark moves: compared at the page's rounding, retried until they agree)."""
    rows = [row for row in client.get("/v1/positions").json()["positions"] if row["symbol"] == symbol]
    if not rows or rows[0]["mark_price"] is None:
        return False
    api = rows[0]
    quantity, entry, mark = (Decimal(api[key]) for key in ("quantity", "average_entry_price", "mark_price"))
    assert Decimal(api["unrealized_pnl"]) == (mark - entry) * quantity, api
    row = driver.find_element(By.CSS_SELECTOR, f'#positions tr[data-position="{api["venue"]}/{symbol}"]')
    cells = {cell: row.find_element(By.CSS_SELECTOR, f'td[data-cell="{cell}"]') for cell in ("mark", "unrealized")}
    if any(cell.get_attribute("data-source") != "api" for cell in cells.values()):
        return False
    shown_mark, shown_pnl = (_page_number(cell.text) for cell in cells.values())
    close = Decimal("0.005")
    return (
        shown_mark is not None
        and shown_pnl is not None
        and abs(shown_mark - mark) <= close
        and abs(shown_pnl - Decimal(api["unrealized_pnl"])) <= close
    )


def _order_row(driver: WebDriver, client_order_id: str) -> Any:
    rows = driver.find_elements(By.CSS_SELECTOR, f'#orders tr[data-order="{client_order_id}"]')
    return rows[0] if rows else None


def _order_status(driver: WebDriver, client_order_id: str) -> str | None:
    row = _order_row(driver, client_order_id)
    return row.get_attribute("data-status") if row is not None else None


def test_dashboard_when_operator_acts_then_page_shows_it_live_and_viewer_sees_no_buttons(
    system: RunningSystem, browser: WebDriver
) -> None:
    driver = browser
    _sign_in(driver, system, system.operator_token, "operator")

    # The state, live: the stream connects and the status fills the overview and components.
    _wait(driver, lambda: _text(driver, "live") == "stream: live", "event stream live")
    _wait(driver, lambda: _text(driver, "trading") == "ACTIVE", "trading ACTIVE")
    assert _text(driver, "level") and _text(driver, "health") != "?"
    gateway_row = _wait(
        driver,
        lambda: driver.find_element(By.CSS_SELECTOR, '#components tr[data-component="gateway"]'),
        "gateway component row",
    )
    assert "READY" in gateway_row.text
    restarts = gateway_row.find_element(By.CSS_SELECTOR, "td[data-source]")
    assert restarts.get_attribute("data-source") == "api" and restarts.text == "0", "restarts, as the gateway counts"
    _wait(driver, lambda: driver.find_elements(By.CSS_SELECTOR, '#entry tr[data-entry="BTCUSDT"]'), "BTCUSDT entry row")
    _wait(
        driver,
        lambda: "VALID" in driver.find_element(By.CSS_SELECTOR, '.book[data-symbol="BTCUSDT"] .status').text,
        "BTCUSDT book VALID",
    )
    _screenshot(driver, "1-operator-overview")
    assert _page_errors(driver) == [], "no script error, no content-security-policy violation"

    # Halt from the page: reason and confirmation, the system halts, the audit trail names the operator.
    reason = f"dashboard e2e halt {uuid.uuid4().hex[:6]}"
    _control(driver, "halt", reason)
    _wait(driver, lambda: _text(driver, "trading") == "HALTED", "trading HALTED on the page")
    # The page may hear the event a moment before risk's persisted state (which /v1/status reads) is written.
    eventually_blocking(lambda: system.status()["trading_state"] == "HALTED", 5)
    with system.client(system.viewer_token) as client:
        changes = client.get("/v1/events", params={"type": "TradingStateChanged", "limit": 5}).json()["events"]
    halted = [event["payload"] for event in changes if event["payload"]["current"] == "HALTED"]
    assert halted and halted[0]["reason"] == reason and halted[0]["operator"] == "operator", changes
    live_row = _wait(
        driver,
        lambda: driver.find_element(By.CSS_SELECTOR, LIVE_TRADING_ROW),
        "TradingStateChanged in the live audit events",
    )
    subject_cell = live_row.find_elements(By.TAG_NAME, "td")[2]
    assert subject_cell.text == subjects.EVT_TRADING_STATE, "a live row shows the subject the stream sent"
    _screenshot(driver, "2-halted")

    _control(driver, "resume", "dashboard e2e resume")
    _wait(driver, lambda: _text(driver, "trading") == "ACTIVE", "trading ACTIVE again")
    eventually_blocking(lambda: system.status()["trading_state"] == "ACTIVE", 5)

    # An order placed through the API appears on the page by itself and fills.
    with system.client(system.operator_token) as client:
        placed = client.post("/v1/orders", json=ORDER, headers={"Idempotency-Key": f"dash-{uuid.uuid4()}"})
    assert placed.status_code in (200, 201, 202), placed.text
    order_id = placed.json()["client_order_id"]
    _wait(driver, lambda: _order_row(driver, order_id), "the API's order on the page")
    _wait(driver, lambda: _order_status(driver, order_id) == "FILLED", "the order FILLED")
    _wait(
        driver,
        lambda: driver.find_elements(By.CSS_SELECTOR, '#positions tr[data-position$="/BTCUSDT"]'),
        "the BTCUSDT position",
    )
    # The position row shows the gateway's mark and unrealized PnL (not the page's estimate at the mid).
    with system.client(system.viewer_token) as client:
        _wait(driver, lambda: _position_matches_api(driver, client, "BTCUSDT"), "the API's mark and unrealized PnL")
    time.sleep(1.5)  # one more chart frame so the screenshot shows the fill's latency point
    _screenshot(driver, "3-order-filled")

    # A viewer gets the same page without a single action.
    _sign_in(driver, system, system.viewer_token, "viewer")
    _wait(driver, lambda: _text(driver, "trading") == "ACTIVE", "viewer sees the trading state")
    _wait(driver, lambda: _order_row(driver, order_id), "viewer sees the order")
    _wait(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "#strategies tr[data-strategy]"), "viewer strategies")
    crashes = driver.find_element(By.CSS_SELECTOR, '#strategies tr[data-strategy] td[data-cell="crashes"]')
    assert crashes.get_attribute("data-source") == "api" and crashes.text.startswith("0 in window"), crashes.text
    actions = [element.get_attribute("outerHTML") for element in driver.find_elements(By.CSS_SELECTOR, "[data-action]")]
    assert actions == [], "a viewer must see no action"
    assert driver.find_elements(By.CSS_SELECTOR, "main button") == []
    assert "read-only" in _text(driver, "controls-note")
    _screenshot(driver, "4-viewer")
    assert _page_errors(driver) == []


ENTRY_SHAPES_SCRIPT = """
const done = arguments[arguments.length - 1];
import("/dashboard/assets/entry.js").then((entry) => done([
  entry.entryRows({can_enter: {BTCUSDT: {can_enter: false,
    reasons: [{reason: "trading_state", message: "HALTED", since_ns: 1700000000000000000}]}}}),
  entry.entryRows({can_enter: {"binance-usdm": {ETHUSDT: {can_enter: true, reasons: []}}}}),
  entry.entryRows({can_enter: [{venue: "backup", symbol: "BTCUSDT", allowed: false, blocked_by: ["lease"]}]}),
  entry.entryRows({symbols: {BTCUSDT: {hot_state: "SUSPECT", can_enter: false, reasons: ["hot state SUSPECT"]}}}),
  entry.entryRows({trading_state: "ACTIVE", symbols: {BTCUSDT: {hot_state: "VALID"}}}),
  entry.entryRows({symbols: {BTCUSDT: {hot_state: "VALID", can_enter: false, entry_venue: "binance-usdm",
    blocked_by: [{gate: "link", reason: "market data stream SUSPECT: clean window after a reconnect",
                  since_ns: 1700000000000000000}]}}}),
]), (err) => done(String(err)));
"""


def test_entry_verdict_when_status_shapes_differ_then_page_reads_each_and_never_guesses(
    system: RunningSystem, browser: WebDriver
) -> None:
    # `can_enter` in /v1/status is young: whichever shape it takes, the overview reads it, and
    # without it the page says it has no verdict instead of inventing one.
    browser.get(system.gateway + "/")
    by_map, by_venue, as_list, on_symbol, absent, gateway_shape = browser.execute_async_script(ENTRY_SHAPES_SCRIPT)
    # The gateway's own shape: the gate named, risk's sentence as the detail, the entry venue.
    assert gateway_shape == [
        {
            "venue": "binance-usdm",
            "symbol": "BTCUSDT",
            "allowed": False,
            "reasons": [
                {
                    "what": "link",
                    "detail": "market data stream SUSPECT: clean window after a reconnect",
                    "sinceNs": 1700000000000000000,
                }
            ],
            "sinceNs": None,
        }
    ]
    assert by_map == [
        {
            "venue": "",
            "symbol": "BTCUSDT",
            "allowed": False,
            "reasons": [{"what": "trading_state", "detail": "HALTED", "sinceNs": 1700000000000000000}],
            "sinceNs": None,
        }
    ]
    assert [(row["venue"], row["symbol"], row["allowed"]) for row in by_venue] == [("binance-usdm", "ETHUSDT", True)]
    assert [(row["venue"], row["allowed"], [r["what"] for r in row["reasons"]]) for row in as_list] == [
        ("backup", False, ["lease"])
    ]
    assert [(row["symbol"], row["allowed"], [r["what"] for r in row["reasons"]]) for row in on_symbol] == [
        ("BTCUSDT", False, ["hot state SUSPECT"])
    ]
    assert absent is None


SSE_PARSE_SCRIPT = """
const done = arguments[arguments.length - 1];
import("/dashboard/assets/sse.js").then(({ parseEvents }) => {
  // Frames as the gateway writes them, cut at arbitrary points as a network delivers them.
  const wire = ": connected\\n\\nevent: OrderFilled\\nid: m-1\\nsubject: evt.order.filled\\n" +
    "data: {\\"symbol\\": \\"BTCUSDT\\"}\\n\\n" +
    ": keep-alive\\n\\nevent: AlertRaised\\r\\nid: m-2\\r\\ndata: {\\"key\\": \\"a\\"}\\r\\n\\r\\nevent: Trunc";
  const crlf = wire.indexOf("\\r\\n") + 1;  // one piece ends between "\\r" and "\\n"
  const seen = [];
  let buffer = "";
  let from = 0;
  for (const cut of [7, 30, 31, 64, crlf, 90, wire.length].sort((a, b) => a - b)) {
    buffer += wire.slice(from, cut);
    from = cut;
    const [events, rest] = parseEvents(buffer);
    buffer = rest;
    seen.push(...events);
  }
  done({ events: seen, rest: buffer });
}, (err) => done(String(err)));
"""


def test_event_stream_parser_when_frames_arrive_in_pieces_then_each_event_whole_once(
    system: RunningSystem, browser: WebDriver
) -> None:
    browser.get(system.gateway + "/")
    parsed = browser.execute_async_script(SSE_PARSE_SCRIPT)
    assert parsed["events"] == [
        {"type": "OrderFilled", "id": "m-1", "subject": "evt.order.filled", "data": '{"symbol": "BTCUSDT"}'},
        {"type": "AlertRaised", "id": "m-2", "subject": "", "data": '{"key": "a"}'},
    ]
    assert parsed["rest"] == "event: Trunc", "an unfinished frame waits for the rest of it"


@pytest.mark.slow
def test_dashboard_when_operator_cancels_and_stops_then_order_canceled_and_system_in_hard_shutdown(
    system: RunningSystem, browser: WebDriver
) -> None:
    # Last in the module: the emergency stop ends trading for good on this system.
    driver = browser
    _sign_in(driver, system, system.operator_token, "operator")
    _wait(driver, lambda: _text(driver, "live") == "stream: live", "event stream live")

    # A resting order is cancelled from the page, after a confirmation.
    with system.client(system.viewer_token) as client:
        best_bid = Decimal(client.get("/v1/book/BTCUSDT", params={"depth": 1}).json()["bids"][0][0])
    # 3 % under the bid: it rests, and stays inside the venue's PERCENT_PRICE band.
    resting = {**ORDER, "type": "LIMIT", "price": str(int(best_bid * Decimal("0.97")))}
    with system.client(system.operator_token) as client:
        placed = client.post("/v1/orders", json=resting, headers={"Idempotency-Key": f"dash-{uuid.uuid4()}"})
    assert placed.status_code in (200, 201, 202), placed.text
    resting_id = placed.json()["client_order_id"]
    _wait(driver, lambda: _order_status(driver, resting_id) == "NEW", "the resting order NEW")
    _order_row(driver, resting_id).find_element(By.CSS_SELECTOR, '[data-action="cancel-order"]').click()
    _wait(driver, lambda: driver.find_element(By.ID, "confirm").is_displayed(), "cancel confirmation")
    driver.find_element(By.ID, "confirm-ok").click()
    _wait(driver, lambda: _order_status(driver, resting_id) == "CANCELED", "order CANCELED")
    with system.client(system.viewer_token) as client:
        assert client.get(f"/v1/orders/{resting_id}").json()["status"] == "CANCELED"

    # Last, as it ends trading for good: the emergency stop, with a reason and the typed word.
    _wait(driver, lambda: driver.find_elements(By.CSS_SELECTOR, '[data-action="emergency-stop"]'), "the stop button")
    _control(driver, "emergency-stop", "dashboard e2e emergency stop", word="STOP")
    _wait(driver, lambda: _text(driver, "level") == "HARD_SHUTDOWN", "level HARD_SHUTDOWN on the page")
    _wait(driver, lambda: _text(driver, "trading") == "HALTED", "trading HALTED after the stop")
    assert system.status()["degradation_level"] == "HARD_SHUTDOWN"
    _wait(
        driver,
        lambda: driver.find_elements(By.CSS_SELECTOR, '#alerts li[data-alert="degradation:HARD_SHUTDOWN"]'),
        "the emergency stop's P0 alert",
    )
    _screenshot(driver, "5-emergency-stop")

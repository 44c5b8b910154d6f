// Bulwark operator dashboard: sign-in, the overview (state, entry permission, alerts, controls),
// the status poll (what does not stream) and the event stream that keeps every section live.
import { api, explain, token } from "./api.js";
import { confirmAction } from "./confirm.js";
import { $, ago, clock, fill, h, stateCell, toast, tone } from "./dom.js";
import { entryRows, inferredBlockers } from "./entry.js";
import {
  AuditEvents, Books, DeadLetters, debounce, Flow, impliedStatus, Orders, Positions, Strategies,
} from "./sections.js";
import { follow } from "./sse.js";

const STATUS_POLL_MS = 2000;
const SEVERITY_RANK = { P0: 0, P1: 1, P2: 2, P3: 3 };

const ctx = { session: null, canAct: () => Boolean(ctx.session && ctx.session.can_act) };
let sections = null;
let status = null;
const pids = new Map();
let stopStream = null;
let pollTimer = null;
let streamedBefore = false;

// ------------------------------------------------------------------------------------ sign-in

function showSignIn(message = "") {
  if (stopStream) stopStream();
  clearTimeout(pollTimer);
  $("main").hidden = true;
  $("signout").hidden = true;
  $("who").textContent = "";
  $("signin").hidden = false;
  $("signin-error").textContent = message;
  $("token").value = "";
  $("token").focus();
}

async function signIn() {
  const used = token.get();
  let session;
  try {
    session = await api("/dashboard/session");
  } catch (err) {
    if (token.get() !== used) return; // another sign-in took over meanwhile
    if (err.status === 401 || err.status === 403) {
      token.clear();
      showSignIn("That token is not accepted by this gateway.");
    } else {
      // The gateway is busy or unreachable: keep the token and try again, saying so.
      showSignIn(`Cannot reach the gateway (${explain(err)}); retrying…`);
      setTimeout(() => { if (token.get() === used && !ctx.session) signIn(); }, 3000);
    }
    return;
  }
  if (token.get() !== used || ctx.session) return; // a stale answer, or already signed in
  ctx.session = session;
  $("signin").hidden = true;
  $("main").hidden = false;
  $("signout").hidden = false;
  $("who").textContent = `${ctx.session.name} (${ctx.session.role})`;
  $("who").dataset.role = ctx.session.role;
  start();
}

// Every change of who is signed in starts from a fresh page, so nothing drawn, polled or streamed
// for the previous token (and its role's buttons) can outlive it.
$("signin-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token.set($("token").value.trim());
  if (ctx.session || sections) location.reload();
  else signIn();
});
$("signout").addEventListener("click", () => {
  token.clear();
  ctx.session = null;
  location.reload();
});

// ------------------------------------------------------------------------------------ overview

function pill(id, value) {
  $(id).textContent = value ?? "?";
  $(`pill-${id}`).className = `pill ${tone(value)}`;
}

function drawEntry() {
  const rows = entryRows(status);
  const note = $("entry-note");
  if (rows === null) {
    // /v1/status has no per-symbol entry verdict yet: say what the rest of the status shows.
    const blockers = inferredBlockers(status);
    note.textContent = "This gateway's /v1/status has no can_enter yet: the verdict below is read from trading state, " +
      "level, breakers and preflight, not per symbol.";
    const symbols = Object.entries((status && status.symbols) || {});
    fill($("entry"), symbols.map(([symbol, info]) => {
      const reasons = [...blockers];
      if (info.hot_state !== "VALID") reasons.push({ what: "hot state", detail: info.hot_state, sinceNs: null });
      return entryRow("", symbol, reasons.length === 0, reasons);
    }), "no symbols", 4);
    return;
  }
  note.textContent = "";
  fill($("entry"), rows.map((row) => entryRow(row.venue, row.symbol, row.allowed, row.reasons)), "no symbols", 4);
}

function entryRow(venue, symbol, allowed, reasons) {
  const verdict = allowed === null ? "?" : allowed ? "ALLOWED" : "BLOCKED";
  return h("tr", { dataset: { entry: symbol, allowed: String(allowed) } },
    h("td", { class: "muted" }, venue || "-"),
    h("td", {}, h("b", {}, symbol)),
    h("td", { class: allowed ? "entry-yes" : "entry-no" }, verdict),
    h("td", {}, reasons.length
      ? h("ul", { class: "reasons" }, reasons.map((reason) => h("li", {}, h("b", {}, reason.what),
        reason.detail ? `: ${reason.detail}` : "",
        reason.sinceNs ? h("span", { class: "since" }, ` since ${clock(reason.sinceNs)}`) : "")))
      : h("span", { class: "muted" }, allowed ? "nothing" : "-")));
}

async function loadAlerts() {
  const body = await api("/v1/alerts?recent=0");
  const alerts = body.alerts.slice().sort((a, b) =>
    (SEVERITY_RANK[a.severity] ?? 9) - (SEVERITY_RANK[b.severity] ?? 9) || b.event_id - a.event_id);
  $("alert-count").textContent = String(alerts.length);
  $("alerts").replaceChildren(...(alerts.length ? alerts.map((alert) => {
    const runbook = alert.runbook_url || (alert.details && alert.details.runbook_url);
    return h("li", { class: alert.severity, dataset: { alert: alert.key } },
      h("span", { class: `sev ${alert.severity === "P0" || alert.severity === "P1" ? "bad" : "warn"}` }, alert.severity),
      h("b", {}, alert.title), " ", h("span", { class: "muted small" }, `${alert.component} · ${clock(alert.ts_event_ns)}`),
      runbook ? h("a", { href: runbook, target: "_blank", rel: "noopener", class: "small" }, " runbook") : null);
  }) : [h("li", { class: "empty" }, "no open alerts")]));
}

function drawControls() {
  const box = $("control-buttons");
  if (!ctx.canAct()) {
    box.replaceChildren();
    $("controls-note").textContent = `Signed in as ${ctx.session.role}: read-only, no actions.`;
    return;
  }
  $("controls-note").textContent = "Each action asks for a reason and a confirmation; it is recorded with your name.";
  box.replaceChildren(
    h("button", { type: "button", class: "danger", dataset: { action: "halt" }, onclick: () => control("halt") },
      "Halt trading"),
    h("button", { type: "button", class: "primary", dataset: { action: "resume" }, onclick: () => control("resume") },
      "Resume trading"),
    h("button", { type: "button", class: "danger", dataset: { action: "emergency-stop" },
      onclick: () => control("emergency-stop") }, "Emergency stop"));
}

const CONTROLS = {
  halt: { path: "/v1/trading/halt", title: "Halt trading?", word: null,
    text: "Risk denies every new order until trading is resumed. Open positions and their protection stay." },
  resume: { path: "/v1/trading/resume", title: "Resume trading?", word: null,
    text: "Risk approves new orders again (it refuses to resume while a breaker or the level forbids it)." },
  "emergency-stop": { path: "/v1/emergency-stop", title: "EMERGENCY STOP?", word: "STOP",
    text: "Sets HARD_SHUTDOWN and halts trading. Only a manual restart of the system leaves HARD_SHUTDOWN." },
};

async function control(action) {
  const spec = CONTROLS[action];
  const confirmed = await confirmAction({ title: spec.title, text: spec.text, reason: true, word: spec.word,
    button: action === "resume" ? "Resume" : action === "halt" ? "Halt" : "Emergency stop" });
  if (!confirmed) return;
  try {
    const result = await api(spec.path, { method: "POST", body: { reason: confirmed.reason } });
    toast(`${action}: trading ${result.trading_state ?? "?"}${result.degradation_level ? `, level ${result.degradation_level}` : ""}`);
    if (result.trading_state) pill("trading", result.trading_state);
    refreshStatus();
  } catch (err) {
    toast(`${action} refused: ${explain(err)}`, "bad");
  }
}

// ------------------------------------------------------------------------------------ status poll

function drawComponents() {
  const components = Object.entries(status.components || {}).sort(([a], [b]) => a.localeCompare(b));
  fill($("components"), components.map(([name, component]) => {
    const seen = pids.get(name) || new Set();
    if (component.pid) seen.add(component.pid);
    pids.set(name, seen);
    // The gateway counts restarts from the heartbeats; an older gateway without the field: pids seen here.
    const counted = typeof component.restarts === "number";
    const restarts = counted ? component.restarts : Math.max(0, seen.size - 1);
    const since = counted && component.restarts_since_ns ? `since ${clock(component.restarts_since_ns)}` : "";
    const age = component.last_heartbeat_age_ms;
    return h("tr", { dataset: { component: name } },
      h("td", {}, name), stateCell(component.state), h("td", { class: "num mono" }, component.pid ?? "-"),
      h("td", { class: `num ${age === null || age > 3000 ? "bad" : age > 1500 ? "warn" : ""}` }, ago(age)),
      h("td", {
        class: `num ${restarts > 0 ? "warn" : "muted"}`, dataset: { source: counted ? "api" : "page" },
        title: counted ? `processes replaced ${since} (gateway, heartbeats)` : "process ids seen (audit log and this page)",
      }, String(restarts)));
  }), "no components", 5);
  fill($("links"), Object.entries(status.links || {}).sort().map(([name, link]) =>
    h("tr", {}, h("td", {}, name), stateCell(link.state),
      h("td", { class: "muted" }, [link.reason, ...(link.causes || [])].filter(Boolean).join("; ")))), "no links reported", 3);
  const dependencies = Object.entries(status.dependencies || {}).sort().map(([name, state]) =>
    h("tr", {}, h("td", {}, name), stateCell(state)));
  for (const [venue, info] of Object.entries(status.venues || {})) {
    dependencies.push(h("tr", {}, h("td", {}, `venue ${venue} (${info.role})`),
      h("td", { class: tone(info.order_link) }, `orders ${info.order_link ?? "not reported"}`,
        info.order_link_reason ? h("span", { class: "muted" }, ` — ${info.order_link_reason}`) : null)));
  }
  const preflight = status.preflight;
  if (preflight) {
    const failed = (preflight.checks || []).filter((check) => !check.ok).map((check) => `${check.name}: ${check.message}`);
    dependencies.push(h("tr", {}, h("td", {}, `preflight ${preflight.venue || ""}`),
      h("td", { class: preflight.ok ? "ok" : "bad", title: failed.join("\n") },
        preflight.ok ? "passed" : `failed: ${failed.join("; ") || "see checks"}`)));
  }
  fill($("dependencies"), dependencies, "-", 2);
}

function drawBreakers() {
  const rows = Object.entries(status.breakers || {}).sort(([a], [b]) => a.localeCompare(b)).map(([name, breaker]) => {
    const resettable = breaker.breaker && breaker.state !== "CLOSED" && ctx.canAct();
    return h("tr", { dataset: { breaker: name } },
      h("td", { title: breaker.title || "" }, name, breaker.title ? h("div", { class: "muted small" }, breaker.title) : null),
      stateCell(breaker.state),
      h("td", { class: "muted" }, breaker.reason || "", breaker.trips ? ` (${breaker.trips} trips)` : ""),
      h("td", {}, resettable ? h("button", { type: "button", class: "small", dataset: { action: "reset-breaker" },
        onclick: () => resetBreaker(breaker.breaker) }, "Reset") : null));
  });
  fill($("breakers"), rows, "no breakers stored", 4);
}

async function resetBreaker(id) {
  const confirmed = await confirmAction({ title: `Reset breaker ${id}?`, reason: true, button: "Reset",
    text: "Risk closes the breaker if its condition is gone; it trips again if not." });
  if (!confirmed) return;
  try {
    await api(`/v1/breakers/${encodeURIComponent(id)}/reset`, { method: "POST", body: { reason: confirmed.reason } });
    toast(`breaker ${id} reset`);
    refreshStatus();
  } catch (err) {
    toast(`reset ${id} refused: ${explain(err)}`, "bad");
  }
}

async function refreshStatus() {
  try {
    status = await api("/v1/status");
    $("banner").hidden = true;
    pill("trading", status.trading_state);
    pill("level", status.degradation_level);
    pill("health", status.health);
    drawEntry();
    drawComponents();
    drawBreakers();
    $("updated").textContent = `status ${new Date().toLocaleTimeString([], { hour12: false })}`;
    await sections.books.refresh(status.symbols || {});
    sections.positions.refresh();
  } catch (err) {
    if (err.status === 401 && token.get()) {
      token.clear();
      sessionStorage.setItem("bulwark-signin-message", "The gateway no longer accepts this token.");
      location.reload(); // the token was revoked: back to the sign-in form
      return;
    }
    $("banner").hidden = false;
    $("banner").textContent = `Status unavailable: ${explain(err)}. What is shown may be out of date.`;
  }
}

function schedulePoll() {
  clearTimeout(pollTimer);
  pollTimer = setTimeout(async () => {
    await refreshStatus();
    if (ctx.session) schedulePoll();
  }, STATUS_POLL_MS);
}

// ------------------------------------------------------------------------------------ event stream

const refreshStatusSoon = debounce(refreshStatus, 250);
const loadAlertsSoon = debounce(() => loadAlerts().catch(() => {}), 250);

const HANDLERS = {
  TradingStateChanged: (event) => { if (!event.symbol) pill("trading", event.current); refreshStatusSoon(); },
  DegradationLevelChanged: (event) => { pill("level", event.current); refreshStatusSoon(); },
  HealthChanged: (event) => pill("health", event.current),
  AlertRaised: loadAlertsSoon,
  AlertResolved: loadAlertsSoon,
  PositionChanged: (event) => sections.positions.changed(event),
  BreakerStateChanged: refreshStatusSoon,
  LinkStateChanged: refreshStatusSoon,
  HotStateStatusChanged: refreshStatusSoon,
  StrategyStateChanged: () => sections.strategies.reload(),
  StrategyCrashed: (event) => { sections.strategies.crashed(event); sections.strategies.reload(); },
  DeadLettered: () => sections.dlq.reload(),
  ComponentStatusChanged: (event) => {
    if (event.pid) (pids.get(event.component) || pids.set(event.component, new Set()).get(event.component)).add(event.pid);
    refreshStatusSoon();
  },
};

function onEvent(frame) {
  let payload;
  try {
    payload = JSON.parse(frame.data);
  } catch {
    return; // a frame we cannot read is skipped; the snapshots still come from the API
  }
  const type = frame.type !== "message" ? frame.type : payload.type || "unknown";
  sections.flow.count(type);
  sections.flow.observe(type, payload, payload.ts_event_ns);
  if (type.startsWith("Order")) {
    const id = payload.client_order_id || (payload.order || {}).client_order_id;
    sections.orders.touched(id, impliedStatus(type, payload));
  }
  const handler = HANDLERS[type];
  if (handler) handler(payload);
  sections.events.live(type, payload, frame.subject);
}

function onStreamState(state, detail) {
  const live = $("live");
  live.className = `live ${state === "live" ? "on" : "off"}`;
  live.textContent = state === "live" ? "stream: live" : "stream: reconnecting";
  live.title = detail || "live event stream (/v1/events/stream)";
  // After a reconnect, anything missed while disconnected comes from the snapshots again.
  if (state === "live" && streamedBefore) resync();
  if (state === "live") streamedBefore = true;
}

// ------------------------------------------------------------------------------------ start

async function seedFromAuditLog() {
  const changes = await api("/v1/events?type=ComponentStatusChanged&limit=500");
  for (const event of changes.events) {
    if (event.payload.pid) {
      const seen = pids.get(event.payload.component) || new Set();
      seen.add(event.payload.pid);
      pids.set(event.payload.component, seen);
    }
  }
  await Promise.all([sections.positions.seed(), sections.strategies.seed(), sections.flow.seed()]);
}

async function resync() {
  const results = await Promise.allSettled([
    refreshStatus(), loadAlerts(), sections.orders.load(), sections.positions.load(), sections.strategies.load(),
    sections.dlq.load(), sections.events.load(),
  ]);
  const failed = results.filter((result) => result.status === "rejected");
  if (failed.length) toast(`some sections did not load: ${explain(failed[0].reason)}`, "bad");
}

function start() {
  if (stopStream) stopStream(); // a new sign-in replaces the previous session's stream
  streamedBefore = false;
  if (!sections) {
    const books = new Books(ctx);
    sections = {
      books,
      orders: new Orders(ctx),
      positions: new Positions(ctx, books),
      strategies: new Strategies(ctx),
      dlq: new DeadLetters(ctx),
      events: new AuditEvents(ctx),
      flow: new Flow(),
    };
  }
  drawControls();
  seedFromAuditLog().catch((err) => toast(`history not loaded: ${explain(err)}`, "bad"));
  resync();
  schedulePoll();
  stopStream = follow("/v1/events/stream", token.get, onEvent, onStreamState);
}

$("host").textContent = location.host;
const message = sessionStorage.getItem("bulwark-signin-message") || "";
sessionStorage.removeItem("bulwark-signin-message");
if (token.get()) signIn();
else showSignIn(message);

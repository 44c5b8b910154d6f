// The dashboard's sections below the overview: each loads its snapshot from the API and is then
// kept current by the event stream (see app.js `onEvent`), except books, which do not stream.
import { api, explain } from "./api.js";
import { DepthChart, TimeSeries } from "./charts.js";
import { confirmAction } from "./confirm.js";
import { $, ago, clock, dec, fill, h, signed, stateCell, toast, tone } from "./dom.js";

const TERMINAL = new Set(["FILLED", "CANCELED", "REJECTED", "EXPIRED", "DENIED"]);
const MAX_ORDERS = 300;
const MAX_EVENTS = 500;
const NOISE = new Set(["MarketDataFlagged", "SignalGenerated", "HotStateStatusChanged"]);

const STATUS_RANK = { PENDING_SUBMISSION: 1, SUBMITTED: 2, NEW: 3, PARTIALLY_FILLED: 4, PENDING_CANCEL: 4 };

function statusRank(status) {
  if (!status) return 0;
  return TERMINAL.has(status) ? 5 : STATUS_RANK[status] ?? 0;
}

/** The status an order event implies (null: it says nothing about the status). */
export function impliedStatus(type, payload) {
  switch (type) {
    case "OrderDenied": return "DENIED";
    case "OrderRejected": return "REJECTED";
    case "OrderCanceled": return "CANCELED";
    case "OrderAccepted": return payload.status || null;
    case "OrderFilled":
      return Number(payload.cumulative_quantity) >= Number(payload.order_quantity) ? "FILLED" : "PARTIALLY_FILLED";
    default: return null;
  }
}

/** Run `task` at most once per `ms`, the last call winning (snapshots refreshed after bursts of events). */
export function debounce(task, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => task(...args), ms);
  };
}

function actionButton(ctx, label, action, onClick, klass = "small") {
  if (!ctx.canAct()) return null;
  return h("button", { type: "button", class: klass, dataset: { action }, onclick: onClick }, label);
}

async function act(ctx, label, call, after) {
  try {
    const result = await call();
    toast(`${label}: done`, "ok");
    if (after) await after(result);
    return result;
  } catch (err) {
    toast(`${label} failed: ${explain(err)}`, "bad");
    return null;
  }
}

// ------------------------------------------------------------------------------------ orders

export class Orders {
  constructor(ctx) {
    this.ctx = ctx;
    this.orders = new Map();
    this.pending = new Map();
    this.expected = new Map();
    this.fresh = new Set();
    this.render = debounce(() => this.draw(), 100);
    $("orders-filter").addEventListener("input", () => this.draw());
    $("orders-status").addEventListener("change", () => this.draw());
  }

  async load() {
    const body = await api("/v1/orders?limit=200");
    this.orders.clear();
    for (const order of body.orders) this.orders.set(order.client_order_id, order);
    this.draw();
  }

  /**
   * An order event arrived: fetch that order's projection row. The projection is written after the
   * event, so the row is read again while it is missing or behind the status the event implies.
   */
  touched(clientOrderId, expected = null) {
    if (!clientOrderId) return;
    clearTimeout(this.pending.get(clientOrderId));
    if (expected && statusRank(expected) > statusRank(this.expected.get(clientOrderId))) {
      this.expected.set(clientOrderId, expected);
    }
    const attempt = async (tries) => {
      let again = false;
      try {
        const order = await api(`/v1/orders/${encodeURIComponent(clientOrderId)}`);
        this.orders.set(order.client_order_id, order);
        this.fresh.add(order.client_order_id);
        this.render();
        again = statusRank(order.status) < statusRank(this.expected.get(clientOrderId));
      } catch (err) {
        again = err.status === 404 || err.status === 429 || err.status === 503;
      }
      if (again && tries > 0) this.pending.set(clientOrderId, setTimeout(() => attempt(tries - 1), 500));
      else this.expected.delete(clientOrderId);
    };
    this.pending.set(clientOrderId, setTimeout(() => attempt(20), 150));
  }

  matches(order) {
    const status = $("orders-status").value;
    if (status === "open" && TERMINAL.has(order.status)) return false;
    if (status && status !== "open" && order.status !== status) return false;
    const text = $("orders-filter").value.trim().toLowerCase();
    if (!text) return true;
    return [order.client_order_id, order.symbol, order.side, order.strategy, order.reason, order.source, order.type]
      .some((value) => value && String(value).toLowerCase().includes(text));
  }

  draw() {
    const all = [...this.orders.values()].sort((a, b) => (b.created_ns || 0) - (a.created_ns || 0));
    for (const order of all.slice(MAX_ORDERS)) this.orders.delete(order.client_order_id);
    const shown = all.slice(0, MAX_ORDERS).filter((order) => this.matches(order));
    const open = all.filter((order) => !TERMINAL.has(order.status)).length;
    $("orders-count").textContent = `${shown.length} shown, ${open} open`;
    const rows = shown.map((order) => {
      const cancel = TERMINAL.has(order.status) || order.status === "PENDING_CANCEL"
        ? null
        : actionButton(this.ctx, "Cancel", "cancel-order", () => this.cancel(order));
      const row = h("tr", { dataset: { order: order.client_order_id, status: order.status } },
        h("td", { class: "mono" }, clock(order.created_ns)),
        h("td", { class: "mono", title: order.client_order_id }, order.client_order_id.slice(0, 18)),
        h("td", {}, order.symbol),
        h("td", { class: order.side === "BUY" ? "ok" : "bad" }, order.side),
        h("td", {}, order.type),
        h("td", { class: "num" }, dec(order.quantity)),
        h("td", { class: "num" }, dec(order.filled_quantity)),
        h("td", { class: "num" }, dec(order.price ?? order.stop_price)),
        h("td", { class: "num" }, dec(order.average_price)),
        h("td", { class: `status ${tone(order.status)}` }, order.status),
        h("td", { class: "muted" }, order.strategy || order.source),
        h("td", { class: "muted", title: order.reason || "" }, (order.reason || "").slice(0, 60)),
        h("td", {}, cancel));
      if (this.fresh.has(order.client_order_id)) row.classList.add("flash");
      return row;
    });
    this.fresh.clear();
    fill($("orders"), rows, "no orders", 13);
  }

  async cancel(order) {
    const confirmed = await confirmAction({
      title: `Cancel order ${order.client_order_id}?`,
      text: `${order.side} ${order.quantity} ${order.symbol} ${order.type} (${order.status}). The venue decides; ` +
        "the order shows PENDING_CANCEL until it answers.",
      button: "Cancel order",
    });
    if (!confirmed) return;
    await act(this.ctx, "cancel", () => api(`/v1/orders/${encodeURIComponent(order.client_order_id)}`,
      { method: "DELETE", headers: { "Idempotency-Key": `dashboard-cancel-${crypto.randomUUID()}` } }),
    () => this.touched(order.client_order_id));
  }
}

// ------------------------------------------------------------------------------------ positions and PnL

export class Positions {
  constructor(ctx, books) {
    this.ctx = ctx;
    this.books = books;
    this.positions = new Map();
    this.reload = debounce(() => this.load().catch(() => this.draw()), 300);
    this.chart = new TimeSeries($("chart-pnl"), ["realized", "unrealized", "total"], { yLabel: "USDT", keep: 1800, windowS: 900 });
  }

  key(position) {
    return `${position.venue}/${position.symbol}`;
  }

  async load() {
    const body = await api("/v1/positions");
    for (const position of body.positions) this.positions.set(this.key(position), position);
    this.draw();
  }

  /** The realized PnL history from the audit log, so the chart does not start empty. */
  async seed() {
    const body = await api("/v1/events?type=PositionChanged&limit=500");
    const realized = new Map();
    for (const event of body.events.slice().reverse()) {
      realized.set(`${event.payload.venue}/${event.payload.symbol}`, Number(event.payload.realized_pnl));
      const total = [...realized.values()].reduce((sum, value) => sum + value, 0);
      this.chart.push(Number(event.ts_event_ns) / 1e9, [total, null, null]);
    }
  }

  /** The marks move with the market: read the positions again (with the API's marks) while any is open. */
  async refresh() {
    const open = [...this.positions.values()].some((position) => Number(position.quantity));
    if (open) await this.load().catch(() => this.draw());
    else this.draw();
  }

  changed(event) {
    // The event carries no mark: the page estimates until the API's answer (read at once) replaces it.
    this.positions.set(this.key(event), {
      venue: event.venue, symbol: event.symbol, quantity: event.quantity,
      average_entry_price: event.average_entry_price, realized_pnl: event.realized_pnl, updated_ns: event.ts_event_ns,
    });
    this.draw();
    this.reload();
  }

  /** The gateway's mark when it sends the field (null: nothing prices the symbol); else the book's mid. */
  mark(position) {
    if (position.mark_price !== undefined) return position.mark_price === null ? null : Number(position.mark_price);
    return this.books.mid(position.symbol);
  }

  /** The gateway's unrealized PnL when it sends the field; else (mid - entry) x quantity estimated here. */
  unrealized(position) {
    if (position.unrealized_pnl !== undefined) {
      return position.unrealized_pnl === null ? null : Number(position.unrealized_pnl);
    }
    const mid = this.books.mid(position.symbol);
    const quantity = Number(position.quantity);
    if (mid === null || !quantity) return quantity ? null : 0;
    return quantity * (mid - Number(position.average_entry_price));
  }

  draw() {
    let realized = 0;
    let unrealized = 0;
    const rows = [...this.positions.values()].sort((a, b) => this.key(a).localeCompare(this.key(b))).map((position) => {
      const open = this.unrealized(position);
      realized += Number(position.realized_pnl) || 0;
      unrealized += open || 0;
      const quantity = Number(position.quantity);
      const source = position.unrealized_pnl !== undefined ? "api" : "page";
      const markTitle = position.mark_source === "book_mid" ? "book mid (no venue mark)"
        : position.mark_source === "mark_price" ? "venue mark price" : source === "page" ? "book mid, estimated here" : "";
      return h("tr", { dataset: { position: this.key(position) } },
        h("td", {}, position.venue), h("td", {}, position.symbol),
        h("td", { class: `num ${quantity > 0 ? "ok" : quantity < 0 ? "bad" : "muted"}` }, dec(position.quantity)),
        h("td", { class: "num" }, dec(position.average_entry_price, 2)),
        h("td", { class: "num", dataset: { cell: "mark", source }, title: markTitle }, dec(this.mark(position), 2)),
        h("td", { class: `num ${tone(open === null ? null : open >= 0 ? "ok" : "x")}`, dataset: { cell: "unrealized", source } },
          signed(open)),
        h("td", { class: "num" }, signed(Number(position.realized_pnl))));
    });
    fill($("positions"), rows, "no positions", 7);
    this.chart.push(Date.now() / 1000, [realized, unrealized, realized + unrealized]);
  }
}

// ------------------------------------------------------------------------------------ books

export class Books {
  constructor(ctx) {
    this.ctx = ctx;
    this.cards = new Map();
  }

  mid(symbol) {
    const card = this.cards.get(symbol);
    return card && card.mid !== undefined ? card.mid : null;
  }

  card(symbol) {
    let card = this.cards.get(symbol);
    if (card) return card;
    const chart = h("div", { class: "depth" });
    const node = h("div", { class: "book", dataset: { symbol } },
      h("h4", {}, h("span", {}, symbol), h("span", { class: "mid" }, "-"), h("span", { class: "status" }, "-"),
        h("span", { class: "muted age" }, "")),
      chart);
    $("books").append(node);
    card = { node, chart: new DepthChart(chart), mid: null };
    this.cards.set(symbol, card);
    return card;
  }

  /** Books do not stream on evt.>: read each symbol's book from state-builder every poll. */
  async refresh(symbols) {
    await Promise.all(Object.entries(symbols).map(async ([symbol, info]) => {
      const card = this.card(symbol);
      const status = card.node.querySelector(".status");
      card.node.querySelector(".age").textContent = `age ${ago(info.age_ms)}`;
      try {
        const book = await api(`/v1/book/${encodeURIComponent(symbol)}?depth=25`);
        const bestBid = book.bids.length ? Number(book.bids[0][0]) : null;
        const bestAsk = book.asks.length ? Number(book.asks[0][0]) : null;
        card.mid = bestBid !== null && bestAsk !== null ? (bestBid + bestAsk) / 2 : null;
        card.node.querySelector(".mid").textContent = card.mid === null ? "-" : dec(card.mid, 2);
        card.node.querySelector(".mid").title = bestBid && bestAsk ? `spread ${dec(bestAsk - bestBid, 4)}` : "";
        status.textContent = book.status;
        status.className = `status ${tone(book.status)}`;
        card.chart.update(book.bids, book.asks);
      } catch (err) {
        status.textContent = info.hot_state || "NO BOOK";
        status.className = `status ${tone(info.hot_state)}`;
        status.title = explain(err);
      }
    }));
  }
}

// ------------------------------------------------------------------------------------ strategies

export class Strategies {
  constructor(ctx) {
    this.ctx = ctx;
    this.crashes = new Map();
    this.list = [];
    this.reload = debounce(() => this.load().catch(() => {}), 300);
  }

  async seed() {
    const body = await api("/v1/events?type=StrategyCrashed&limit=200");
    for (const event of body.events.slice().reverse()) this.crashed(event.payload, false);
  }

  /** Crashes in the window: the gateway's count (the strategy's own) when it sends one, else the page's. */
  crashCount(strategy) {
    if (typeof strategy.crashes_in_window === "number") return strategy.crashes_in_window;
    const seen = this.crashes.get(strategy.name);
    return seen ? seen.window : 0;
  }

  crashed(event, redraw = true) {
    const known = this.crashes.get(event.strategy) || { total: 0, window: 0, last: "" };
    this.crashes.set(event.strategy, {
      total: known.total + 1, window: event.crashes_in_window ?? known.window + 1,
      last: `${event.error_type}: ${event.error}`.slice(0, 200),
    });
    if (redraw) this.draw();
  }

  async load() {
    this.list = (await api("/v1/strategies")).strategies;
    this.draw();
  }

  draw() {
    const rows = this.list.map((strategy) => {
      const crashes = this.crashes.get(strategy.name);
      const count = this.crashCount(strategy);
      const restarts = typeof strategy.restarts === "number" && strategy.restarts > 0 ? `, ${strategy.restarts} restarts` : "";
      const stopped = ["DISABLED", "FAILED", "UNKNOWN"].includes(strategy.state);
      // paper or live, once the API tells (read defensively: the field may not exist yet)
      const mode = strategy.mode ?? (strategy.details && strategy.details.mode) ?? null;
      const button = stopped
        ? actionButton(this.ctx, "Enable", "enable-strategy", () => this.command(strategy.name, "enable"), "small primary")
        : actionButton(this.ctx, "Disable", "disable-strategy", () => this.command(strategy.name, "disable"));
      return h("tr", { dataset: { strategy: strategy.name } },
        h("td", {}, strategy.name, mode ? h("span", { class: "muted small" }, ` ${mode}`) : null),
        stateCell(strategy.state), stateCell(strategy.component_state),
        h("td", {
          class: count || restarts ? "warn num" : "num", title: crashes ? crashes.last : "",
          dataset: { cell: "crashes", source: typeof strategy.crashes_in_window === "number" ? "api" : "page" },
        }, `${count} in window${restarts}`),
        h("td", {}, button));
    });
    fill($("strategies"), rows, "no strategies configured", 5);
  }

  async command(name, action) {
    const confirmed = await confirmAction({
      title: `${action === "enable" ? "Enable" : "Disable"} strategy ${name}?`,
      text: action === "enable"
        ? "It starts scanning for entries again."
        : "It stops opening positions; positions it holds stay protected by the position service.",
      button: action === "enable" ? "Enable" : "Disable",
    });
    if (!confirmed) return;
    await act(this.ctx, `${action} ${name}`, () => api(`/v1/strategies/${encodeURIComponent(name)}/${action}`,
      { method: "POST" }), () => this.reload());
  }
}

// ------------------------------------------------------------------------------------ dead letters

export class DeadLetters {
  constructor(ctx) {
    this.ctx = ctx;
    this.reload = debounce(() => this.load().catch(() => {}), 500);
  }

  async load() {
    const [list, stats] = await Promise.all([api("/v1/dlq?limit=100"), api("/v1/dlq/stats")]);
    const consumers = Object.entries(stats.by_consumer || {}).map(([name, count]) => `${name} ${count}`).join(", ");
    $("dlq-stats").textContent = `${stats.pending} pending of ${stats.total}` +
      (stats.oldest_pending_created_ns ? `, oldest pending ${clock(stats.oldest_pending_created_ns)}` : "") +
      (consumers ? ` (${consumers})` : "");
    const rows = list.dead_letters.map((letter) => {
      const pending = letter.status === "PENDING";
      return h("tr", { dataset: { letter: letter.id } },
        h("td", { class: "mono" }, letter.id), h("td", {}, letter.consumer),
        h("td", { class: "mono" }, letter.subject), h("td", { title: letter.reason }, letter.reason.slice(0, 80)),
        h("td", { class: "num" }, letter.deliveries), stateCell(letter.status),
        h("td", {}, pending ? actionButton(this.ctx, "Retry", "retry-letter", () => this.retry(letter)) : null,
          " ", actionButton(this.ctx, "Remove", "remove-letter", () => this.remove(letter))));
    });
    fill($("dlq"), rows, "no dead letters", 7);
  }

  async retry(letter) {
    const confirmed = await confirmAction({
      title: `Retry dead letter ${letter.id}?`,
      text: `Re-publishes it once to ${letter.subject} (consumer ${letter.consumer}).`, button: "Retry",
    });
    if (confirmed) await act(this.ctx, `retry ${letter.id}`, () => api(`/v1/dlq/${letter.id}/retry`, { method: "POST" }),
      () => this.load());
  }

  async remove(letter) {
    const confirmed = await confirmAction({
      title: `Remove dead letter ${letter.id}?`,
      text: "It is deleted for good (the audit trail keeps what it held).", word: "REMOVE", button: "Remove",
    });
    if (confirmed) await act(this.ctx, `remove ${letter.id}`, () => api(`/v1/dlq/${letter.id}`, { method: "DELETE" }),
      () => this.load());
  }
}

// ------------------------------------------------------------------------------------ audit events

/** One line saying what an event is about, from the fields operators look for first. */
export function summary(type, payload) {
  const order = payload.order || {};
  const parts = [];
  const add = (label, value) => {
    if (value !== undefined && value !== null && value !== "" && !(Array.isArray(value) && !value.length)) {
      parts.push(label ? `${label} ${value}` : String(value));
    }
  };
  add("", payload.severity);
  add("", payload.title);
  add("", payload.client_order_id || order.client_order_id);
  add("", payload.symbol || order.symbol);
  add("", payload.side || order.side);
  add("", payload.quantity || order.quantity);
  add("@", payload.price || order.price);
  add("", payload.status);
  if (payload.previous !== undefined || payload.current !== undefined) add("", `${payload.previous ?? "-"} → ${payload.current}`);
  add("", payload.breaker || payload.strategy || payload.component || payload.link);
  add("by", payload.operator);
  add("", payload.action);
  add("—", payload.reason);
  add("", payload.error);
  return parts.join(" ").slice(0, 300) || type;
}

function eventTone(type) {
  if (type === "AlertResolved") return "ok";
  if (/Alert|Denied|Rejected|Crashed|DeadLettered|Unknown/.test(type)) return "warn";
  return "";
}

export class AuditEvents {
  constructor(ctx) {
    this.ctx = ctx;
    this.events = [];
    this.render = debounce(() => this.draw(), 200);
    for (const id of ["events-filter", "events-noise"]) $(id).addEventListener("input", () => this.draw());
  }

  async load() {
    const body = await api("/v1/events?limit=200");
    this.events = body.events.map((event) => ({
      ts: event.ts_event_ns, type: event.type, subject: event.subject, payload: event.payload,
    }));
    this.draw();
  }

  live(type, payload, subject) {
    // The gateway sends each event's subject; "(stream)" only from a gateway that does not.
    this.events.unshift({ ts: payload.ts_event_ns, type, subject: subject || "(stream)", payload, fresh: true, live: true });
    if (this.events.length > MAX_EVENTS) this.events.length = MAX_EVENTS;
    if (!$("events-pause").checked) this.render();
  }

  draw() {
    const text = $("events-filter").value.trim().toLowerCase();
    const noise = $("events-noise").checked;
    const shown = this.events.filter((event) => {
      if (!noise && NOISE.has(event.type)) return false;
      if (!text) return true;
      return event.type.toLowerCase().includes(text) || (event.subject || "").toLowerCase().includes(text) ||
        summary(event.type, event.payload).toLowerCase().includes(text);
    });
    $("events-count").textContent = `${shown.length} shown of the latest ${this.events.length}`;
    const rows = shown.slice(0, 200).map((event) => {
      const row = h("tr", { dataset: { type: event.type, origin: event.live ? "stream" : "log" } },
        h("td", { class: "mono" }, clock(event.ts)),
        h("td", { class: eventTone(event.type) }, event.type),
        h("td", { class: "mono muted" }, event.subject || ""),
        h("td", {}, summary(event.type, event.payload)));
      if (event.fresh) row.classList.add("flash");
      event.fresh = false;
      return row;
    });
    fill($("events"), rows, "no events", 4);
  }
}

// ------------------------------------------------------------------------------------ latency and rates

const RATE_KINDS = [
  ["orders", (type) => type.startsWith("Order") && type !== "OrderFilled"],
  ["fills", (type) => type === "OrderFilled"],
  ["positions", (type) => type === "PositionChanged"],
  ["market state", (type) => /HotState|Link|MarketData|Signal/.test(type)],
  ["alerts", (type) => type.startsWith("Alert")],
  ["other", () => true],
];

export class Flow {
  constructor() {
    this.approved = new Map();
    this.acked = new Set();
    this.filled = new Set();
    this.latency = new TimeSeries($("chart-latency"), ["to venue ack", "to first fill"],
      { points: true, yLabel: "ms", keep: 500, windowS: 900 });
    this.rates = new TimeSeries($("chart-rates"), RATE_KINDS.map(([name]) => name), { yLabel: "/s", keep: 300 });
    this.counts = RATE_KINDS.map(() => 0);
    setInterval(() => this.tick(), 1000);
  }

  /** Latency of one order from the events of its life (live or from the audit log). */
  observe(type, payload, tsNs) {
    const ts = Number(tsNs);
    if (type === "OrderApproved") {
      this.approved.set(payload.order.client_order_id, ts);
      if (this.approved.size > 2000) this.approved.delete(this.approved.keys().next().value);
      return;
    }
    const id = payload.client_order_id;
    const start = this.approved.get(id);
    if (start === undefined) return;
    if (this.acked.size > 5000) this.acked.clear(); // only recent orders matter to the chart
    if (this.filled.size > 5000) this.filled.clear();
    if (type === "OrderAccepted" && !this.acked.has(id)) {
      this.acked.add(id);
      this.latency.push(ts / 1e9, [(ts - start) / 1e6, null]);
    } else if (type === "OrderFilled" && !this.filled.has(id)) {
      this.filled.add(id);
      this.latency.push(ts / 1e9, [null, (ts - start) / 1e6]);
    }
  }

  async seed() {
    const body = await api("/v1/events?type=OrderApproved,OrderAccepted,OrderFilled&limit=500");
    for (const event of body.events.slice().reverse()) this.observe(event.type, event.payload, event.ts_event_ns);
  }

  count(type) {
    const index = RATE_KINDS.findIndex(([, test]) => test(type));
    this.counts[index] += 1;
  }

  tick() {
    this.rates.push(Math.floor(Date.now() / 1000), this.counts);
    this.counts = RATE_KINDS.map(() => 0);
  }

}

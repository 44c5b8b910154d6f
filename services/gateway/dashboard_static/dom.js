// DOM and formatting helpers. Every text from the API goes through textContent, never innerHTML,
// so a hostile reason string or symbol cannot inject markup into the operator's page.

export const $ = (id) => document.getElementById(id);

export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const OK = new Set(["GREEN", "READY", "VALID", "ACTIVE", "NORMAL", "CONNECTED", "CLOSED", "SCANNING", "FILLED",
  "up", "ok", "UP", "OK", "RUNNING", "ENABLED"]);
const WARN = new Set(["YELLOW", "DEGRADED", "STALE", "REDUCING", "REDUCED_FUNCTIONALITY", "STARTING", "SUSPECT",
  "RECONNECTING", "HALF_OPEN", "PENDING_SUBMISSION", "SUBMITTED", "NEW", "PARTIALLY_FILLED", "PENDING_CANCEL",
  "PENDING", "DISABLED", "IN_POSITION", "ENTERING", "EXITING", "RESYNCING", "UNKNOWN", "CANCELED", "EXPIRED",
  "RETRIED", "P2", "P3"]);

/** The colour class of a state value: ok, warn or bad (anything unknown is treated as bad: look at it). */
export function tone(value) {
  if (value === undefined || value === null) return "muted";
  const text = String(value);
  if (OK.has(text)) return "ok";
  if (WARN.has(text)) return "warn";
  return "bad";
}

export function stateCell(value) {
  return h("td", { class: tone(value) }, value ?? "-");
}

export function nsToDate(ns) {
  return ns ? new Date(Number(ns) / 1e6) : null;
}

export function clock(ns) {
  const date = nsToDate(ns);
  return date ? date.toLocaleTimeString([], { hour12: false }) : "-";
}

export function ago(ms) {
  if (ms === null || ms === undefined) return "-";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 120000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.round(ms / 60000)} min`;
}

/** A decimal string as the API sends it, shortened for reading (the API keeps the exact value). */
export function dec(value, digits = 6) {
  if (value === null || value === undefined || value === "") return "-";
  const number = Number(value);
  if (!Number.isFinite(number)) return String(value);
  return number.toLocaleString("en-US", { maximumFractionDigits: digits });
}

export function signed(number, digits = 2) {
  if (number === null || number === undefined || !Number.isFinite(number)) return "-";
  const text = number.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  return number > 0 ? `+${text}` : text;
}

export function fill(tbody, rows, emptyText, columns) {
  tbody.replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { class: "empty", colspan: columns }, emptyText))]));
}

export function toast(message, kind = "ok") {
  const node = h("div", { class: `toast ${kind}`, role: "status" }, message);
  $("toasts").append(node);
  setTimeout(() => node.remove(), kind === "bad" ? 9000 : 4000);
}

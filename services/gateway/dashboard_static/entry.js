// "Can a new entry be placed right now, and if not, why": read from /v1/status defensively.
// The field is young: it may be a map by symbol, by venue then symbol, a list, or a flag on each
// symbol. Every shape becomes rows {venue, symbol, allowed, reasons: [{what, detail, sinceNs}]};
// without the field at all the answer is null and the page says so instead of guessing.

const FLAG_KEYS = ["can_enter", "allowed", "entry_allowed", "ok"];
const REASON_KEYS = ["reasons", "blocked_by", "blockers", "why"];

function flagOf(value) {
  if (typeof value === "boolean") return value;
  if (value && typeof value === "object") {
    for (const key of FLAG_KEYS) if (typeof value[key] === "boolean") return value[key];
  }
  return null;
}

function reasonOf(item) {
  if (item === null || item === undefined) return null;
  if (typeof item !== "object") return { what: String(item), detail: "", sinceNs: null };
  // The gateway's own shape (`blocked_by` of /v1/status): {gate, reason, since_ns}.
  const gated = typeof item.gate === "string";
  const what = gated ? item.gate : item.reason ?? item.code ?? item.kind ?? item.check ?? item.name ?? item.source ?? "blocked";
  const detail = gated ? item.reason ?? "" : item.message ?? item.detail ?? item.details ?? item.text ?? item.state ?? "";
  const sinceNs = item.since_ns ?? item.since ?? item.ts_ns ?? null;
  return { what: String(what), detail: typeof detail === "string" ? detail : JSON.stringify(detail), sinceNs };
}

function reasonsOf(value) {
  if (!value || typeof value !== "object") return [];
  for (const key of REASON_KEYS) {
    const found = value[key];
    if (Array.isArray(found)) return found.map(reasonOf).filter(Boolean);
    if (found && typeof found === "object") {
      return Object.entries(found).map(([name, item]) =>
        reasonOf(typeof item === "object" ? { reason: name, ...item } : { reason: name, message: String(item) }));
    }
    if (typeof found === "string" && found) return [reasonOf(found)];
  }
  return [];
}

function row(venue, symbol, value) {
  const allowed = flagOf(value);
  const own = value && typeof value === "object" ? value : {};
  return {
    venue: own.venue ?? venue ?? "",
    symbol: own.symbol ?? symbol ?? "",
    allowed,
    reasons: reasonsOf(value),
    sinceNs: own.since_ns ?? null,
  };
}

function fromMap(map, venue) {
  const rows = [];
  for (const [key, value] of Object.entries(map)) {
    if (flagOf(value) !== null) {
      const [first, second] = key.includes(":") ? key.split(":") : key.includes("/") ? key.split("/") : [null, key];
      rows.push(row(second === undefined ? venue : (first ?? venue), second ?? key, value));
    } else if (value && typeof value === "object" && !venue) {
      rows.push(...fromMap(value, key)); // one level of venue -> symbol
    }
  }
  return rows;
}

/** Rows of entry permission from a /v1/status answer, or null when the status has no such field. */
export function entryRows(status) {
  if (!status || typeof status !== "object") return null;
  const field = status.can_enter ?? status.entry ?? status.entries;
  let rows = null;
  if (Array.isArray(field)) rows = field.map((value) => row(null, null, value));
  else if (field && typeof field === "object") rows = fromMap(field, null);
  if ((!rows || !rows.length) && status.symbols && typeof status.symbols === "object") {
    const flagged = Object.entries(status.symbols).filter(([, value]) => value && "can_enter" in value);
    if (flagged.length) rows = flagged.map(([symbol, value]) => row(value.entry_venue ?? null, symbol, value.can_enter === null ? value : {
      ...(typeof value.can_enter === "object" ? value.can_enter : { can_enter: value.can_enter }),
      reasons: value.can_enter?.reasons ?? value.reasons ?? value.blocked_by,
    }));
  }
  if (!rows) return null;
  return rows.sort((a, b) => `${a.venue}/${a.symbol}`.localeCompare(`${b.venue}/${b.symbol}`));
}

/** What blocks entries when the status has no `can_enter` yet: what the page can tell from the rest. */
export function inferredBlockers(status) {
  const blockers = [];
  if (!status) return blockers;
  if (status.trading_state && status.trading_state !== "ACTIVE") {
    blockers.push({ what: "trading state", detail: status.trading_state, sinceNs: null });
  }
  if (status.degradation_level && status.degradation_level !== "NORMAL") {
    blockers.push({ what: "degradation level", detail: status.degradation_level, sinceNs: null });
  }
  for (const [name, breaker] of Object.entries(status.breakers || {})) {
    const state = breaker && (breaker.state ?? breaker.status);
    if (state && state !== "CLOSED") blockers.push({ what: `breaker ${name}`, detail: String(state), sinceNs: null });
  }
  if (status.preflight && status.preflight.ok === false) {
    blockers.push({ what: "preflight", detail: "failed", sinceNs: null });
  }
  return blockers;
}

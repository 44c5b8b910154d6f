// Server-sent events over fetch: EventSource cannot send an Authorization header, so the stream is
// read and parsed here (the text/event-stream format: `event:`, `id:`, `data:` lines, a blank line
// ends an event, `:` lines are comments/keep-alives). The gateway adds a `subject:` line (the NATS
// subject of the event), which a standard parser ignores. Reconnects with a capped backoff.

/** Parse complete events out of `buffer`; returns [events, rest] where rest is the unfinished tail. */
export function parseEvents(buffer) {
  const events = [];
  // A trailing "\r" may be the first half of "\r\n": keep it for the next piece.
  const held = buffer.endsWith("\r") ? "\r" : "";
  const blocks = (held ? buffer.slice(0, -1) : buffer).replace(/\r\n?/g, "\n").split("\n\n");
  const rest = blocks.pop() + held;
  for (const block of blocks) {
    let type = "message";
    let id = "";
    let subject = "";
    const data = [];
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") type = value;
      else if (field === "id") id = value;
      else if (field === "subject") subject = value;
      else if (field === "data") data.push(value);
    }
    if (data.length) events.push({ type, id, subject, data: data.join("\n") });
  }
  return [events, rest];
}

/**
 * Follow `url` for as long as the page lives.
 *
 * @param {string} url the event stream
 * @param {() => string} bearer the current token
 * @param {(event: {type, id, subject, data}) => void} onEvent every event
 * @param {(state: "live"|"down", detail: string) => void} onState connection changes
 * @returns {() => void} stop following
 */
export function follow(url, bearer, onEvent, onState) {
  let stopped = false;
  let controller = null;
  let backoff = 500;

  async function once() {
    controller = new AbortController();
    const response = await fetch(url, {
      headers: { Authorization: `Bearer ${bearer()}`, Accept: "text/event-stream" },
      signal: controller.signal,
      cache: "no-store",
    });
    if (!response.ok || !response.body) throw new Error(`event stream answered ${response.status}`);
    onState("live", "");
    backoff = 500;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) throw new Error("event stream closed");
      buffer += value;
      const [events, rest] = parseEvents(buffer);
      buffer = rest;
      for (const event of events) onEvent(event);
    }
  }

  (async () => {
    while (!stopped) {
      try {
        await once();
      } catch (err) {
        if (stopped) return;
        onState("down", String(err && err.message ? err.message : err));
      }
      await new Promise((resolve) => setTimeout(resolve, backoff));
      backoff = Math.min(backoff * 2, 10000);
    }
  })();

  return () => {
    stopped = true;
    if (controller) controller.abort();
  };
}

// The gateway's REST API with the operator's bearer token (kept in this tab's sessionStorage only).

const TOKEN_KEY = "bulwark-token";

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY) || "",
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

/** Call the API; the JSON answer, or an ApiError carrying the gateway's error envelope. */
export async function api(path, { method = "GET", body, headers = {}, signal } = {}) {
  const init = { method, headers: { Authorization: `Bearer ${token.get()}`, ...headers }, signal };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "network", `gateway unreachable: ${err.message || err}`);
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new ApiError(response.status, error.code || `http_${response.status}`, error.message || response.statusText,
      error.details);
  }
  return data;
}

/** A short explanation of an API error for a toast or a banner. */
export function explain(err) {
  if (!(err instanceof ApiError)) return String(err && err.message ? err.message : err);
  const retry = err.status === 429 ? " (rate limited, retrying)" : "";
  return `${err.status || ""} ${err.code}: ${err.message}${retry}`.trim();
}

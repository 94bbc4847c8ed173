// Talking to the daemon: the admin API under the session cookie, with the CSRF
// token on every request. The cookie is HttpOnly, and not enough: browsers send
// it to every port of the host. The token comes only from the login's answer and
// is kept in sessionStorage (per origin and tab, so it survives a reload but not
// a new tab).

export const base = new URL(".", document.baseURI);
export const api = (path) => new URL(`../${path}`, base);
export const sessionUrl = new URL("session", base);

const CSRF_KEY = "apikeyd.csrf";
let csrf = sessionStorage.getItem(CSRF_KEY);

export function hasToken() {
  return Boolean(csrf);
}

export function keepToken(token) {
  csrf = token;
  sessionStorage.setItem(CSRF_KEY, token);
}

export function forgetToken() {
  csrf = null;
  sessionStorage.removeItem(CSRF_KEY);
}

// A refused request: the daemon's message, its code and the field at fault.
export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `the daemon answered ${status}`);
    this.status = status;
    this.code = e.code || "";
    this.field = e.field || "";
  }
}

export async function call(url, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (csrf) headers["X-CSRF-Token"] = csrf;
  const init = { method, headers, credentials: "same-origin", cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(url, init);
  } catch {
    throw new ApiError(0, { error: { message: "the daemon cannot be reached" } });
  }
  const answer = r.status === 204 ? null : await r.json().catch(() => null);
  if (!r.ok) throw new ApiError(r.status, answer);
  return answer;
}

// The path of a key's (or job's, or message's) API resource.
export const keyUrl = (id, action = "") =>
  api(`v1/admin/keys/${encodeURIComponent(id)}${action ? `/${action}` : ""}`);

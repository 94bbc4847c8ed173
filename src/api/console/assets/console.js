// The console's page: log in with the token in the address's fragment (which
// never reaches a server), then show the caller's keys through the admin API.
// The session cookie is HttpOnly, and not enough: browsers send it to every
// port of the host. Every request also sends the CSRF token that only the login
// answers, kept in sessionStorage (per origin and tab, so it survives a reload
// but not a new tab).

const base = new URL(".", document.baseURI);
const api = (path) => new URL(`../${path}`, base);
const PAGE = 50;

const CSRF_KEY = "apikeyd.csrf";
let csrf = sessionStorage.getItem(CSRF_KEY);
let admin = false;
let cursors = [];
// The filters of the shown list, as the list API takes them.
let filters = {};

const $ = (id) => document.getElementById(id);

function say(text, error = false) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", error);
  s.hidden = !text;
}

async function call(url, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  const method = options.method || "GET";
  if (csrf) headers["X-CSRF-Token"] = csrf;
  const r = await fetch(url, { ...options, method, headers, credentials: "same-origin" });
  const body = r.status === 204 ? null : await r.json().catch(() => null);
  if (!r.ok) {
    const message = body && body.error ? body.error.message : `${r.status} ${r.statusText}`;
    throw new Error(message);
  }
  return body;
}

async function startSession() {
  const hash = location.hash;
  if (hash.startsWith("#login=")) {
    const token = hash.slice("#login=".length);
    // Out of the address bar and history before anything else.
    history.replaceState(null, "", location.pathname + location.search);
    // Only on a click: a page opened by someone else's link (login CSRF) does
    // not log in by itself. The previous session's token goes along, so the
    // daemon ends that session.
    await clicked();
    const session = await call(new URL("session", base), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token }),
    });
    csrf = session.csrf_token;
    sessionStorage.setItem(CSRF_KEY, csrf);
    return session;
  }
  if (!csrf) {
    throw new Error("Not logged in in this tab: open a new console link (run apikeyctl console-link).");
  }
  try {
    return await call(new URL("session", base));
  } catch (e) {
    forget();
    throw e;
  }
}

function clicked() {
  say("");
  $("login").hidden = false;
  $("login-button").focus();
  return new Promise((resolve) => {
    $("login-button").addEventListener(
      "click",
      () => {
        $("login").hidden = true;
        say("Logging in…");
        resolve();
      },
      { once: true },
    );
  });
}

function forget() {
  csrf = null;
  sessionStorage.removeItem(CSRF_KEY);
}

function when(text) {
  if (!text) return "";
  const d = new Date(text);
  if (Number.isNaN(d.getTime())) return text;
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.append(td);
  return td;
}

function timeCell(row, text, none) {
  const td = document.createElement("td");
  if (text) {
    const t = document.createElement("time");
    t.dateTime = text;
    t.textContent = when(text);
    t.title = text;
    td.append(t);
  } else {
    td.textContent = none;
  }
  row.append(td);
}

function render(keys) {
  const rows = $("key-rows");
  rows.replaceChildren();
  if (keys.length === 0) {
    const tr = document.createElement("tr");
    const filtered = Object.values(filters).some((v) => v && v !== "name");
    const td = cell(tr, filtered ? "No key matches." : "No keys yet.", "empty");
    td.colSpan = 10;
    rows.append(tr);
    return;
  }
  for (const k of keys) {
    const tr = document.createElement("tr");
    tr.dataset.id = k.id;
    const name = document.createElement("th");
    name.scope = "row";
    name.textContent = k.name;
    tr.append(name);
    cell(tr, k.description);
    cell(tr, k.owner, "owner-col");
    cell(tr, k.status);
    timeCell(tr, k.created_at, "");
    timeCell(tr, k.updated_at, "");
    timeCell(tr, k.last_used_at, "never");
    timeCell(tr, k.effective_expires_at || k.expires_at, "never");
    cell(tr, k.details);
    cell(tr, k.notification);
    rows.append(tr);
  }
}

async function load() {
  const url = api("v1/admin/keys");
  url.searchParams.set("limit", String(PAGE));
  for (const [name, value] of Object.entries(filters)) {
    if (value) url.searchParams.set(name, value);
  }
  const cursor = cursors[cursors.length - 1];
  if (cursor) url.searchParams.set("cursor", cursor);
  say("Loading keys…");
  try {
    const page = await call(url);
    render(page.keys);
    $("next-page").disabled = !page.next_cursor;
    $("next-page").dataset.cursor = page.next_cursor || "";
    $("first-page").disabled = cursors.length === 0;
    $("previous-page").disabled = cursors.length === 0;
    say("");
  } catch (e) {
    say(`The keys could not be loaded: ${e.message}`, true);
  }
}

async function logout() {
  try {
    await call(new URL("session", base), { method: "DELETE" });
  } catch (e) {
    say(`Logging out failed: ${e.message}`, true);
    return;
  }
  forget();
  $("keys").hidden = true;
  $("logout").hidden = true;
  $("who").hidden = true;
  say("Logged out. Run apikeyctl console-link to log in again.");
}

async function main() {
  let session;
  try {
    session = await startSession();
  } catch (e) {
    say(e.message, true);
    return;
  }
  admin = session.admin;
  $("who").textContent = `${session.user}${admin ? " (admin: all keys)" : ""}`;
  $("who").hidden = false;
  $("logout").hidden = false;
  $("logout").addEventListener("click", logout);
  $("key-caption").textContent = admin ? "All keys" : "Your keys";
  $("key-table").classList.toggle("hide-owner", !admin);
  $("keys").hidden = false;
  $("search-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    filters = {
      search: $("search").value.trim(),
      status: $("status-filter").value,
      expiring_within: $("expiring-filter").value,
      sort: $("sort").value,
    };
    cursors = [];
    load();
  });
  $("next-page").addEventListener("click", () => {
    const next = $("next-page").dataset.cursor;
    if (next) {
      cursors.push(next);
      load();
    }
  });
  $("previous-page").addEventListener("click", () => {
    cursors.pop();
    load();
  });
  $("first-page").addEventListener("click", () => {
    cursors = [];
    load();
  });
  await load();
}

main();

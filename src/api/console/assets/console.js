// The console's page: log in (with the token in the address's fragment, which
// never reaches a server, or through the authenticating proxy in front), then
// show the caller's keys, and to admins the jobs, messages and audit trail.

import { api, call, sessionUrl, hasToken, keepToken, forgetToken } from "./api.js";
import { $, say } from "./dom.js";
import { initKeys, loadKeys, openKey } from "./keys.js";
import { initAdmin, openers } from "./admin.js";

// A key to show once logged in (an expiry email's link, `#key=ID`): kept across
// the login, which may happen in another tab. An id is not a secret.
const OPEN_KEY = "apikeyd.open-key";

// How this tab logged in ("proxy" or "link"), for what logging out means.
const VIA = "apikeyd.via";
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

async function login(body) {
  const session = await call(sessionUrl, { method: "POST", body });
  keepToken(session.csrf_token);
  sessionStorage.setItem(VIA, body.proxy ? "proxy" : "link");
  return session;
}

async function startSession() {
  const hash = location.hash;
  // A key id only (an email's link): anything else is ignored.
  const wanted = hash.startsWith("#key=") ? hash.slice("#key=".length) : "";
  if (UUID.test(wanted)) localStorage.setItem(OPEN_KEY, wanted.toLowerCase());
  if (hash.startsWith("#login=")) {
    const token = hash.slice("#login=".length);
    // Out of the address bar and history before anything else.
    history.replaceState(null, "", location.pathname + location.search);
    // Only on a click: a page opened by someone else's link (login CSRF) does
    // not log in by itself. The previous session's token goes along, so the
    // daemon ends that session.
    await clicked();
    return login({ token });
  }
  if (hash) history.replaceState(null, "", location.pathname + location.search);
  // Why this tab has no session: the daemon's word for an ended one.
  let ended = null;
  if (hasToken()) {
    try {
      return await call(sessionUrl);
    } catch (e) {
      forgetToken();
      if (e.code !== "console_session") throw e;
      ended = e;
    }
  }
  // No session in this tab: the proxy in front may say who this is.
  try {
    return await login({ proxy: true });
  } catch (e) {
    if (e.code === "console_link" || e.status === 400) {
      throw ended || new Error("Not logged in in this tab: open a new console link (run apikeyctl console-link).");
    }
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

function showSection(name) {
  for (const tab of $("tabs").querySelectorAll("button")) {
    const on = tab.dataset.section === name;
    if (on) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
    $(tab.dataset.section).hidden = !on;
  }
  say("");
  if (openers[name]) openers[name]();
}

async function logout() {
  try {
    await call(sessionUrl, { method: "DELETE" });
  } catch (e) {
    say(`Logging out failed: ${e.message}`, true);
    return;
  }
  forgetToken();
  localStorage.removeItem(OPEN_KEY);
  for (const id of ["keys", "jobs", "messages", "audit", "tabs", "logout", "who"]) $(id).hidden = true;
  for (const d of document.querySelectorAll("dialog[open]")) d.close();
  if (sessionStorage.getItem(VIA) === "proxy") {
    say("Logged out of the console. Your sign-in at the proxy in front still holds: reload the page to log in again, or sign out there.");
  } else {
    say("Logged out. Run apikeyctl console-link to log in again.");
  }
  sessionStorage.removeItem(VIA);
}

async function main() {
  let session;
  let me;
  try {
    session = await startSession();
    me = await call(api("v1/admin/whoami"));
  } catch (e) {
    say(e.message, true);
    return;
  }
  $("who").textContent = `${session.user}${me.admin ? " (admin: all keys)" : ""}`;
  $("who").hidden = false;
  $("logout").hidden = false;
  $("logout").addEventListener("click", logout);
  initKeys(me);
  if (me.admin) {
    initAdmin();
    $("tabs").hidden = false;
    for (const tab of $("tabs").querySelectorAll("button")) {
      tab.addEventListener("click", () => showSection(tab.dataset.section));
    }
  }
  $("keys").hidden = false;
  // The Log in button just went away: the focus goes to what replaced it.
  $("keys-title").focus();
  await loadKeys();
  const wanted = localStorage.getItem(OPEN_KEY);
  if (wanted && UUID.test(wanted)) {
    localStorage.removeItem(OPEN_KEY);
    await openKey(wanted);
  }
}

main();

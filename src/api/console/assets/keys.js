// The key list, and what is done to a key: create (its secret shown once), the
// key's panel (facts, usage), edit, enable, disable, regenerate and remove. All
// through the admin API, which applies the same rules as for the CLI.

import { api, call, keyUrl } from "./api.js";
import {
  $, el, say, when, timeEl, cell, fillRows, toLocalInput, fromLocalInput, lines,
  clearErrors, showError, checkboxes, ticked,
} from "./dom.js";

const PAGE = 50;
let me = null; // whoami
let cursors = [];
// The filters of the shown list, as the list API takes them; the first load
// sorts as the form's "Sort by" says.
let filters = {};
let shown = null; // the key in the key dialog

// ---------------------------------------------------------------- the list

function render(keys) {
  const filtered = Object.entries(filters).some(([k, v]) => v && k !== "sort");
  fillRows($("key-rows"), keys, filtered ? "No key matches." : "No keys yet.", (k) => {
    const tr = el("tr");
    tr.dataset.id = k.id;
    const name = el("th");
    name.scope = "row";
    const open = el("button", k.name, "link");
    open.type = "button";
    open.title = "Show this key";
    open.addEventListener("click", () => openKey(k.id));
    name.append(open);
    tr.append(name);
    cell(tr, k.description);
    cell(tr, k.owner, "owner-col");
    cell(tr, k.status, `status status-${k.status}`);
    cell(tr, timeEl(k.created_at));
    cell(tr, timeEl(k.updated_at));
    cell(tr, timeEl(k.last_used_at, "never"));
    cell(tr, timeEl(k.effective_expires_at || k.expires_at, "never"));
    cell(tr, details(k));
    cell(tr, notification(k));
    return tr;
  });
}

// The daemon's Details and notification lines, with their times in the
// browser's zone (the daemon writes them in UTC).
function details(k) {
  if (!["active", "disabled"].includes(k.status) || !k.effective_expires_at) return k.details;
  const prefix = k.status === "disabled" ? "disabled; " : "";
  if (k.effective_limit === "inactivity") {
    return `${prefix}expires ${when(k.effective_expires_at)} if not used again (inactivity)`;
  }
  return `${prefix}expires ${when(k.effective_expires_at)}`;
}

function notification(k) {
  if (!k.notify_at) return k.notification;
  return `${when(k.notify_at)} via ${k.alert_source}`;
}

export async function loadKeys() {
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

// ---------------------------------------------------------------- create

function openCreate() {
  const form = $("create-form");
  form.reset();
  clearErrors(form);
  $("create-user-field").hidden = !me.admin;
  checkboxes($("create-scope-list"), "scope", me.scopes, () => false);
  // The policy, as the admin set it: the picker cannot go past it.
  const [lifespan, inactivity] = me.policy;
  $("create-policy").textContent = [lifespan, inactivity].filter(Boolean).join(" · ");
  const expires = $("create-expires_at");
  expires.min = toLocalInput(new Date(Date.now() + 60_000).toISOString());
  expires.max = toLocalInput(me.max_expires_at);
  expires.value = toLocalInput(me.default_expires_at);
  $("create-expires_at-hint").textContent = me.max_expires_at
    ? `Between now and ${toLocalInput(me.max_expires_at).replace("T", " ")} (the max key lifespan).`
    : "Empty: the key never expires.";
  $("create-never-label").hidden = Boolean(me.max_expiration);
  const source = $("create-alert_source");
  source.replaceChildren();
  const def = el("option", me.default_alert_source ? `Default (${me.default_alert_source})` : "Default");
  def.value = "";
  source.append(def);
  for (const s of me.alert_sources) {
    const o = el("option", s);
    o.value = s;
    source.append(o);
  }
  $("create-notify-default-label").textContent = me.default_notification_lead_time
    ? `The default (${me.default_notification_lead_time} before the expiry)`
    : "The default (none)";
  notifyChoice();
  $("create-dialog").showModal();
  $("create-name").focus();
}

function notifyChoice() {
  const choice = $("create-form").elements.notify.value;
  $("create-notify_before-field").hidden = choice !== "before";
  $("create-notify_at-field").hidden = choice !== "at";
  $("create-alert_source-field").hidden = choice === "none";
}

function createRequest() {
  const req = { name: $("create-name").value.trim() };
  const description = $("create-description").value.trim();
  if (description) req.description = description;
  const user = $("create-user").value.trim();
  if (me.admin && user) req.user = user;
  const scopes = ticked($("create-scope-list"));
  if (scopes.length) req.scopes = scopes;
  if ($("create-never").checked) req.never_expires = true;
  else if ($("create-expires_at").value) req.expires_at = fromLocalInput($("create-expires_at").value);
  const ip = lines($("create-ip").value);
  if (ip.length) req.ip = ip;
  const headers = lines($("create-headers").value);
  if (headers.length) req.headers = headers;
  const choice = $("create-form").elements.notify.value;
  if (choice === "none") req.no_notification = true;
  if (choice === "before") req.notify_before = $("create-notify_before").value;
  if (choice === "at") req.notify_at = fromLocalInput($("create-notify_at").value) || "";
  if (choice !== "none" && $("create-alert_source").value) req.alert_source = $("create-alert_source").value;
  return req;
}

// The API's field names that have no input of their own.
const CREATE_ALIASES = { expires_in: "expires_at", never_expires: "expires_at", owner: "user" };

async function submitCreate(ev) {
  ev.preventDefault();
  const form = $("create-form");
  clearErrors(form);
  const req = createRequest();
  if (!req.name) {
    showError("create", { field: "name", message: "give the key a name" });
    return;
  }
  $("create-submit").disabled = true;
  try {
    const issued = await call(api("v1/admin/keys"), { method: "POST", body: req });
    $("create-dialog").close();
    showSecret(issued, issued.notice);
    loadKeys();
  } catch (e) {
    showError("create", e, CREATE_ALIASES);
  } finally {
    $("create-submit").disabled = false;
  }
}

// ---------------------------------------------------------------- the secret, once

let download = null;

function showSecret(issued, note) {
  $("secret-name").textContent = issued.name;
  $("secret-value").value = issued.key;
  $("secret-note").textContent = note || "";
  $("secret-note").hidden = !note;
  $("secret-status").textContent = "";
  const blob = new Blob([`${issued.key}\n`], { type: "application/octet-stream" });
  download = URL.createObjectURL(blob);
  const a = $("secret-download");
  a.href = download;
  a.download = `${issued.name}.APIKEY`;
  a.textContent = `Download ${issued.name}.APIKEY`;
  $("secret-dialog").showModal();
  $("secret-value").select();
}

// Closing the dialog drops every copy the page holds.
function forgetSecret() {
  $("secret-value").value = "";
  $("secret-download").href = "#";
  if (download) URL.revokeObjectURL(download);
  download = null;
}

async function copySecret() {
  const input = $("secret-value");
  try {
    await navigator.clipboard.writeText(input.value);
  } catch {
    // No clipboard API (a page not served over TLS off loopback): the selection.
    input.select();
    if (!document.execCommand("copy")) {
      $("secret-status").textContent = "Copying failed: select the secret and copy it by hand.";
      return;
    }
  }
  $("secret-status").textContent = "Copied to the clipboard.";
}

// ---------------------------------------------------------------- one key

function fact(dl, term, value) {
  if (value === undefined || value === null || value === "" || (Array.isArray(value) && !value.length)) return;
  dl.append(el("dt", term));
  const dd = el("dd");
  if (value instanceof Node) dd.append(value);
  else dd.textContent = Array.isArray(value) ? value.join(", ") : String(value);
  dl.append(dd);
}

function keyStatus(text, error = false) {
  const s = $("key-status");
  s.textContent = text;
  s.classList.toggle("error", error);
  s.hidden = !text;
}

function showKey(k) {
  shown = k;
  $("key-title").textContent = `${k.name} (${k.status})`;
  const dl = $("key-facts");
  dl.replaceChildren();
  fact(dl, "Description", k.description);
  if (me.admin) fact(dl, "Owner", k.owner);
  fact(dl, "Status", k.status);
  fact(dl, "Details", details(k));
  fact(dl, "Scopes", k.scopes);
  if (k.effective_scopes.join() !== k.scopes.join()) fact(dl, "Scopes in force", k.effective_scopes.length ? k.effective_scopes : "none");
  fact(dl, "Created", timeEl(k.created_at));
  fact(dl, "Last changed", timeEl(k.updated_at));
  fact(dl, "Last used", timeEl(k.last_used_at, "never"));
  fact(dl, "Expires", timeEl(k.expires_at, "never"));
  fact(dl, "IP filters", k.ip_filters);
  fact(dl, "Response headers", k.headers.map((h) => `${h.name}=${h.template}`));
  fact(dl, "Notification", notification(k));
  fact(dl, "Old secret valid until", k.rotation_grace_until ? timeEl(k.rotation_grace_until) : "");
  fact(dl, "Regeneration", k.rotation && k.rotation.summary);
  fact(dl, "Id", k.id);
  const u = k.usage || { verifications: 0, denied: 0, routes: {} };
  $("usage-summary").textContent = `${u.verifications} verifications, ${u.denied} refused.`;
  const routes = Object.entries(u.routes || {});
  $("usage-routes").hidden = routes.length === 0;
  const rows = $("usage-rows");
  rows.replaceChildren();
  for (const [route, n] of routes) {
    const tr = el("tr");
    cell(tr, route);
    cell(tr, String(n));
    rows.append(tr);
  }
  const gone = k.status === "removed";
  const ended = gone || k.status === "expired" || k.status === "inactive";
  $("key-actions").hidden = gone;
  $("key-disable").hidden = ended || k.status === "disabled";
  $("key-enable").hidden = ended || k.status !== "disabled";
  $("key-rotate").hidden = ended;
  $("key-edit").hidden = ended;
  $("rotate-form").hidden = true;
  $("edit-form").hidden = true;
}

export async function openKey(id) {
  keyStatus("");
  try {
    showKey(await call(keyUrl(id)));
  } catch (e) {
    say(`The key could not be shown: ${e.message}`, true);
    return;
  }
  if (!$("key-dialog").open) $("key-dialog").showModal();
}

// A change to the shown key: its answer is the key as it is now.
async function change(action, body, done) {
  keyStatus("Working…");
  try {
    const k = await call(keyUrl(shown.id, action), { method: "POST", body });
    showKey(k);
    keyStatus(done);
    loadKeys();
    return k;
  } catch (e) {
    keyStatus(e.message, true);
    return null;
  }
}

async function rotate(ev) {
  ev.preventDefault();
  const grace = $("rotate-grace").value;
  const body = grace === "until-used" ? { until_used: true } : grace ? { grace } : {};
  $("rotate-error").hidden = true;
  try {
    const issued = await call(keyUrl(shown.id, "rotate"), { method: "POST", body });
    // The panel keeps the key, not its secret: only the secret dialog holds that.
    const { key: _secret, ...rotated } = issued;
    showKey(rotated);
    keyStatus("A new secret was issued.");
    loadKeys();
    showSecret(issued, issued.rotation_grace_until ? `The old secret keeps working until ${new Date(issued.rotation_grace_until).toLocaleString()}.` : "The old secret no longer works.");
  } catch (e) {
    $("rotate-error").textContent = e.message;
    $("rotate-error").hidden = false;
  }
}

function confirm(text, yes) {
  const d = $("confirm-dialog");
  $("confirm-text").textContent = text;
  $("confirm-yes").textContent = yes;
  d.returnValue = "";
  d.showModal();
  return new Promise((resolve) => {
    d.addEventListener("close", () => resolve(d.returnValue === "yes"), { once: true });
  });
}

async function remove() {
  const ok = await confirm(
    `Remove the key ${shown.name}? It stops working at once, and this cannot be undone.`,
    "Remove",
  );
  if (!ok) return;
  keyStatus("Removing…");
  try {
    const k = await call(keyUrl(shown.id), { method: "DELETE" });
    showKey(k);
    keyStatus("The key was removed.");
    loadKeys();
  } catch (e) {
    keyStatus(e.message, true);
  }
}

function openEdit() {
  const k = shown;
  const form = $("edit-form");
  clearErrors(form);
  $("edit-name").value = k.name;
  $("edit-description").value = k.description;
  checkboxes($("edit-scope-list"), "scope", k.scopes, () => true);
  const expires = $("edit-expires_at");
  expires.value = toLocalInput(k.expires_at);
  expires.max = toLocalInput(k.expires_at);
  expires.min = toLocalInput(new Date(Date.now() + 60_000).toISOString());
  $("edit-ip").value = k.ip_filters.join("\n");
  $("edit-headers").value = k.headers.map((h) => `${h.name}=${h.template}`).join("\n");
  $("rotate-form").hidden = true;
  form.hidden = false;
  $("edit-name").focus();
}

// Only what changed is sent: an edit may only narrow.
function editRequest() {
  const k = shown;
  const req = {};
  const name = $("edit-name").value.trim();
  if (name !== k.name) req.name = name;
  const description = $("edit-description").value.trim();
  if (description !== k.description) req.description = description;
  const scopes = ticked($("edit-scope-list"));
  if (scopes.join() !== k.scopes.join()) req.scopes = scopes;
  const expires = $("edit-expires_at").value;
  if (expires && expires !== toLocalInput(k.expires_at)) req.expires_at = fromLocalInput(expires);
  const ip = lines($("edit-ip").value);
  if (ip.join() !== k.ip_filters.join()) req.ip = ip;
  const headers = lines($("edit-headers").value);
  if (headers.join() !== k.headers.map((h) => `${h.name}=${h.template}`).join()) req.headers = headers;
  return req;
}

async function submitEdit(ev) {
  ev.preventDefault();
  const form = $("edit-form");
  clearErrors(form);
  const req = editRequest();
  if (Object.keys(req).length === 0) {
    form.hidden = true;
    keyStatus("Nothing was changed.");
    return;
  }
  try {
    const k = await call(keyUrl(shown.id), { method: "PATCH", body: req });
    showKey(k);
    keyStatus("Saved.");
    loadKeys();
  } catch (e) {
    showError("edit", e, { expires_in: "expires_at" });
  }
}

// ---------------------------------------------------------------- wiring

export function initKeys(whoami) {
  me = whoami;
  filters = { sort: $("sort").value };
  $("key-caption").textContent = me.admin ? "All keys" : "Your keys";
  $("key-table").classList.toggle("hide-owner", !me.admin);
  $("create-button").hidden = !(me.admin || me.create_keys);
  $("create-button").addEventListener("click", openCreate);
  $("create-form").addEventListener("submit", submitCreate);
  $("create-form").addEventListener("change", (ev) => {
    if (ev.target.name === "notify") notifyChoice();
  });
  $("create-never").addEventListener("change", () => {
    $("create-expires_at").disabled = $("create-never").checked;
  });
  $("create-cancel").addEventListener("click", () => $("create-dialog").close());
  $("secret-copy").addEventListener("click", copySecret);
  $("secret-close").addEventListener("click", () => $("secret-dialog").close());
  $("secret-dialog").addEventListener("close", forgetSecret);
  $("key-close").addEventListener("click", () => $("key-dialog").close());
  $("key-dialog").addEventListener("close", () => {
    shown = null;
  });
  $("key-disable").addEventListener("click", () => change("disable", undefined, "The key is disabled: it no longer verifies."));
  $("key-enable").addEventListener("click", () => change("enable", undefined, "The key is enabled."));
  $("key-rotate").addEventListener("click", () => {
    $("edit-form").hidden = true;
    $("rotate-form").hidden = false;
    $("rotate-grace").focus();
  });
  $("rotate-cancel").addEventListener("click", () => {
    $("rotate-form").hidden = true;
  });
  $("rotate-form").addEventListener("submit", rotate);
  $("key-remove").addEventListener("click", remove);
  $("confirm-yes").addEventListener("click", () => $("confirm-dialog").close("yes"));
  $("confirm-no").addEventListener("click", () => $("confirm-dialog").close("no"));
  $("key-edit").addEventListener("click", openEdit);
  $("edit-cancel").addEventListener("click", () => {
    $("edit-form").hidden = true;
  });
  $("edit-form").addEventListener("submit", submitEdit);
  $("search-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    filters = {
      search: $("search").value.trim(),
      status: $("status-filter").value,
      expiring_within: $("expiring-filter").value,
      sort: $("sort").value,
    };
    cursors = [];
    loadKeys();
  });
  $("next-page").addEventListener("click", () => {
    const next = $("next-page").dataset.cursor;
    if (next) {
      cursors.push(next);
      loadKeys();
    }
  });
  $("previous-page").addEventListener("click", () => {
    cursors.pop();
    loadKeys();
  });
  $("first-page").addEventListener("click", () => {
    cursors = [];
    loadKeys();
  });
}

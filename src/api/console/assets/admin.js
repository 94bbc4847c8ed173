// The admins' views: alert jobs (cancel, delete), operator messages
// (acknowledge) and the audit trail. The daemon refuses these to anyone else.

import { api, call } from "./api.js";
import { $, el, say, timeEl, cell, button, fillRows } from "./dom.js";
import { openKey } from "./keys.js";

const PAGE = 50;

function keyLink(id) {
  if (!id) return "";
  const b = el("button", id.slice(0, 8), "link mono");
  b.type = "button";
  b.title = `Show key ${id}`;
  b.addEventListener("click", () => openKey(id));
  return b;
}

// A paged table: `fetchPage(cursor)` answers `{items, next}`.
function pager(prefix, fetchPage, render) {
  let cursor = "";
  async function load(from = "") {
    cursor = from;
    say("Loading…");
    try {
      const { items, next } = await fetchPage(cursor);
      render(items);
      $(`${prefix}-next`).disabled = !next;
      $(`${prefix}-next`).dataset.cursor = next || "";
      $(`${prefix}-first`).disabled = !cursor;
      say("");
    } catch (e) {
      say(e.message, true);
    }
  }
  $(`${prefix}-next`).addEventListener("click", () => load($(`${prefix}-next`).dataset.cursor));
  $(`${prefix}-first`).addEventListener("click", () => load(""));
  return { load, reload: () => load(cursor) };
}

// ---------------------------------------------------------------- jobs

let jobs;

async function jobAction(job, action, done) {
  try {
    if (action === "delete") await call(api(`v1/admin/jobs/${encodeURIComponent(job.id)}`), { method: "DELETE" });
    else await call(api(`v1/admin/jobs/${encodeURIComponent(job.id)}/cancel`), { method: "POST" });
    await jobs.reload();
    say(done);
  } catch (e) {
    say(e.message, true);
  }
}

function renderJobs(items) {
  fillRows($("job-rows"), items, "No job matches.", (j) => {
    const tr = el("tr");
    tr.dataset.id = j.id;
    cell(tr, j.kind);
    cell(tr, keyLink(j.key_id));
    cell(tr, j.source);
    cell(tr, timeEl(j.due_at));
    cell(tr, j.state, `state state-${j.state}`);
    cell(tr, String(j.attempts));
    cell(tr, j.last_error || "");
    const actions = cell(tr, "");
    if (j.state === "Scheduled") actions.append(button("Cancel", () => jobAction(j, "cancel", "The job was cancelled."), "cancel"));
    if (j.state !== "Running") actions.append(button("Delete", () => jobAction(j, "delete", "The job was deleted."), "delete"));
    return tr;
  });
}

// ---------------------------------------------------------------- messages

async function loadMessages() {
  const url = api("v1/admin/messages");
  url.searchParams.set("limit", "200");
  if ($("messages-unacked").checked) url.searchParams.set("unacknowledged", "true");
  say("Loading messages…");
  try {
    renderMessages((await call(url)).messages);
    say("");
  } catch (e) {
    say(e.message, true);
  }
}

async function ack(m) {
  try {
    await call(api(`v1/admin/messages/${encodeURIComponent(m.id)}/ack`), { method: "POST" });
    await loadMessages();
    say(`Acknowledged: ${m.title}`);
  } catch (e) {
    say(e.message, true);
  }
}

function renderMessages(items) {
  fillRows($("message-rows"), items, "No messages.", (m) => {
    const tr = el("tr");
    tr.dataset.id = m.id;
    cell(tr, timeEl(m.at));
    cell(tr, m.severity, `severity severity-${m.severity}`);
    cell(tr, m.title);
    const text = cell(tr, m.text);
    if (m.key_id) text.append(" ", keyLink(m.key_id));
    if (m.acknowledged_at) {
      const by = el("span", `by ${m.acknowledged_by || "?"}, `);
      const td = cell(tr, by);
      td.append(timeEl(m.acknowledged_at));
    } else {
      const td = cell(tr, "");
      const b = button("Acknowledge", () => ack(m), "ack");
      b.setAttribute("aria-label", `Acknowledge: ${m.title}`);
      td.append(b);
    }
    return tr;
  });
}

// ---------------------------------------------------------------- audit

let audit;

function renderAudit(items) {
  fillRows($("audit-rows"), items, "No entries.", (a) => {
    const tr = el("tr");
    cell(tr, timeEl(a.at));
    cell(tr, a.actor);
    cell(tr, a.action);
    cell(tr, keyLink(a.key_id));
    cell(tr, a.detail);
    return tr;
  });
}

// ---------------------------------------------------------------- wiring

export function initAdmin() {
  jobs = pager(
    "jobs",
    async (cursor) => {
      const url = api("v1/admin/jobs");
      url.searchParams.set("limit", String(PAGE));
      if ($("jobs-state").value) url.searchParams.set("state", $("jobs-state").value);
      if ($("jobs-key").value.trim()) url.searchParams.set("key", $("jobs-key").value.trim());
      if (cursor) url.searchParams.set("cursor", cursor);
      const page = await call(url);
      return { items: page.jobs, next: page.next_cursor };
    },
    renderJobs,
  );
  audit = pager(
    "audit",
    async (cursor) => {
      const url = api("v1/admin/audit");
      url.searchParams.set("limit", String(PAGE));
      if ($("audit-key").value.trim()) url.searchParams.set("key", $("audit-key").value.trim());
      if (cursor) url.searchParams.set("cursor", cursor);
      const page = await call(url);
      return { items: page.entries, next: page.next_cursor };
    },
    renderAudit,
  );
  $("jobs-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    jobs.load();
  });
  $("messages-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    loadMessages();
  });
  $("audit-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    audit.load();
  });
}

// What a tab shows when it is opened.
export const openers = {
  jobs: () => jobs.load(),
  messages: loadMessages,
  audit: () => audit.load(),
};

// Small DOM helpers shared by the console's views. Text always goes in as
// textContent: nothing the daemon answers is ever parsed as HTML.

export const $ = (id) => document.getElementById(id);

export function el(tag, text, className) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  if (className) e.className = className;
  return e;
}

export function say(text, error = false) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", error);
  s.hidden = !text;
}

// A time in the browser's zone, the exact instant in the tooltip.
export function when(text) {
  if (!text) return "";
  const d = new Date(text);
  if (Number.isNaN(d.getTime())) return text;
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function timeEl(text, none = "") {
  if (!text) return document.createTextNode(none);
  const t = el("time", when(text));
  t.dateTime = text;
  t.title = text;
  return t;
}

export function cell(row, content, className) {
  const td = el("td", undefined, className);
  if (content instanceof Node) td.append(content);
  else td.textContent = content ?? "";
  row.append(td);
  return td;
}

// Fill a table body with one row per item (`row(item)` makes it), each cell
// naming its column (data-label) for the narrow layout that shows a row as a
// card; `empty` across the whole width when there are none.
export function fillRows(tbody, items, empty, row) {
  const heads = [...tbody.closest("table").tHead.rows[0].cells].map((c) => c.textContent);
  if (!items.length) {
    const tr = el("tr");
    cell(tr, empty, "empty").colSpan = heads.length;
    tbody.replaceChildren(tr);
    return;
  }
  tbody.replaceChildren(...items.map(row));
  for (const r of tbody.rows) {
    [...r.cells].forEach((c, i) => {
      c.dataset.label = heads[i];
    });
  }
}

export function button(text, onClick, className) {
  const b = el("button", text, className);
  b.type = "button";
  b.addEventListener("click", onClick);
  return b;
}

// An RFC 3339 instant as a datetime-local value in the browser's zone.
export function toLocalInput(text) {
  if (!text) return "";
  const d = new Date(text);
  if (Number.isNaN(d.getTime())) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

// A datetime-local value (the browser's zone) as an RFC 3339 instant.
export function fromLocalInput(value) {
  if (!value) return undefined;
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? value : d.toISOString().replace(/\.\d{3}Z$/, "Z");
}

export const lines = (text) =>
  text
    .split("\n")
    .map((l) => l.trim())
    .filter(Boolean);

// Field errors: the message next to the field the daemon named, else at the
// top of the form. `prefix` is the form's id prefix ("create", "edit").
export function clearErrors(form) {
  for (const p of form.querySelectorAll(".field-error, [role=alert]")) {
    p.textContent = "";
    p.hidden = true;
  }
  for (const i of form.querySelectorAll("[aria-invalid]")) i.removeAttribute("aria-invalid");
}

export function showError(prefix, error, aliases = {}) {
  const field = aliases[error.field] || error.field;
  const where = field && $(`${prefix}-${field}-error`);
  const target = where || $(`${prefix}-form-error`);
  // Next to its field, the message need not name the field again.
  const named = `${error.field}: `;
  target.textContent =
    where && error.message.startsWith(named) ? error.message.slice(named.length) : error.message;
  target.hidden = false;
  const input = field && ($(`${prefix}-${field}`) || $(`${prefix}-${field}-list`));
  if (where && input) {
    input.setAttribute("aria-invalid", "true");
    if (typeof input.focus === "function") input.focus();
  } else {
    target.focus?.();
  }
}

export function checkboxes(container, name, values, checked) {
  container.replaceChildren();
  for (const v of values) {
    const label = el("label", undefined, "check");
    const box = el("input");
    box.type = "checkbox";
    box.name = name;
    box.value = v;
    box.checked = checked(v);
    label.append(box, ` ${v}`);
    container.append(label);
  }
}

export const ticked = (container) =>
  [...container.querySelectorAll("input[type=checkbox]:checked")].map((b) => b.value);

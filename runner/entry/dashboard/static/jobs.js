// The jobs page: a page of rows from /ui/jobs/rows, kept live by the jobs channel
// (/ui/jobs/events), filters in the URL (never the token), "older" pages by creation time.
import { api, fragment, localize, notice, onSignedIn, streamEvents } from "./common.js";

const rows = document.getElementById("rows");
const older = document.getElementById("older");
const form = document.getElementById("filters");
const summary = document.getElementById("summary");
const empty = document.getElementById("empty");
let stream = null;
let nextBefore = null;

function filters() {
  const query = new URLSearchParams();
  for (const name of ["status", "executor", "repo"]) {
    const value = form.elements[name].value.trim();
    if (value) query.set(name, value);
  }
  return query;
}

let searchedTo = null;  // a filtered page that stopped reading before it was full: how far back it read

function showCount() {
  const count = rows.children.length;
  let text = count ? `${count} job${count === 1 ? "" : "s"} shown, newest first` : "";
  if (searchedTo !== null) {
    text += `${text ? "; " : ""}searched back to ${new Date(searchedTo * 1000).toLocaleString()} (“Older jobs” searches further)`;
  }
  summary.textContent = text;
  empty.hidden = count > 0 || nextBefore !== null;
}

async function loadPage(before) {
  const query = filters();
  query.set("limit", "50");
  if (before !== null) query.set("before", before);
  const response = await api(`/ui/jobs/rows?${query}`);
  const next = response.headers.get("X-Next-Before");
  const found = fragment(await response.text());
  for (const row of found) document.getElementById(row.id)?.remove();
  if (before === null) rows.replaceChildren(...found);
  else rows.append(...found);
  localize(rows);
  nextBefore = next;
  older.hidden = next === null;
  searchedTo = next !== null && found.length < 50 ? Number(next) : null;
  showCount();
}

/** A row changed: replace it, place a new one by creation time, or drop one that left the filter. */
function applyRow(change) {
  const current = document.getElementById(`job-${change.id}`);
  if (!change.match) {
    current?.remove();
    showCount();
    return;
  }
  const [row] = fragment(change.html);
  if (current) {
    current.replaceWith(row);
  } else {
    const after = [...rows.children].find((r) => Number(r.dataset.created) < change.created);
    if (after) rows.insertBefore(row, after);
    else if (nextBefore === null) rows.append(row);  // older than every row shown: only if nothing older is left out
    else return;
  }
  localize(row);
  showCount();
}

function connect() {
  stream?.close();
  stream = streamEvents(() => `/ui/jobs/events?${filters()}`, {
    ready: () => { loadPage(null).catch((e) => notice(e.message, "error")); notice(""); },
    row: applyRow,
    resync: () => loadPage(null).catch((e) => notice(e.message, "error")),
    broken: () => notice("Live updates interrupted; reconnecting…", "error"),
    failed: (error) => notice(error.message, "error"),
  });
}

function readUrl() {
  const query = new URLSearchParams(location.search);
  for (const name of ["status", "executor", "repo"]) form.elements[name].value = query.get(name) || "";
}

let typing = null;
function filtersChanged() {
  const query = filters().toString();
  history.replaceState(null, "", query ? `/?${query}` : "/");
  connect();
}

onSignedIn((whoami) => {
  const select = form.elements.executor;
  for (const name of whoami.executors) select.append(new Option(name, name));
  readUrl();
  form.addEventListener("change", filtersChanged);
  form.elements.repo.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(filtersChanged, 300); });
  form.addEventListener("submit", (event) => { event.preventDefault(); filtersChanged(); });
  older.addEventListener("click", () => loadPage(nextBefore).catch((e) => notice(e.message, "error")));
  connect();
});

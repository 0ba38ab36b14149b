// Shared by every dashboard page: the token (sessionStorage, sent as a bearer header, never
// in a URL), fetch helpers, Server-Sent Events read with fetch (EventSource cannot send
// headers), server-rendered fragments, times.

const TOKEN_KEY = "runner.dashboard.token";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

const byId = (id) => document.getElementById(id);

export function notice(text, kind = "info") {
  const box = byId("notice");
  box.textContent = text;
  box.dataset.kind = kind;
  box.hidden = !text;
}

async function messageOf(response) {
  try {
    const body = await response.json();
    return body.message || response.statusText;
  } catch {
    return response.statusText || `HTTP ${response.status}`;
  }
}

/** fetch with the bearer token; a non-2xx answer throws ApiError with the server's message. */
export async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  headers.set("Authorization", `Bearer ${token()}`);
  const response = await fetch(path, { ...options, headers, cache: "no-store", credentials: "omit" });
  if (!response.ok) {
    const error = new ApiError(response.status, await messageOf(response));
    if (response.status === 401) signOut(`The token was not accepted: ${error.message}`);
    throw error;
  }
  return response;
}

// -- sign-in ----------------------------------------------------------------------------------
let whoami = null;
const ready = [];

function showLogin(message) {
  byId("main").hidden = true;
  byId("who").hidden = true;
  byId("login").hidden = false;
  byId("login-error").textContent = message || "";
  byId("token").focus();
}

export function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  whoami = null;
  showLogin(message);
}

async function checkToken() {
  try {
    whoami = await (await api("/ui/whoami")).json();
  } catch (error) {
    if (error.status === 403) signOut(`This token cannot read jobs: ${error.message}`);
    else if (error.status !== 401) showLogin(`The server did not answer: ${error.message}`);
    return;
  }
  byId("login").hidden = true;
  byId("who").hidden = false;
  byId("who-name").textContent = whoami.name;
  byId("who-rights").textContent = `(${whoami.rights.join(", ") || "no rights"})`;
  byId("main").hidden = false;
  for (const start of ready.splice(0)) start(whoami);
}

/** Run `start(whoami)` once a token that may read is known (asking for one first if needed). */
export function onSignedIn(start) {
  ready.push(start);
  if (!byId("login-form").dataset.wired) {
    byId("login-form").dataset.wired = "1";
    byId("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = byId("token").value.trim();
      byId("token").value = "";
      if (!value) return;
      sessionStorage.setItem(TOKEN_KEY, value);
      checkToken();
    });
    byId("forget").addEventListener("click", () => { signOut(""); location.reload(); });
  }
  if (token()) checkToken();
  else showLogin("");
}

// -- letting the browser breathe ----------------------------------------------------------------
const channel = new MessageChannel();
const waiting = [];
channel.port1.onmessage = () => waiting.shift()?.();

/** A new task (not a microtask): rendering and input get their turn; not clamped like setTimeout. */
export function yieldToBrowser() {
  return new Promise((resolve) => { waiting.push(resolve); channel.port2.postMessage(0); });
}

// -- Server-Sent Events over fetch ---------------------------------------------------------------
/**
 * Read the event stream at `url()` and call handlers[event](data, id) for each event; data is JSON.
 * Reconnects (with the URL `url()` gives then) when the stream breaks, unless a handler returned
 * "stop", the answer was 401/403/404 (handlers.failed(error) is called), or close() was called.
 */
export function streamEvents(url, handlers) {
  const control = new AbortController();
  let closed = false;
  (async () => {
    let delay = 500;
    while (!closed) {
      let stop = false;
      try {
        const response = await api(url(), { headers: { Accept: "text/event-stream" }, signal: control.signal });
        handlers.open?.();
        delay = 500;
        stop = await readEvents(response, handlers);
      } catch (error) {
        if (closed || error.name === "AbortError") return;
        if ([401, 403, 404].includes(error.status)) { handlers.failed?.(error); return; }
        handlers.broken?.(error);
      }
      if (stop || closed) return;
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 10000);
    }
  })();
  return { close() { closed = true; control.abort(); } };
}

async function readEvents(response, handlers) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let slice = performance.now();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return false;
    const seen = buffer.length;  // already searched: look for the blank line only where it can now be
    buffer += decoder.decode(value, { stream: true });
    let start = 0;
    let cut;
    for (let from = Math.max(seen - 1, 0); (cut = buffer.indexOf("\n\n", from)) >= 0; from = start) {
      const block = buffer.slice(start, cut);
      start = cut + 2;
      if (dispatch(block, handlers) === "stop") { reader.cancel().catch(() => {}); return true; }
      if (performance.now() - slice > 8) { await yieldToBrowser(); slice = performance.now(); }
    }
    buffer = buffer.slice(start);
  }
}

function dispatch(block, handlers) {
  let name = "message";
  let id = null;
  let data = null;
  for (let start = 0; start < block.length;) {
    let end = block.indexOf("\n", start);
    if (end < 0) end = block.length;
    const colon = block.indexOf(":", start);
    if (colon !== start && end > start) {  // not a comment, not empty
      const field = colon < 0 || colon > end ? block.slice(start, end) : block.slice(start, colon);
      const from = colon < 0 || colon > end ? end : colon + (block.charCodeAt(colon + 1) === 32 ? 2 : 1);
      if (field === "data") data = data === null ? block.slice(from, end) : `${data}\n${block.slice(from, end)}`;
      else if (field === "event") name = block.slice(from, end);
      else if (field === "id") id = block.slice(from, end);
    }
    start = end + 1;
  }
  if (data === null || !handlers[name]) return undefined;
  return handlers[name](JSON.parse(data), id);
}

// -- fragments and times -----------------------------------------------------------------------
/** Nodes from server-rendered (escaped) HTML; scripts in it never run (and the CSP forbids inline ones). */
export function fragment(html) {
  const holder = document.createElement("template");
  holder.innerHTML = html;
  return [...holder.content.children];
}

export function replaceContent(element, html) {
  element.replaceChildren(...fragment(html));
  localize(element);
}

export function duration(seconds) {
  if (seconds < 60) return `${seconds.toFixed(1)}s`;
  const whole = Math.floor(seconds);
  if (whole < 3600) return `${Math.floor(whole / 60)}m ${String(whole % 60).padStart(2, "0")}s`;
  return `${Math.floor(whole / 3600)}h ${String(Math.floor((whole % 3600) / 60)).padStart(2, "0")}m`;
}

const sameDay = (a, b) => a.toDateString() === b.toDateString();

/** Times in the reader's zone (UTC stays in the tooltip); running durations start ticking. */
export function localize(root) {
  for (const time of root.querySelectorAll("time[datetime]")) {
    if (time.dataset.local) continue;
    const when = new Date(time.getAttribute("datetime"));
    if (Number.isNaN(when.getTime())) continue;
    time.title = time.textContent;
    time.textContent = sameDay(when, new Date()) ? when.toLocaleTimeString() : when.toLocaleString();
    time.dataset.local = "1";
  }
  tickElapsed(root);
}

export function tickElapsed(root = document) {
  const now = Date.now();
  for (const span of root.querySelectorAll(".elapsed[data-since]")) {
    const since = Date.parse(span.dataset.since);
    if (!Number.isNaN(since)) span.textContent = duration(Math.max(now - since, 0) / 1000);
  }
}

setInterval(() => tickElapsed(), 1000);

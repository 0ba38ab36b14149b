// The log viewer: every line is kept in memory, only the rows in view are in the DOM (a
// million-line log costs a few dozen elements), and work is done in slices so the tab stays
// responsive while a log streams in. Lines of one build step (BuildKit's "#N", the classic
// builder's "Step N/M", buildah's "STEP N/M") form a group whose first line folds the rest.
import { endState, segmentNode, segments } from "./ansi.js";

const OVERSCAN = 20; // rows rendered above and below the visible ones
const MAX_SCROLL_PX = 15_000_000; // browsers cap element heights; past it, scrolling maps proportionally
const SHOWN_CHARS = 5000; // a longer line is cut on screen (the download has it whole)
const BUILDKIT = /^#(\d+) /;
const STEP = /^(?:Step|STEP) \d+\/\d+ ?:/;

class Growable {
  constructor() { this.data = new Int32Array(1024); this.length = 0; }
  push(value) {
    if (this.length === this.data.length) {
      const bigger = new Int32Array(this.data.length * 2);
      bigger.set(this.data);
      this.data = bigger;
    }
    this.data[this.length++] = value;
  }
  clear() { this.length = 0; }
}

/** What a terminal would show of a line: the text after its last carriage return. */
function shown(text) {
  let end = text.length;
  while (end && text.charCodeAt(end - 1) === 13) end--;
  const cr = text.lastIndexOf("\r", end - 1);
  return cr >= 0 ? text.slice(cr + 1, end) : end === text.length ? text : text.slice(0, end);
}

export class LogView {
  constructor(element, { follow, onFollowChange }) {
    this.element = element;
    this.spacer = element.querySelector(".log-spacer");
    this.window = element.querySelector(".log-window");
    this.follow = follow;
    this.onFollowChange = onFollowChange;
    this.lines = [];
    this.groupOf = new Growable(); // group id per line (0: none)
    this.groups = []; // {header, size, collapsed}
    this.groupKeys = new Map(); // BuildKit "#N" -> group id, per build in the log
    this.build = 0;
    this.open = 0; // the Step/STEP group lines go to
    this.ansiAt = new Map(); // line -> style state it starts with, when not the default
    this.ansi = null;
    this.markLine = [];
    this.markMs = [];
    this.rows = new Growable(); // the line shown in each row (folded lines have none)
    this.pool = [];
    this.target = null;
    this.pendingTarget = null;
    this.lineHeight = 0;
    this.scheduled = false;
    this.userIntent = 0;
    this.state = "connecting";
    this.wire();
  }

  wire() {
    const intent = () => { this.userIntent = performance.now(); };
    for (const name of ["wheel", "touchmove", "mousedown", "keydown"]) this.element.addEventListener(name, intent, { passive: true });
    this.element.addEventListener("scroll", () => {
      if (this.follow && performance.now() - this.userIntent < 1000 && !this.atBottom()) this.setFollow(false);
      this.schedule();
    });
    this.window.addEventListener("click", (event) => {
      const fold = event.target.closest("button.fold");
      if (fold) this.toggle(Number(fold.dataset.group));
    });
    window.addEventListener("hashchange", () => this.targetFromHash());
    window.addEventListener("resize", () => this.schedule());
    this.targetFromHash();
  }

  // -- lines in ----------------------------------------------------------------------------
  /** Append a chunk of lines (text without its last newline) and its time marks [[line, ms], ...]. */
  append(text, marks) {
    const base = this.lines.length;
    for (const [line, ms] of marks) {
      if (this.markMs[this.markMs.length - 1] !== ms) { this.markLine.push(base + line); this.markMs.push(ms); }
    }
    for (const line of text.split("\n")) this.add(line);
    if (this.pendingTarget !== null && this.pendingTarget < this.lines.length) this.targetFromHash();
    this.schedule();
  }

  add(text) {
    const index = this.lines.length;
    this.lines.push(text);
    if (this.ansi !== null) this.ansiAt.set(index, this.ansi);
    if (text.includes("\x1b")) this.ansi = endState(text, this.ansi);
    const group = this.groupFor(text, index);
    this.groupOf.push(group);
    const info = group ? this.groups[group - 1] : null;
    if (info) info.size++;
    if (!info || !info.collapsed || info.header === index) this.rows.push(index);
  }

  groupFor(text, index) {
    const first = text.charCodeAt(0);
    if (first === 35 /* # */) {
      const step = BUILDKIT.exec(text);
      if (step) {
        this.open = 0;
        const key = `${this.build}:${step[1]}`;
        let group = this.groupKeys.get(key);
        if (group === undefined) { group = this.newGroup(index); this.groupKeys.set(key, group); }
        return group;
      }
    }
    if ((first === 83 /* S */) && STEP.test(text)) return (this.open = this.newGroup(index));
    if (first === 91 /* [ */ && text.startsWith("[runner]")) {
      this.open = 0;
      if (text.startsWith("[runner] job ") || text.startsWith("[runner] attempt ")) { this.build++; }
      return 0;
    }
    if (first === 67 /* C */ && text.startsWith("COMMIT")) { this.open = 0; return 0; }
    return this.open;
  }

  newGroup(header) {
    this.groups.push({ header, size: 0, collapsed: false });
    return this.groups.length;
  }

  // -- folding ------------------------------------------------------------------------------
  toggle(group, collapsed) {
    const info = this.groups[group - 1];
    if (!info) return;
    info.collapsed = collapsed ?? !info.collapsed;
    this.rebuildRows();
  }

  setAll(collapsed) {
    for (const info of this.groups) info.collapsed = collapsed;
    this.rebuildRows();
  }

  rebuildRows() {
    this.rows.clear();
    const groups = this.groups;
    const of = this.groupOf.data;
    for (let i = 0; i < this.lines.length; i++) {
      const g = of[i];
      if (!g || !groups[g - 1].collapsed || groups[g - 1].header === i) this.rows.push(i);
    }
    this.pool.forEach((row) => { row.dataset.key = ""; });
    this.schedule();
  }

  // -- follow, targets -----------------------------------------------------------------------
  setFollow(on) {
    this.follow = on;
    this.onFollowChange?.(on);
    if (on) this.schedule();
  }

  atBottom() {
    const e = this.element;
    return e.scrollTop + e.clientHeight >= e.scrollHeight - Math.max(this.lineHeight, 4);
  }

  targetFromHash() {
    const match = /^#L(\d+)$/.exec(location.hash);
    if (!match) { this.target = null; this.pendingTarget = null; this.schedule(); return; }
    const line = Number(match[1]) - 1;
    if (line >= this.lines.length) { this.pendingTarget = line; return; }
    this.pendingTarget = null;
    this.target = line;
    const group = this.groupOf.data[line];
    if (group && this.groups[group - 1].collapsed && this.groups[group - 1].header !== line) this.toggle(group, false);
    if (this.follow) this.setFollow(false);
    this.scrollToLine(line);
  }

  scrollToLine(line) {
    const rows = this.rows.data.subarray(0, this.rows.length);
    let lo = 0;
    let hi = rows.length - 1;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (rows[mid] < line) lo = mid + 1; else hi = mid; }
    this.measure();
    const { rowPx } = this.geometry();
    this.element.scrollTop = Math.max(lo * rowPx - this.element.clientHeight / 3, 0);
    this.schedule();
  }

  timeOf(line) {
    const marks = this.markLine;
    let lo = 0;
    let hi = marks.length - 1;
    if (hi < 0 || marks[0] > line) return null;
    while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (marks[mid] <= line) lo = mid; else hi = mid - 1; }
    return this.markMs[lo];
  }

  // -- rendering ------------------------------------------------------------------------------
  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => { this.scheduled = false; this.render(); });
  }

  measure() {
    if (this.lineHeight) return;
    const probe = this.makeRow();
    probe.querySelector(".text").textContent = "X";
    this.window.append(probe);
    this.lineHeight = probe.getBoundingClientRect().height || 18;
    probe.remove();
  }

  geometry() {
    const total = this.rows.length * this.lineHeight;
    const scale = total > MAX_SCROLL_PX ? MAX_SCROLL_PX / total : 1;
    return { rowPx: this.lineHeight * scale, height: total * scale, scaled: scale < 1 };
  }

  makeRow() {
    const row = document.createElement("div");
    row.className = "line";
    const number = document.createElement("a");
    number.className = "ln";
    const fold = document.createElement("button");
    fold.type = "button";
    fold.className = "fold";
    const text = document.createElement("span");
    text.className = "text";
    row.append(number, fold, text);
    return row;
  }

  render() {
    this.measure();
    const element = this.element;
    const { rowPx, height, scaled } = this.geometry();
    this.spacer.style.height = `${Math.max(height, 1)}px`;
    element.style.setProperty("--gutter", `${String(this.lines.length).length + 1}ch`);
    if (this.follow) element.scrollTop = element.scrollHeight;
    const visible = Math.ceil(element.clientHeight / this.lineHeight) + 1;
    const count = this.rows.length;
    let first;
    let top;
    if (scaled) {
      const fraction = element.scrollTop / Math.max(height - element.clientHeight, 1);
      first = Math.round(fraction * Math.max(count - visible + 1, 0));
      top = element.scrollTop;
    } else {
      first = Math.floor(element.scrollTop / rowPx);
      top = first * rowPx;
    }
    const from = Math.max(first - OVERSCAN, 0);
    const to = Math.min(first + visible + OVERSCAN, count);
    top -= (first - from) * this.lineHeight;
    this.window.style.transform = `translateY(${Math.max(top, 0)}px)`;
    const needed = to - from;
    while (this.pool.length < needed) this.pool.push(this.window.appendChild(this.makeRow()));
    for (let k = 0; k < this.pool.length; k++) {
      const row = this.pool[k];
      if (k >= needed) { row.hidden = true; continue; }
      row.hidden = false;
      this.fill(row, this.rows.data[from + k]);
    }
    element.dataset.lines = String(this.lines.length);
    element.dataset.rows = String(count);
    if (this.lines.length && !this.firstShown) { this.firstShown = true; performance.mark("log:first-line"); }
    if (this.state === "ended" && !this.lastShown) { this.lastShown = true; performance.mark("log:last-line"); element.dataset.state = "ended"; }
  }

  fill(row, line) {
    const group = this.groupOf.data[line];
    const info = group ? this.groups[group - 1] : null;
    const head = info && info.header === line;
    const key = `${line}|${head ? info.collapsed : ""}|${line === this.target}|${head ? info.size : ""}`;
    if (row.dataset.key === key) return;
    row.dataset.key = key;
    row.className = `line${head ? " group-head" : ""}${info && !head ? " in-group" : ""}${line === this.target ? " target" : ""}`;
    const [number, fold, text] = row.children;
    number.textContent = String(line + 1);
    number.href = `#L${line + 1}`;
    const ms = this.timeOf(line);
    number.title = ms === null ? "" : new Date(ms).toLocaleString(undefined, { hour12: false }) + `.${String(ms % 1000).padStart(3, "0")}`;
    fold.hidden = !head;
    if (head) {
      fold.dataset.group = String(group);
      fold.textContent = info.collapsed ? "▸" : "▾";
      fold.setAttribute("aria-expanded", String(!info.collapsed));
      fold.setAttribute("aria-label", `${info.collapsed ? "Expand" : "Collapse"} step (${info.size} lines)`);
    }
    let content = shown(this.lines[line]);
    let cut = "";
    if (content.length > SHOWN_CHARS) { cut = ` … [${(content.length - SHOWN_CHARS).toLocaleString()} more characters: download the raw log]`; content = content.slice(0, SHOWN_CHARS); }
    const start = this.ansiAt.get(line) ?? null;
    const nodes = content.includes("\x1b") || start ? segments(content, start).map(([t, s]) => segmentNode(t, s)) : [document.createTextNode(content)];
    if (cut) { const note = document.createElement("span"); note.className = "muted"; note.textContent = cut; nodes.push(note); }
    if (head && info.collapsed) { const note = document.createElement("span"); note.className = "muted"; note.textContent = `  (${info.size - 1} more lines)`; nodes.push(note); }
    text.replaceChildren(...nodes);
  }

  ended() {
    this.state = "ended";
    this.schedule();
  }
}

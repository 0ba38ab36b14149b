// The log viewer: the log is kept as the chunks it arrived in plus each line's offset (a few
// hundred strings and typed arrays for a million lines: little for the garbage collector to
// walk), only the rows in view are in the DOM (a few dozen elements whatever the length), and
// every line is looked at once, as it arrives, without making a string of it. Lines of one build step (BuildKit's "#N", the classic
// builder's "Step N/M", buildah's "STEP N/M") form a group whose first line folds the rest.
import { endState, segmentNode, segments } from "./ansi.js";

const ESC = "\x1b";

const OVERSCAN = 20; // rows rendered above and below the visible ones
const MAX_SCROLL_PX = 15_000_000; // browsers cap element heights; past it, scrolling maps proportionally
const SHOWN_CHARS = 5000; // a longer line is cut on screen (the download has it whole)
const STEP = /^(?:Step|STEP) \d+\/\d+ ?:/;
const TIME = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium", hour12: false });

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

/** The style a line leaves for the next one; most lines end with a reset, which needs no parsing. */
function carried(text, start, end, state) {
  const last = text.lastIndexOf(ESC, end - 1);
  if (last >= start && (text.startsWith("[0m", last + 1) || text.startsWith("[m", last + 1))) return null;
  return endState(text.slice(start, end), state);
}

export class LogView {
  constructor(element, { follow, onFollowChange }) {
    this.element = element;
    this.spacer = element.querySelector(".log-spacer");
    this.window = element.querySelector(".log-window");
    this.follow = follow;
    this.onFollowChange = onFollowChange;
    this.chunks = []; // the text of each event, lines joined by "\n"
    this.chunkFirst = []; // the first line of each chunk
    this.starts = new Growable(); // each line's offset in its chunk
    this.count = 0;
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
    this.firstShown = false;
    this.lastShown = false;
    this.wire();
  }

  wire() {
    const intent = () => { this.userIntent = performance.now(); };
    for (const name of ["wheel", "touchmove", "mousedown", "keydown"]) this.element.addEventListener(name, intent, { passive: true });
    this.element.addEventListener("scroll", () => {
      // only a scroll the reader made stops following (and only then is the layout read)
      if (this.follow && performance.now() - this.userIntent < 1000 && !this.atBottom()) this.setFollow(false);
      this.schedule();
    });
    const titled = (event) => {
      const number = event.target.closest?.("a.ln");
      if (number && !number.title) number.title = this.writtenAt(Number(number.dataset.line));
    };
    this.window.addEventListener("mouseover", titled);
    this.window.addEventListener("focusin", titled);
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
    const base = this.count;
    for (const [line, ms] of marks) {
      if (this.markMs[this.markMs.length - 1] !== ms) { this.markLine.push(base + line); this.markMs.push(ms); }
    }
    this.chunks.push(text);
    this.chunkFirst.push(base);
    let start = 0;
    let esc = text.indexOf(ESC);
    for (;;) {
      let end = text.indexOf("\n", start);
      if (end < 0) end = text.length;
      const index = this.count++;
      this.starts.push(start);
      if (this.ansi !== null) this.ansiAt.set(index, this.ansi);
      if (esc >= 0 && esc < end) {
        this.ansi = carried(text, start, end, this.ansi);
        esc = text.indexOf(ESC, end);
      }
      const group = this.groupFor(text, start, end, index);
      this.groupOf.push(group);
      const info = group ? this.groups[group - 1] : null;
      if (info) info.size++;
      if (!info || !info.collapsed || info.header === index) this.rows.push(index);
      if (end >= text.length) break;
      start = end + 1;
    }
    if (this.pendingTarget !== null && this.pendingTarget < this.count) this.targetFromHash();
    this.schedule();
  }

  /** Line `index` of the log (0-based). */
  line(index) {
    const firsts = this.chunkFirst;
    let lo = 0;
    let hi = firsts.length - 1;
    while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (firsts[mid] <= index) lo = mid; else hi = mid - 1; }
    const text = this.chunks[lo];
    const last = lo + 1 < firsts.length ? firsts[lo + 1] - 1 : this.count - 1;
    const end = index < last ? this.starts.data[index + 1] - 1 : text.length;
    return text.slice(this.starts.data[index], end);
  }

  /** The whole log as shown so far (for tests). */
  text() {
    return this.chunks.join("\n");
  }

  groupFor(text, start, end, index) {
    const first = text.charCodeAt(start);
    if (first === 35 /* # */) {
      let digit = start + 1;
      while (digit < end && text.charCodeAt(digit) >= 48 && text.charCodeAt(digit) <= 57) digit++;
      if (digit > start + 1 && text.charCodeAt(digit) === 32) {
        this.open = 0;
        const key = `${this.build}:${text.slice(start + 1, digit)}`;
        let group = this.groupKeys.get(key);
        if (group === undefined) { group = this.newGroup(index); this.groupKeys.set(key, group); }
        return group;
      }
    }
    if (first === 83 /* S */ && STEP.test(text.slice(start, Math.min(end, start + 24)))) return (this.open = this.newGroup(index));
    if (first === 91 /* [ */ && text.startsWith("[runner]", start)) {
      this.open = 0;
      if (text.startsWith("[runner] job ", start) || text.startsWith("[runner] attempt ", start)) this.build++;
      return 0;
    }
    if (first === 67 /* C */ && text.startsWith("COMMIT", start)) { this.open = 0; return 0; }
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
    for (let i = 0; i < this.count; i++) {
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
    if (line >= this.count) { this.pendingTarget = line; return; }
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

  /** When line `index` was written, as the reader's local time with milliseconds ("" if unknown). */
  writtenAt(index) {
    const ms = this.timeOf(index);
    return ms === null ? "" : `written ${TIME.format(new Date(ms))}.${String(ms % 1000).padStart(3, "0")}`;
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
    element.style.setProperty("--gutter", `${String(this.count).length + 1}ch`);
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
    element.dataset.lines = String(this.count);
    element.dataset.rows = String(count);
    if (this.count && !this.firstShown) { this.firstShown = true; performance.mark("log:first-line"); }
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
    number.dataset.line = String(line);
    number.removeAttribute("title");  // set on hover (formatting a time for every row drawn costs more than drawing it)
    fold.hidden = !head;
    if (head) {
      fold.dataset.group = String(group);
      fold.textContent = info.collapsed ? "▸" : "▾";
      fold.setAttribute("aria-expanded", String(!info.collapsed));
      fold.setAttribute("aria-label", `${info.collapsed ? "Expand" : "Collapse"} step (${info.size} lines)`);
    }
    let content = shown(this.line(line));
    let cut = "";
    if (content.length > SHOWN_CHARS) { cut = ` … [${content.length - SHOWN_CHARS} more characters: download the raw log]`; content = content.slice(0, SHOWN_CHARS); }
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

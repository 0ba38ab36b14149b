// ANSI escape sequences in build output: SGR colours and styles become spans; every other
// escape (cursor moves, erase, window titles) is dropped. Text only ever becomes text nodes.

// CSI ... final byte | OSC ... BEL or ST | a two-character escape
const ESCAPES = /\x1b(?:\[([0-9;:?]*)([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])/g;

/** The style state after applying SGR parameters `params` ("1;31") to `state` (null: default). */
export function applySgr(state, params) {
  const s = state ? { ...state } : {};
  const codes = params === "" ? [0] : params.split(/[;:]/).map(Number);
  for (let i = 0; i < codes.length; i++) {
    const c = codes[i];
    if (c === 0) for (const key of Object.keys(s)) delete s[key];
    else if (c === 1) s.bold = true;
    else if (c === 2) s.dim = true;
    else if (c === 3) s.italic = true;
    else if (c === 4) s.underline = true;
    else if (c === 7) s.inverse = true;
    else if (c === 22) { delete s.bold; delete s.dim; }
    else if (c === 23) delete s.italic;
    else if (c === 24) delete s.underline;
    else if (c === 27) delete s.inverse;
    else if (c >= 30 && c <= 37) s.fg = c - 30;
    else if (c >= 90 && c <= 97) s.fg = c - 82;
    else if (c === 39) delete s.fg;
    else if (c >= 40 && c <= 47) s.bg = c - 40;
    else if (c >= 100 && c <= 107) s.bg = c - 92;
    else if (c === 49) delete s.bg;
    else if (c === 38 || c === 48) {
      const key = c === 38 ? "fg" : "bg";
      if (codes[i + 1] === 5 && codes[i + 2] >= 0 && codes[i + 2] <= 255) { s[key] = codes[i + 2]; i += 2; }
      else if (codes[i + 1] === 2) { s[key] = `rgb(${codes[i + 2] | 0}, ${codes[i + 3] | 0}, ${codes[i + 4] | 0})`; i += 4; }
    }
  }
  return Object.keys(s).length ? s : null;
}

/** The state a line leaves behind (for the next line), starting from `state`. */
export function endState(text, state) {
  ESCAPES.lastIndex = 0;
  let match;
  while ((match = ESCAPES.exec(text))) if (match[2] === "m") state = applySgr(state, match[1]);
  return state;
}

/** [[text, state], ...] of `text` (escapes removed), starting from `state`. */
export function segments(text, state) {
  const parts = [];
  let last = 0;
  let match;
  ESCAPES.lastIndex = 0;
  while ((match = ESCAPES.exec(text))) {
    if (match.index > last) parts.push([text.slice(last, match.index), state]);
    if (match[2] === "m") state = applySgr(state, match[1]);
    last = ESCAPES.lastIndex;
  }
  if (last < text.length) parts.push([text.slice(last), state]);
  return parts;
}

function colour(value) {
  if (typeof value === "string") return value;
  if (value < 232) {
    const n = value - 16;
    const level = (v) => (v ? 55 + v * 40 : 0);
    return `rgb(${level(Math.floor(n / 36))}, ${level(Math.floor(n / 6) % 6)}, ${level(n % 6)})`;
  }
  const grey = 8 + (value - 232) * 10;
  return `rgb(${grey}, ${grey}, ${grey})`;
}

/** A span (or a bare text node) for one segment. The 16 basic colours are classes that follow
 * the light or dark theme; 256-colour and true-colour values are set through the CSSOM (which
 * the Content-Security-Policy allows, unlike style attributes). */
export function segmentNode(text, state) {
  if (!state) return document.createTextNode(text);
  const span = document.createElement("span");
  span.textContent = text;
  let { fg, bg } = state;
  if (state.inverse) [fg, bg] = [bg ?? "default-bg", fg ?? "default-fg"];
  for (const [key, value] of [["fg", fg], ["bg", bg]]) {
    if (value === undefined) continue;
    if (typeof value === "number" && value < 16) span.classList.add(`${key}-${value}`);
    else if (value === "default-bg" || value === "default-fg") span.classList.add(`${key}-${value}`);
    else span.style[key === "fg" ? "color" : "backgroundColor"] = colour(value);
  }
  if (state.bold) span.classList.add("b");
  if (state.dim) span.classList.add("dim");
  if (state.italic) span.classList.add("i");
  if (state.underline) span.classList.add("u");
  return span;
}

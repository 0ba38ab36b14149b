"""The pieces of Go's standard library that Docker's .dockerignore rules are made of.

Docker validates a pattern with `path/filepath.Match`, cleans it with `filepath.Clean`, trims
it with `strings.TrimSpace`, and matches paths with a regular expression in Go's `regexp`
(RE2) syntax. Python's `posixpath`, `str.strip` and `re` differ from each of these in corner
cases, so this module reproduces the Go behaviour: byte-level `filepath.Match` on Linux, and a
translation of RE2 syntax (Perl flags, as `regexp.Compile` uses) into an equivalent Python
regular expression.

Strings here are Python `str`; bytes that are not valid UTF-8 are carried as surrogate
escapes (`os.fsdecode`), and are treated as Go treats invalid UTF-8.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache, lru_cache
from typing import Any

from runner.core.frozen import Frozen

MAX_RUNE = 0x10FFFF
RUNE_ERROR = 0xFFFD
_SURROGATES = re.compile("[\ud800-\udfff]")
#: one Unicode class or named group: code point ranges
Ranges = tuple[tuple[int, int], ...]


class BadPattern(ValueError):
    """Go's `filepath.ErrBadPattern`."""

    def __init__(self) -> None:
        super().__init__("syntax error in pattern")


class GoRegexpError(ValueError):
    """`regexp.Compile` refused the expression (the code is Go's wording)."""


class GoRegexpUnsupported(GoRegexpError):
    """Valid Go syntax this translation does not carry (no .dockerignore pattern produces it)."""


# -- strings.TrimSpace, filepath.Clean --------------------------------------------------------
#: unicode.IsSpace: the Latin-1 spaces plus the White_Space property
_GO_SPACE = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | frozenset(map(chr, range(0x2000, 0x200B)))


def go_trim_space(text: str) -> str:
    start, end = 0, len(text)
    while start < end and text[start] in _GO_SPACE:
        start += 1
    while end > start and text[end - 1] in _GO_SPACE:
        end -= 1
    return text[start:end]


def go_clean(path: str) -> str:
    """`filepath.Clean` on Linux (unlike `posixpath.normpath`, "//a" becomes "/a")."""
    if not path:
        return "."
    rooted = path.startswith("/")
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            continue
        out.append(part)
    cleaned = "/".join(out)
    if rooted:
        return "/" + cleaned
    return cleaned or "."


# -- filepath.Match ---------------------------------------------------------------------------
def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def decode_rune(data: bytes, pos: int) -> tuple[int, int]:
    """`utf8.DecodeRune`: (rune, width); invalid input gives (RuneError, 1), empty (RuneError, 0)."""
    if pos >= len(data):
        return RUNE_ERROR, 0
    lead = data[pos]
    if lead < 0x80:
        return lead, 1
    width = 2 if 0xC2 <= lead <= 0xDF else 3 if 0xE0 <= lead <= 0xEF else 4 if 0xF0 <= lead <= 0xF4 else 0
    if width:
        try:
            return ord(data[pos:pos + width].decode("utf-8")), width
        except UnicodeDecodeError:
            pass
    return RUNE_ERROR, 1


def go_match(pattern: str, name: str) -> bool:
    """`filepath.Match(pattern, name)` on Linux; raises BadPattern where Go returns ErrBadPattern.

    Works on UTF-8 bytes as Go does: a `*` may skip part of a multi-byte character.
    """
    pat, text = _utf8(pattern), _utf8(name)
    while pat:
        star, chunk, pat = _scan_chunk(pat)
        if star and not chunk:
            return b"/" not in text  # a trailing * matches the rest unless it has a /
        rest, ok = _match_chunk(chunk, text)
        if ok and (not rest or pat):
            text = rest
            continue
        if star:
            matched = False
            i = 0
            while i < len(text) and text[i] != 0x2F:
                rest, ok = _match_chunk(chunk, text[i + 1:])
                if ok and not (not pat and rest):
                    text, matched = rest, True
                    break
                i += 1
            if matched:
                continue
        return False
    return not text


def _scan_chunk(pat: bytes) -> tuple[bool, bytes, bytes]:
    star = False
    while pat[:1] == b"*":
        pat, star = pat[1:], True
    in_range, i = False, 0
    while i < len(pat):
        c = pat[i]
        if c == 0x5C:  # backslash: skip the escaped byte
            if i + 1 < len(pat):
                i += 1
        elif c == 0x5B:
            in_range = True
        elif c == 0x5D:
            in_range = False
        elif c == 0x2A and not in_range:
            break
        i += 1
    return star, pat[:i], pat[i:]


def _match_chunk(chunk: bytes, text: bytes) -> tuple[bytes, bool]:
    """Go's matchChunk: after a mismatch it keeps reading the chunk, to report a bad pattern."""
    failed = False
    while chunk:
        if not failed and not text:
            failed = True
        c = chunk[0]
        if c == 0x5B:  # [ character class
            r = 0
            if not failed:
                r, n = decode_rune(text, 0)
                text = text[n:]
            chunk = chunk[1:]
            negated = chunk[:1] == b"^"
            if negated:
                chunk = chunk[1:]
            match, nrange = False, 0
            while True:
                if chunk[:1] == b"]" and nrange > 0:
                    chunk = chunk[1:]
                    break
                lo, chunk = _get_esc(chunk)
                hi = lo
                if chunk[:1] == b"-":
                    hi, chunk = _get_esc(chunk[1:])
                if lo <= r <= hi:
                    match = True
                nrange += 1
            if match == negated:
                failed = True
        elif c == 0x3F:  # ?
            if not failed:
                if text[0] == 0x2F:
                    failed = True
                _, n = decode_rune(text, 0)
                text = text[n:]
            chunk = chunk[1:]
        else:
            if c == 0x5C:
                chunk = chunk[1:]
                if not chunk:
                    raise BadPattern()
            if not failed:
                if chunk[0] != text[0]:
                    failed = True
                text = text[1:]
            chunk = chunk[1:]
    if failed:
        return b"", False
    return text, True


def _get_esc(chunk: bytes) -> tuple[int, bytes]:
    if not chunk or chunk[0] in b"-]":
        raise BadPattern()
    if chunk[0] == 0x5C:
        chunk = chunk[1:]
        if not chunk:
            raise BadPattern()
    r, n = decode_rune(chunk, 0)
    if r == RUNE_ERROR and n == 1:
        raise BadPattern()
    rest = chunk[n:]
    if not rest:
        raise BadPattern()
    return r, rest


# -- regexp (RE2 syntax, Perl flags), run on RE2 --------------------------------------------------
# Go's regexp package implements RE2: matching takes time linear in the text, whatever the
# expression. Python's `re` backtracks (a pattern of nested `**` took minutes, holding the GIL),
# so the expression is checked here exactly as Go's parser checks it and written out in RE2's
# own syntax, with every class spelled as code point ranges, for the RE2 library to run.
_PERL_GROUPS: dict[str, tuple[int, tuple[tuple[int, int], ...]]] = {}
_POSIX_GROUPS: dict[str, tuple[int, tuple[tuple[int, int], ...]]] = {}
#: the most RE2 text one expression may become (a class such as \pL is ~10 KB of ranges; a
#: 64 KiB ignore line of plain text ~130 KB); past it the expression is refused as too complex
MAX_RE2_SOURCE = 1024 * 1024
#: RE2's memory budget for one compiled expression (a quarter of its default: ~90,000
#: instructions, where an ignore pattern needs tens); a bigger one is refused as too complex
RE2_MAX_MEM = 2 * 1024 * 1024
_BEGIN, _END = "\0begin", "\0end"  # top-level atoms that are the text's start and end anchors
_COUNTED_REPEAT = re.compile(r"\{(0|[1-9][0-9]*)(,(0|[1-9][0-9]*)?)?\}")


def _groups() -> None:
    digit, space, word = ((0x30, 0x39),), ((0x9, 0xA), (0xC, 0xD), (0x20, 0x20)), ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A))
    perl: dict[str, tuple[tuple[int, int], ...]] = {"d": digit, "s": space, "w": word}
    for name, ranges in perl.items():
        _PERL_GROUPS["\\" + name] = (1, ranges)
        _PERL_GROUPS["\\" + name.upper()] = (-1, ranges)
    posix = {
        "alnum": ((0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)), "alpha": ((0x41, 0x5A), (0x61, 0x7A)),
        "ascii": ((0x0, 0x7F),), "blank": ((0x9, 0x9), (0x20, 0x20)), "cntrl": ((0x0, 0x1F), (0x7F, 0x7F)),
        "digit": digit, "graph": ((0x21, 0x7E),), "lower": ((0x61, 0x7A),), "print": ((0x20, 0x7E),),
        "punct": ((0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)), "space": ((0x9, 0xD), (0x20, 0x20)),
        "upper": ((0x41, 0x5A),), "word": word, "xdigit": ((0x30, 0x39), (0x41, 0x46), (0x61, 0x66)),
    }
    for name, ranges in posix.items():
        _POSIX_GROUPS[f"[:{name}:]"] = (1, ranges)
        _POSIX_GROUPS[f"[:^{name}:]"] = (-1, ranges)


_groups()


class RegexpTooComplex(ValueError):
    """Valid Go syntax that is too big for the runner to match (RE2's memory budget, or
    MAX_RE2_SOURCE): refused rather than given unbounded memory."""


def _clean(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges, key=lambda r: (r[0], -r[1])):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
            continue
        out.append((lo, hi))
    return out


def _negate(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, next_lo = [], 0
    for lo, hi in _clean(ranges):
        if next_lo <= lo - 1:
            out.append((next_lo, lo - 1))
        next_lo = hi + 1
    if next_lo <= MAX_RUNE:
        out.append((next_lo, MAX_RUNE))
    return out


@cache
def _unicode_category(letter: str) -> Ranges:
    """Go's one-letter Unicode categories (\\pL …); Go's C leaves out unassigned code points."""
    ranges: list[tuple[int, int]] = []
    for cp in range(MAX_RUNE + 1):
        category = unicodedata.category(chr(cp))
        if category[0] == letter and category != "Cn":
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1] = (ranges[-1][0], cp)
            else:
                ranges.append((cp, cp))
    return tuple(ranges)


def _re2_char(cp: int) -> str:
    """One code point as an RE2 literal: letters and digits as they are, ASCII punctuation
    escaped, other ASCII by number, the rest as UTF-8 text."""
    ch = chr(cp)
    if ch.isascii() and ch.isalnum():
        return ch
    if 0x21 <= cp <= 0x7E:
        return "\\" + ch
    if cp < 0x80:
        return f"\\x{{{cp:x}}}"
    return ch


@cache
def _group_ranges(group: tuple[int, Ranges]) -> Ranges:
    """A named class's ranges, negated for a negative sign (a few dozen names: cached)."""
    sign, ranges = group
    return ranges if sign > 0 else tuple(_negate(list(ranges)))


@lru_cache(maxsize=256)
def _class_re2(ranges: tuple[tuple[int, int], ...]) -> str:
    cleaned = _clean(list(ranges))
    if not cleaned:
        return f"[^\\x{{0}}-\\x{{{MAX_RUNE:x}}}]"  # the empty class: matches nothing
    parts = [f"\\x{{{lo:x}}}" if lo == hi else f"\\x{{{lo:x}}}-\\x{{{hi:x}}}" for lo, hi in cleaned]
    return "[" + "".join(parts) + "]"


class _Parser:
    """Go's regexp/syntax parser loop, emitting RE2 text instead of a syntax tree.

    It also notes the top-level atoms that are single literal characters or the text's start
    and end anchors, so the literal text every match must start or end with is known.
    """

    def __init__(self, source: str) -> None:
        self.s = source
        self.i = 0
        # each open group: its finished alternatives and the atoms of the current one
        self.groups: list[tuple[list[str], list[str]]] = [([], [])]
        self.top: list[str | None] = []  # per top-level atom: its literal character, _BEGIN, _END, or None
        self.top_alternation = False
        self.last_repeat = False
        self.size = 0
        self.too_large = False
        self.no_posix_close_from = len(source) + 3  # no "[:name:]" can close at or after this index

    def error(self, code: str) -> GoRegexpError:
        return GoRegexpError(code)

    def next_rune(self) -> int:
        c = self.s[self.i]
        if "\udc80" <= c <= "\udcff":
            raise self.error("invalid UTF-8")
        self.i += 1
        return ord(c)

    def push(self, atom: str, literal: str | None = None) -> None:
        self.size += len(atom)
        if self.size > MAX_RE2_SOURCE:
            self.too_large, atom = True, ""  # go on checking the syntax; refused at the end
        self.groups[-1][1].append(atom)
        if len(self.groups) == 1:
            self.top.append(literal)

    def push_char(self, cp: int) -> None:
        self.push(_re2_char(cp), chr(cp))

    def push_class(self, ranges: Ranges | list[tuple[int, int]]) -> None:
        self.push("" if self.too_large else _class_re2(tuple(ranges)))

    def parse(self) -> str:
        s = self.s
        while self.i < len(s):
            repeat = False
            c = s[self.i]
            if c == "(":
                if s.startswith("(?", self.i):
                    raise GoRegexpUnsupported("flags and non-capturing groups")
                self.groups.append(([], []))
                self.i += 1
            elif c == "|":
                alternatives, atoms = self.groups[-1]
                alternatives.append("".join(atoms))
                atoms.clear()
                if len(self.groups) == 1:
                    self.top_alternation = True
                self.i += 1
            elif c == ")":
                if len(self.groups) == 1:
                    raise self.error("unexpected )")
                alternatives, atoms = self.groups.pop()
                self.push("(?:" + "|".join([*alternatives, "".join(atoms)]) + ")")
                self.i += 1
            elif c == "^":
                self.push(r"\A", _BEGIN)
                self.i += 1
            elif c == "$":
                self.push(r"\z", _END)
                self.i += 1
            elif c == ".":
                self.push(".")  # as in Go without the s flag: not a newline
                self.i += 1
            elif c == "[":
                self.push_class(self.parse_class())
            elif c in "*+?":
                self.i += 1
                lazy = s.startswith("?", self.i)
                if lazy:
                    self.i += 1
                if self.last_repeat:
                    raise self.error("invalid nested repetition operator")
                atoms = self.groups[-1][1]
                if not atoms:
                    raise self.error("missing argument to repetition operator")
                atoms[-1] = "(?:" + atoms[-1] + ")" + c + ("?" if lazy else "")
                if len(self.groups) == 1:
                    self.top[-1] = None
                repeat = True
            elif c == "{":
                if _COUNTED_REPEAT.match(s, self.i):
                    raise GoRegexpUnsupported("counted repetition")
                self.push_char(ord("{"))
                self.i += 1
            elif c == "\\":
                self.parse_backslash()
            else:
                self.push_char(self.next_rune())
            self.last_repeat = repeat
        if len(self.groups) != 1:
            raise self.error("missing closing )")
        if self.too_large:
            raise RegexpTooComplex(f"more than {MAX_RE2_SOURCE:,} bytes as an RE2 expression")
        alternatives, atoms = self.groups[0]
        return "|".join([*alternatives, "".join(atoms)])

    def parse_backslash(self) -> None:
        s, i = self.s, self.i
        simple = {"A": (r"\A", _BEGIN), "b": (r"\b", None), "B": (r"\B", None), "z": (r"\z", _END)}
        following = s[i + 1:i + 2]
        if following in simple:
            self.push(*simple[following])
            self.i += 2
            return
        if following == "C":
            raise self.error("invalid escape sequence")
        if following == "Q":  # \Q ... \E: literal text
            end = s.find("\\E", i + 2)
            literal = s[i + 2:] if end < 0 else s[i + 2:end]
            self.i = len(s) if end < 0 else end + 2
            for ch in literal:
                if "\udc80" <= ch <= "\udcff":
                    raise self.error("invalid UTF-8")
                self.push_char(ord(ch))
            return
        unicode_class = self.parse_unicode_class()
        if unicode_class is not None:
            self.push_class(unicode_class)
            return
        group = _PERL_GROUPS.get(s[i:i + 2])
        if group is not None:
            self.i += 2
            self.push_class(_group_ranges(group))
            return
        self.push_char(self.parse_escape())

    def parse_unicode_class(self) -> Ranges | None:
        s, i = self.s, self.i
        if s[i:i + 1] != "\\" or s[i + 1:i + 2] not in ("p", "P"):
            return None
        sign = -1 if s[i + 1] == "P" else 1
        self.i = i + 2
        if self.i >= len(s):
            raise self.error("invalid character class range")
        if s[self.i] == "{":
            end = s.find("}", self.i)
            if end < 0:
                raise self.error("invalid character class range")
            name = s[self.i + 1:end]
            self.i = end + 1
        else:
            name = chr(self.next_rune())
        if name.startswith("^"):
            sign, name = -sign, name[1:]
        name = _canonical_name(name)
        if name == "Any":
            ranges: Ranges = ((0, MAX_RUNE),)
        elif name == "Ascii":
            ranges = ((0, 0x7F),)
        elif len(name) == 1:
            if name not in "CLMNPSZ":
                raise self.error("invalid character class range")
            ranges = _unicode_category(name)
        elif name.isalpha():  # a script, a two-letter category or an alias: only reachable with \p{…}
            raise GoRegexpUnsupported("Unicode classes other than one-letter categories")
        else:
            raise self.error("invalid character class range")
        return _group_ranges((sign, ranges))

    def parse_escape(self) -> int:
        s = self.s
        self.i += 1  # the backslash
        if self.i >= len(s):
            raise self.error("trailing backslash at end of expression")
        c = chr(self.next_rune())
        if c < "\x80" and not c.isalnum():
            return ord(c)
        if c in "1234567" and (self.i >= len(s) or not "0" <= s[self.i] <= "7"):
            raise self.error("invalid escape sequence")  # a back-reference
        if c in "01234567":
            value = int(c)
            for _ in range(2):
                if self.i < len(s) and "0" <= s[self.i] <= "7":
                    value = value * 8 + int(s[self.i])
                    self.i += 1
            return value
        if c == "x":
            return self.parse_hex()
        controls = {"a": 7, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11}
        if c in controls:
            return controls[c]
        raise self.error("invalid escape sequence")

    def parse_hex(self) -> int:
        s = self.s
        if self.i >= len(s):
            raise self.error("invalid escape sequence")
        c = chr(self.next_rune())
        if c == "{":
            value, digits = 0, 0
            while True:
                if self.i >= len(s):
                    raise self.error("invalid escape sequence")
                c = chr(self.next_rune())
                if c == "}":
                    break
                if c not in "0123456789abcdefABCDEF":
                    raise self.error("invalid escape sequence")
                value = value * 16 + int(c, 16)
                if value > MAX_RUNE:
                    raise self.error("invalid escape sequence")
                digits += 1
            if not digits:
                raise self.error("invalid escape sequence")
            return value
        second = chr(self.next_rune()) if self.i < len(s) else ""
        if c not in "0123456789abcdefABCDEF" or not second or second not in "0123456789abcdefABCDEF":
            raise self.error("invalid escape sequence")
        return int(c + second, 16)

    def parse_class_char(self) -> int:
        if self.i >= len(self.s):
            raise self.error("missing closing ]")
        if self.s[self.i] == "\\":
            return self.parse_escape()
        return self.next_rune()

    def parse_class(self) -> list[tuple[int, int]]:
        s = self.s
        self.i += 1  # [
        negated = s.startswith("^", self.i)
        if negated:
            self.i += 1
        ranges: list[tuple[int, int]] = []
        named: dict[Ranges, None] = {}  # each named class once, however often it is written
        first = True
        while self.i >= len(s) or s[self.i] != "]" or first:
            first = False
            if len(s) - self.i > 2 and s.startswith("[:", self.i):
                end = -1 if self.i + 2 >= self.no_posix_close_from else s.find(":]", self.i + 2)
                if end < 0:  # none later either: never search again (a line of "[:" stays linear)
                    self.no_posix_close_from = min(self.no_posix_close_from, self.i + 2)
                if end >= 0:
                    name = s[self.i:end + 2]
                    if name not in _POSIX_GROUPS:
                        raise self.error("invalid character class range")
                    named[_group_ranges(_POSIX_GROUPS[name])] = None
                    self.i = end + 2
                    continue
            unicode_class = self.parse_unicode_class()
            if unicode_class is not None:
                named[unicode_class] = None
                continue
            group = _PERL_GROUPS.get(s[self.i:self.i + 2])
            if group is not None:
                named[_group_ranges(group)] = None
                self.i += 2
                continue
            lo = hi = self.parse_class_char()
            if len(s) - self.i >= 2 and s[self.i] == "-" and s[self.i + 1] != "]":
                self.i += 1
                hi = self.parse_class_char()
                if hi < lo:
                    raise self.error("invalid character class range")
            ranges.append((lo, hi))
        self.i += 1  # ]
        if self.too_large:
            return []  # only the syntax matters now
        for group_ranges in named:
            ranges += group_ranges
        return _negate(ranges) if negated else ranges

def _canonical_name(name: str) -> str:
    """regexp/syntax canonicalName: first letter upper case, the rest lower, no _ - or space."""
    out, first = [], True
    for ch in name:
        if ch in "_- ":
            continue
        if first:
            out.append(ch.upper() if "a" <= ch <= "z" else ch)
            first = False
        else:
            out.append(ch.lower() if "A" <= ch <= "Z" else ch)
    return "".join(out)


def _affixes(top: list[str | None]) -> tuple[str, str]:
    """The literal text right after the leading start anchors, and right before the trailing end
    anchors ("" where there is none): every match starts (ends) with it."""
    def run(atoms: list[str | None], anchor: str) -> str:
        start = 0
        while start < len(atoms) and atoms[start] == anchor:
            start += 1
        if not start:
            return ""
        end = start
        while end < len(atoms) and atoms[end] is not None and len(atoms[end]) == 1:  # type: ignore[arg-type]
            end += 1
        return "".join(atoms[start:end])  # type: ignore[arg-type]

    return run(top, _BEGIN), run(top[::-1], _END)[::-1]


class GoRegexp(Frozen):
    """A Go regular expression, checked as Go's parser checks it and written in RE2 syntax.

    `prefix` / `suffix`: literal text every match begins / ends the subject with ("" when the
    expression says nothing so simple), to index many expressions by.
    """

    source: str  # RE2 syntax
    prefix: str = ""
    suffix: str = ""

    def compile(self) -> Any:
        """The RE2 program (raises RegexpTooComplex past RE2's memory budget)."""
        return compile_re2(self.source)

    def matches(self, text: str) -> bool:
        """Go's MatchString(text) (unanchored), compiling on each call: for one-off use."""
        return re2_search(self.compile(), go_regexp_subject(text).encode())


def compile_go_regexp(source: str) -> GoRegexp:
    """`regexp.Compile(source)`: raises GoRegexpError where Go does, RegexpTooComplex when the
    RE2 text would pass MAX_RE2_SOURCE. The RE2 program itself is made by `.compile()`."""
    parser = _Parser(source)
    translated = parser.parse()
    prefix, suffix = ("", "") if parser.top_alternation else _affixes(parser.top)
    return GoRegexp(translated, prefix, suffix)


@cache
def _re2() -> tuple[Any, Any, Any]:
    """google-re2 (the RE2 library Go's regexp implements), its bare program class (yes/no
    matches at a tenth of the wrapper's cost) and its UNANCHORED: imported when the first
    pattern is compiled, so packing a context without a .dockerignore never loads it."""
    import re2
    from re2 import _re2

    return re2, _re2, _re2.RE2.Anchor.UNANCHORED


def compile_re2(source: str) -> Any:
    """An RE2 program for `source` (RE2 syntax), built for yes/no answers: no capture groups,
    errors raised (RegexpTooComplex) rather than logged."""
    re2, bare, _ = _re2()
    options = re2.Options()
    options.never_capture = True
    options.log_errors = False
    options.max_mem = RE2_MAX_MEM
    program = bare.RE2(source.encode(), options)
    if not program.ok():
        raise RegexpTooComplex(f"RE2: {program.error()}")
    return program


def re2_search(program: Any, subject: bytes) -> bool:
    """Whether the program matches anywhere in `subject` (UTF-8 of go_regexp_subject's text).

    RE2 lets go of the GIL while it matches, and takes time linear in the subject."""
    return program.Match(_re2()[2], subject, 0, len(subject))[0][0] >= 0


def go_regexp_subject(text: str) -> str:
    """The text as Go's regexp sees it: each byte that is not UTF-8 reads as U+FFFD (a path
    decoded with surrogateescape carries such a byte as a lone surrogate)."""
    if "\ud800" <= max(text, default="\x00"):
        return _SURROGATES.sub("\ufffd", text)
    return text

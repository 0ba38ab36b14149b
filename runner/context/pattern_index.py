"""Which of an ignore file's patterns match a path, without trying every pattern on it.

moby/patternmatcher tries each pattern on each path: 39,000 patterns on 20,000 files is most
of a billion tries. Here each distinct pattern is compiled once and indexed by what a path it
matches must start or end with:

* patternmatcher's own shortcuts compare text: an exact pattern (`docs/x.md`) is looked up
  by its text, a prefix pattern (`dir/**`) by its prefix, a suffix pattern (`**/x`) by its
  suffix;
* a regexp pattern by the literal text its Go regexp must begin the path with (`src/` for
  `src/*.py`), else end it with (`.log` for `*.log`); RE2 then decides (linear time);
* a pattern with neither (`*a*`, `**/x*`) is tried on every path.

A path costs one dict lookup per distinct key length (up to its own length) and one RE2 search
per regexp whose literal part fits. Only raw matches come out: which pattern wins (order,
exceptions, parent results) is the matcher's business (runner.context.dockerignore).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from runner.context.gocompat import GoRegexp, GoRegexpError, RegexpTooComplex, compile_go_regexp, compile_re2, go_regexp_subject, re2_search

if TYPE_CHECKING:
    from runner.core.cancel import CancelToken

EXACT, PREFIX, SUFFIX, REGEXP = "exact", "prefix", "suffix", "regexp"
_ESCAPED = frozenset(".+()|{}$")  # regexp metacharacters that mean nothing to filepath.Match
#: estimated bytes of compiled RE2 programs one index keeps; past it the least recently used
#: are dropped and compiled again when needed (a file of Unicode classes, ~130 KiB a pattern,
#: costs time, bounded by the job's timeout, instead of memory)
PROGRAM_BUDGET = 128 * 1024 * 1024
GROUP_CHUNKED = 32  # regexps that share a key (or have none) from which they are tried in chunks


def compile_pattern(cleaned: str) -> tuple[str, str]:
    """patternmatcher's compile: (match type, Go regexp source; "" unless the type is regexp)."""
    chars = list(cleaned)
    if chars[:1] == ["\ufeff"]:
        del chars[0]  # text/scanner skips a byte order mark at the start
    chars = ["\ufffd" if "\udc80" <= ch <= "\udcff" else ch for ch in chars]  # invalid UTF-8 reads as U+FFFD
    regex, kind, j, n = "^", EXACT, 0, len(chars)
    for i in range(n):
        if j >= n:
            break
        ch = chars[j]
        j += 1
        if ch == "*":
            if j < n and chars[j] == "*":
                j += 1
                if j < n and chars[j] == "/":
                    j += 1
                if j >= n:
                    if kind == EXACT:
                        kind = PREFIX
                    else:
                        regex += ".*"
                        kind = REGEXP
                else:
                    regex += "(.*/)?"
                    kind = REGEXP
                if i == 0:
                    kind = SUFFIX
            else:
                regex += "[^/]*"
                kind = REGEXP
        elif ch == "?":
            regex += "[^/]"
            kind = REGEXP
        elif ch in _ESCAPED:
            regex += "\\" + ch
        elif ch == "\\":
            if j < n:
                regex += "\\" + chars[j]
                j += 1
                kind = REGEXP
            else:
                regex += "\\"
        elif ch in "[]":
            regex += ch
            kind = REGEXP
        else:
            regex += ch
    return kind, regex + "$" if kind == REGEXP else ""


def needs_bytes(cleaned: str) -> bool:
    """Docker slices shortcut operands by bytes; str slicing agrees unless the text is not UTF-8 or starts with a BOM."""
    return cleaned.startswith("\ufeff") or any("\udc80" <= ch <= "\udcff" for ch in cleaned)


def match_shortcut_bytes(kind: str, cleaned: str, path: str) -> bool:
    pattern, name = cleaned.encode("utf-8", "surrogateescape"), path.encode("utf-8", "surrogateescape")
    if kind == EXACT:
        return name == pattern
    if kind == PREFIX:
        return name.startswith(pattern[:-2])
    suffix = pattern[2:]
    return name.endswith(suffix) or (suffix[:1] == b"/" and name == suffix[1:])


class _Affixes:
    """Values keyed by text that a looked-up text must start (or end) with: the keys it can hit
    are its own prefixes (suffixes) of the lengths some key has."""

    def __init__(self, suffix: bool) -> None:
        self.suffix = suffix
        self.keys: dict[str, list[int]] = {}
        self.lengths: list[int] = []

    def add(self, key: str, value: int) -> None:
        self.keys.setdefault(key, []).append(value)

    def freeze(self) -> None:
        self.lengths = sorted({len(key) for key in self.keys})

    def lookup_keys(self, text: str) -> Iterator[str]:
        """The keys `text` starts (ends) with."""
        size = len(text)
        for length in self.lengths:
            if length > size:
                return
            key = text[size - length:] if self.suffix else text[:length]
            if key in self.keys:
                yield key

    def lookup(self, text: str) -> Iterator[list[int]]:
        for key in self.lookup_keys(text):
            yield self.keys[key]


ProgramKey = int | tuple[int, int]  # a regexp's number, or (group, chunk) for a chunk of a group


class _Programs:
    """Compiled RE2 programs (a regexp's, or a chunk's: its regexps as alternatives), the least
    recently used dropped past PROGRAM_BUDGET (estimated from each program's size) and compiled
    again when next needed. A chunk too big to compile has no program: its regexps are tried
    one by one."""

    def __init__(self, regexps: list[GoRegexp], budget: int) -> None:
        self.regexps, self.budget = regexps, budget
        self.chunks: list[list[list[int]]] = []  # per group: its chunks of regexp numbers
        self.cached: OrderedDict[ProgramKey, tuple[Any, int]] = OrderedDict()
        self.uncompilable: set[ProgramKey] = set()
        self.used = 0

    def add(self, key: ProgramKey, program: Any) -> None:
        cost = 1536 + 112 * program.ProgramSize()  # measured: ~1.5 KiB a small program, ~115 bytes an instruction
        self.cached[key] = (program, cost)
        self.used += cost
        while self.used > self.budget and len(self.cached) > 1:
            _, (_, dropped) = self.cached.popitem(last=False)
            self.used -= dropped

    def get(self, key: ProgramKey) -> Any | None:
        entry = self.cached.get(key)
        if entry is not None:
            self.cached.move_to_end(key)
            return entry[0]
        if key in self.uncompilable:
            return None
        try:
            if isinstance(key, int):
                program = self.regexps[key].compile()  # compiled once already: cannot fail now
            else:
                group, chunk = key
                program = compile_re2("|".join(f"(?:{self.regexps[n].source})" for n in self.chunks[group][chunk]))
        except RegexpTooComplex:
            self.uncompilable.add(key)
            return None
        self.add(key, program)
        return program


class _Group:
    """Regexps tried on the same paths. Past GROUP_CHUNKED of them, they are tried in chunks of
    about √n first (one RE2 search over a chunk's regexps as alternatives says whether any of
    them matches), then one by one in a chunk that matched: ~2√n searches a path, not n."""

    def __init__(self, numbers: list[int], programs: _Programs) -> None:
        self.numbers, self.programs = numbers, programs
        self.group = -1
        if len(numbers) >= GROUP_CHUNKED:
            width = max(GROUP_CHUNKED // 2, math.isqrt(len(numbers)))
            self.group = len(programs.chunks)
            programs.chunks.append([numbers[start:start + width] for start in range(0, len(numbers), width)])

    def matching(self, data: bytes) -> Iterator[int]:
        programs = self.programs
        if self.group < 0:
            chunks: list[list[int]] = [self.numbers]
        else:
            chunks = [chunk for index, chunk in enumerate(programs.chunks[self.group])
                      if (combined := programs.get((self.group, index))) is None or re2_search(combined, data)]
        for chunk in chunks:
            for number in chunk:
                if re2_search(programs.get(number), data):
                    yield number


class PatternIndex:
    """The raw matches of many cleaned patterns (no "!"), by pattern number.

    A pattern Docker would refuse when it first uses it (Go's regexp rejects it, or it is too
    complex for the runner) matches nothing here and is listed in `broken` with the reason, for
    the matcher to raise when Docker's loop would reach it.
    """

    def __init__(self, patterns: Sequence[str], cancel: CancelToken | None = None, budget: int = PROGRAM_BUDGET) -> None:
        self.broken: dict[int, str] = {}
        self._exact: dict[str, list[int]] = {}
        self._prefixes, self._suffixes = _Affixes(suffix=False), _Affixes(suffix=True)
        self._always: list[int] = []
        self._by_bytes: list[tuple[str, str, list[int]]] = []  # (kind, cleaned, numbers): compared as bytes
        self._regexps: list[GoRegexp] = []
        self._regexp_numbers: list[list[int]] = []  # per regexp: the patterns written that way
        self._regexp_prefixes, self._regexp_suffixes = _Affixes(suffix=False), _Affixes(suffix=True)
        self._regexp_scan: list[int] = []
        self._programs = _Programs(self._regexps, budget)
        self._groups: dict[tuple[bool, str], _Group] = {}  # (suffix?, key) -> the regexps with that key
        same: dict[str, list[int]] = {}
        for number, cleaned in enumerate(patterns):
            same.setdefault(cleaned, []).append(number)
        for cleaned, numbers in same.items():
            if cancel is not None:
                cancel.raise_if_set()  # one pattern may take ~0.3 s (a line of 95 Unicode classes)
            self._add(cleaned, numbers)
        for affixes in (self._prefixes, self._suffixes, self._regexp_prefixes, self._regexp_suffixes):
            affixes.freeze()
        for affixes in (self._regexp_prefixes, self._regexp_suffixes):
            for key, numbers in affixes.keys.items():
                self._groups[affixes.suffix, key] = _Group(numbers, self._programs)
        self._scan = _Group(self._regexp_scan, self._programs)

    def _add(self, cleaned: str, numbers: list[int]) -> None:
        kind, source = compile_pattern(cleaned)
        if kind == REGEXP:
            self._add_regexp(source, numbers)
        elif needs_bytes(cleaned):
            self._by_bytes.append((kind, cleaned, numbers))
        elif kind == EXACT:
            self._exact.setdefault(cleaned, []).extend(numbers)
        elif kind == PREFIX:
            self._add_affix(self._prefixes, cleaned[:-2], numbers)
        else:
            suffix = cleaned[2:]
            self._add_affix(self._suffixes, suffix, numbers)
            if suffix.startswith("/"):  # patternmatcher: `**/x` also matches `x` itself
                self._exact.setdefault(suffix[1:], []).extend(numbers)

    def _add_affix(self, affixes: _Affixes, key: str, numbers: list[int]) -> None:
        if not key:
            self._always.extend(numbers)
            return
        for number in numbers:
            affixes.add(key, number)

    def _add_regexp(self, source: str, numbers: list[int]) -> None:
        try:
            regexp = compile_go_regexp(source)
            regexp.compile()  # to know now that it can be; kept only once a path needs it
        except GoRegexpError:
            self.broken.update(dict.fromkeys(numbers, "syntax error in pattern"))
            return
        except RegexpTooComplex as exc:
            self.broken.update(dict.fromkeys(numbers, f"too complex for the runner to match ({exc})"))
            return
        number = len(self._regexps)
        self._regexps.append(regexp)
        self._regexp_numbers.append(numbers)
        if regexp.prefix:
            self._regexp_prefixes.add(regexp.prefix, number)
        elif regexp.suffix:
            self._regexp_suffixes.add(regexp.suffix, number)
        else:
            self._regexp_scan.append(number)

    def hits(self, path: str) -> list[int]:
        """The numbers of the patterns that match `path` itself (unsorted, no repeats)."""
        found: list[int] = list(self._always)
        found += self._exact.get(path, ())
        for numbers in self._prefixes.lookup(path):
            found += numbers
        for numbers in self._suffixes.lookup(path):
            found += numbers
        for kind, cleaned, numbers in self._by_bytes:
            if match_shortcut_bytes(kind, cleaned, path):
                found += numbers
        if self._regexps:
            subject = go_regexp_subject(path)
            data = subject.encode()
            groups = [self._groups[affixes.suffix, key] for affixes in (self._regexp_prefixes, self._regexp_suffixes)
                      for key in affixes.lookup_keys(subject)]
            for group in (*groups, self._scan):
                for number in group.matching(data):
                    found += self._regexp_numbers[number]
        return found

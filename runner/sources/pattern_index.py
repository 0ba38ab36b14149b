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
exceptions, parent results) is the matcher's business (runner.sources.dockerignore).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from runner.sources.gocompat import GoRegexp, GoRegexpError, RegexpTooComplex, compile_go_regexp, go_regexp_subject, re2_search

if TYPE_CHECKING:
    from runner.core.cancel import CancelToken

EXACT, PREFIX, SUFFIX, REGEXP = "exact", "prefix", "suffix", "regexp"
_ESCAPED = frozenset(".+()|{}$")  # regexp metacharacters that mean nothing to filepath.Match
#: estimated bytes of compiled RE2 programs one index keeps; past it the least recently used
#: are dropped and compiled again when needed (a file of Unicode classes, ~130 KiB a pattern,
#: costs time, bounded by the job's timeout, instead of memory)
PROGRAM_BUDGET = 128 * 1024 * 1024
_CANCEL_EVERY = 64  # patterns compiled between two looks at the cancel token


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

    def lookup(self, text: str) -> Iterator[list[int]]:
        size = len(text)
        for length in self.lengths:
            if length > size:
                return
            found = self.keys.get(text[size - length:] if self.suffix else text[:length])
            if found is not None:
                yield found


class _Programs:
    """Compiled RE2 programs by regexp number, the least recently used dropped past
    PROGRAM_BUDGET (estimated from each program's size) and compiled again when needed."""

    def __init__(self, regexps: list[GoRegexp], budget: int) -> None:
        self.regexps, self.budget = regexps, budget
        self.cached: OrderedDict[int, tuple[Any, int]] = OrderedDict()
        self.used = 0

    def add(self, number: int, program: Any) -> None:
        cost = 1536 + 112 * program.ProgramSize()  # measured: ~1.5 KiB a small program, ~115 bytes an instruction
        self.cached[number] = (program, cost)
        self.used += cost
        while self.used > self.budget and len(self.cached) > 1:
            _, (_, dropped) = self.cached.popitem(last=False)
            self.used -= dropped

    def get(self, number: int) -> Any:
        entry = self.cached.get(number)
        if entry is not None:
            self.cached.move_to_end(number)
            return entry[0]
        program = self.regexps[number].compile()  # compiled once already: cannot fail now
        self.add(number, program)
        return program


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
        same: dict[str, list[int]] = {}
        for number, cleaned in enumerate(patterns):
            same.setdefault(cleaned, []).append(number)
        for count, (cleaned, numbers) in enumerate(same.items()):
            if cancel is not None and count % _CANCEL_EVERY == 0:
                cancel.raise_if_set()
            self._add(cleaned, numbers)
        for affixes in (self._prefixes, self._suffixes, self._regexp_prefixes, self._regexp_suffixes):
            affixes.freeze()

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
            program = regexp.compile()
        except GoRegexpError:
            self.broken.update(dict.fromkeys(numbers, "syntax error in pattern"))
            return
        except RegexpTooComplex as exc:
            self.broken.update(dict.fromkeys(numbers, f"too complex for the runner to match ({exc})"))
            return
        number = len(self._regexps)
        self._regexps.append(regexp)
        self._regexp_numbers.append(numbers)
        self._programs.add(number, program)
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
            for regexps in (*self._regexp_prefixes.lookup(subject), *self._regexp_suffixes.lookup(subject), self._regexp_scan):
                for number in regexps:
                    if re2_search(self._programs.get(number), data):
                        found += self._regexp_numbers[number]
        return found

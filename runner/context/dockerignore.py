"""`.dockerignore` exactly as `docker build` with BuildKit applies it when it sends a context.

Three parts, each a port of the code Docker runs:

* the file reader: moby/patternmatcher/ignorefile `ReadAll` (UTF-8 BOM, `#` comments checked
  before trimming, `!` exceptions, `filepath.Clean`, a leading `/` dropped);
* the pattern language: moby/patternmatcher (`filepath.Match` syntax checks, then `*`, `?`,
  `**`, classes and escapes turned into a Go regular expression, with the exact / prefix /
  suffix shortcuts it takes for simple patterns);
* the walk: tonistiigi/fsutil's filtered walk, as BuildKit sends a local context. A path is
  matched with the match results of its parent directory; an excluded directory is skipped
  whole unless an exception could re-include something inside it, and an excluded directory
  is sent only when something inside it is.

Docker also always sends the Dockerfile it was given and the ignore file, whatever the
patterns say (BuildKit reads them through their own channel); `select_context` adds those and
says which entries are there only for that reason, so that `COPY .` can leave them out.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from runner.context.gocompat import BadPattern, go_clean, go_match, go_trim_space
from runner.context.ignore_limits import IgnoreLimits
from runner.context.pattern_index import PatternIndex
from runner.core.errors import InvalidJob
from runner.core.frozen import Frozen

if TYPE_CHECKING:
    from runner.context.limits import ContextLimits
    from runner.core.cancel import CancelToken

IGNORE_FILE = ".dockerignore"
#: bufio.Scanner's default limit: a longer line makes Docker fail with "token too long"
MAX_LINE_BYTES = 64 * 1024 - 1
_GLOB_CHARS = "*[]?^\\"  # fsutil: an exception with one of these may re-include anything
_BOM = b"\xef\xbb\xbf"


class DockerignoreError(InvalidJob):
    """A malformed ignore file: Docker refuses the build, so the runner refuses the job."""

    def __init__(self, reason: str, *, line: int | None = None, pattern: str | None = None, file: str = IGNORE_FILE) -> None:
        where = f"{file} line {line}" if line is not None else file
        what = f" {pattern!r}:" if pattern is not None else ""
        super().__init__(f"{where}:{what} {reason}")
        self.file, self.line, self.pattern, self.reason = file, line, pattern, reason


# -- the file reader ---------------------------------------------------------------------------
class IgnoreLine(Frozen):
    """One pattern as ReadAll returns it, with the line it came from."""

    pattern: str  # e.g. "!foo/bar", cleaned
    line: int  # 1-based line number in the file
    text: str  # the line as written, trimmed, for messages
    file: str = IGNORE_FILE


def check_ignore_size(size: int, file: str, limits: ContextLimits | IgnoreLimits) -> None:
    """Refuse an ignore file over limits.max_ignore_file_bytes, before it is read."""
    if size > limits.max_ignore_file_bytes:
        raise DockerignoreError(f"is {size:,} bytes, over the limit of {limits.max_ignore_file_bytes:,} bytes "
                                "(limits.max_ignore_file_bytes)", file=file)


def read_ignore_lines(data: bytes, file: str = IGNORE_FILE, max_patterns: int | None = None) -> list[IgnoreLine]:
    """Port of ignorefile.ReadAll, keeping line numbers (for errors) beside the patterns.

    More than `max_patterns` patterns (limits.max_ignore_patterns) refuse the file, naming how many it holds.
    """
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # bufio.ScanLines: no empty token after a final newline
    out: list[IgnoreLine] = []
    count = 0
    for number, raw in enumerate(lines, start=1):
        if len(raw) > MAX_LINE_BYTES:  # counting a BOM and a trailing CR, as bufio.Scanner does
            raise DockerignoreError(f"line is longer than {MAX_LINE_BYTES} bytes (Docker: \"bufio.Scanner: token too long\")",
                                    line=number, file=file)
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if number == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM):]
        text = raw.decode("utf-8", "surrogateescape")
        if text.startswith("#"):
            continue  # a comment only when # is the very first character
        text = go_trim_space(text)
        if not text:
            continue
        pattern = text
        invert = pattern.startswith("!")
        if invert:
            pattern = go_trim_space(pattern[1:])
        count += 1
        if max_patterns is not None and count > max_patterns:
            continue  # only counted from here on, for the message
        if pattern:
            pattern = go_clean(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        out.append(IgnoreLine(("!" if invert else "") + pattern, number, text, file))
    if max_patterns is not None and count > max_patterns:
        raise DockerignoreError(f"holds {count:,} patterns, over the limit of {max_patterns:,} (limits.max_ignore_patterns)", file=file)
    return out


# -- patterns ----------------------------------------------------------------------------------
class Pattern(Frozen):
    """One pattern of a PatternMatcher."""

    cleaned: str  # without the leading "!"
    exclusion: bool
    source: IgnoreLine | None = None


def _bad(source: IgnoreLine | None, pattern: str, reason: str) -> DockerignoreError:
    if source is None:
        return DockerignoreError(reason, pattern=pattern)
    return DockerignoreError(reason, line=source.line, pattern=source.text, file=source.file)


#: a directory's match results, passed down to what is inside it: bit i set when pattern i
#: matched it (or its parent). `()` means none known (the path's parents are then matched too).
MatchInfo = int
ParentInfo = int | tuple[()]


class PatternMatcher:
    """Port of patternmatcher.PatternMatcher (New, MatchesOrParentMatches, MatchesUsingParentResults).

    Docker tries every pattern in order on every path. This matcher gets the same answers from
    the few patterns that match at all (runner.context.pattern_index), so a path costs about
    the same with 10 patterns or 40,000; `cancel` is checked while the patterns compile.
    """

    def __init__(self, patterns: Iterable[str | IgnoreLine], cancel: CancelToken | None = None) -> None:
        self.patterns: list[Pattern] = []
        self.exclusions = False
        for item in patterns:
            if cancel is not None:
                cancel.raise_if_set()
            source = item if isinstance(item, IgnoreLine) else None
            text = go_trim_space(item.pattern if isinstance(item, IgnoreLine) else item)
            if not text:
                continue
            text = go_clean(text)
            exclusion = text.startswith("!")
            if exclusion:
                if len(text) == 1:
                    raise _bad(source, text, 'illegal exclusion pattern: "!"')
                text = text[1:]
                self.exclusions = True
            try:
                go_match(text, ".")  # Docker checks the syntax with filepath.Match
            except BadPattern:
                raise _bad(source, text, "syntax error in pattern") from None
            self.patterns.append(Pattern(text, exclusion, source))
        exceptions = [_without_trailing_glob(p.cleaned) for p in self.patterns if p.exclusion]
        self._exception_dirs = [text + "/" for text in exceptions]
        self._glob_exception = any(ch in _GLOB_CHARS for text in exceptions for ch in text)
        self._index = PatternIndex([p.cleaned for p in self.patterns], cancel)
        self._exclusion = [p.exclusion for p in self.patterns]
        self._broken = sorted(self._index.broken)

    def matches_or_parent_matches(self, path: str) -> bool:
        return self.matches_using_parent_results(path)[0]

    def matches_using_parent_results(self, path: str, parent: ParentInfo = ()) -> tuple[bool, MatchInfo]:
        """Whether `path` is excluded, given its parent directory's match info (`()`: none known).

        Docker's loop: pattern by pattern, an exception is tried only while the path is
        excluded, any other pattern only while it is not, and a pattern that matched the parent
        matches. The last one that matches decides. Only patterns that match at all (or cannot
        be used, raising when the loop would try them) can change anything, so only those are
        walked, in order. Faithful to Docker also where it is odd: a pattern skipped for a
        directory does not count as matching it.
        """
        inherited = parent if isinstance(parent, int) else 0
        hits = self._index.hits(path)
        if not isinstance(parent, int):
            parent_dir = _go_dir(path)
            if parent_dir != ".":
                dirs = parent_dir.split("/")
                for k in range(len(dirs)):
                    hits += self._index.hits("/".join(dirs[:k + 1]))
        candidates = sorted(set(hits).union(self._broken)) if self._broken or len(hits) > 1 else hits
        if not candidates:
            decider = inherited.bit_length() - 1
            return decider >= 0 and not self._exclusion[decider], inherited
        exclusion, broken = self._exclusion, self._index.broken
        parents = _bits(inherited)  # the patterns that matched the parent, ascending: each matches here
        fired, last, k = 0, -1, 0  # the patterns that matched here alone; the last that matched so far
        for number in candidates:
            while k < len(parents) and parents[k] <= number:
                last, k = parents[k], k + 1
            if last == number:
                continue
            matched = last >= 0 and not exclusion[last]
            if exclusion[number] != matched:
                continue  # Docker skips it here
            if number in broken:
                pattern = self.patterns[number]
                raise _bad(pattern.source, pattern.cleaned, broken[number])
            fired |= 1 << number
            last = number
        decider = max(last, parents[-1] if parents else -1)
        return decider >= 0 and not exclusion[decider], inherited | fired

    def could_reinclude_inside(self, directory: str) -> bool:
        """fsutil's pruning test: can an exception re-include something inside this excluded directory?"""
        if not self.exclusions:
            return False
        if self._glob_exception:
            return True
        prefix = directory + "/"
        return any(text.startswith(prefix) for text in self._exception_dirs)


def _bits(mask: int) -> list[int]:
    """The positions of the set bits of `mask`, ascending (linear in its size)."""
    digits = bin(mask)[:1:-1]  # least significant first, without "0b"
    out, at = [], digits.find("1")
    while at >= 0:
        out.append(at)
        at = digits.find("1", at + 1)
    return out


def _without_trailing_glob(text: str) -> str:
    text = text.removesuffix("/**")
    return text.removesuffix("/*")


def _go_dir(path: str) -> str:
    """filepath.Dir: everything up to the last slash, cleaned ("a" gives ".", "/" gives "/")."""
    return go_clean(path[:path.rfind("/") + 1])


def read_dockerignore(root: Path, dockerfile: str = "Dockerfile", limits: ContextLimits | IgnoreLimits | None = None) -> tuple[str, list[IgnoreLine]]:
    """The ignore file BuildKit uses (`<Dockerfile>.dockerignore` beside the Dockerfile wins over
    `.dockerignore`) and its patterns. Links are followed inside the context only. A file over
    `limits` (bytes, patterns) is refused before it is matched."""
    limits = limits or IgnoreLimits()
    name = canonical_dockerfile(dockerfile) + IGNORE_FILE
    for candidate in (name, IGNORE_FILE):
        resolved = _resolve_in_root(root, candidate)[-1]
        target = root / resolved
        if target.is_file():
            try:
                with target.open("rb") as handle:
                    check_ignore_size(os.fstat(handle.fileno()).st_size, candidate, limits)
                    data = handle.read(limits.max_ignore_file_bytes + 1)
            except OSError as exc:
                raise DockerignoreError(f"cannot be read ({exc.strerror})", file=candidate) from None
            check_ignore_size(len(data), candidate, limits)  # it grew while being read
            return candidate, read_ignore_lines(data, candidate, limits.max_ignore_patterns)
    return IGNORE_FILE, []


def matcher_for(root: Path, dockerfile: str = "Dockerfile", limits: ContextLimits | IgnoreLimits | None = None) -> PatternMatcher:
    """The context's patterns, checked as Docker checks them (malformed lines raise DockerignoreError)."""
    return PatternMatcher(read_dockerignore(root, dockerfile, limits)[1])


# -- the always-sent files ------------------------------------------------------------------
def canonical_dockerfile(dockerfile: str) -> str:
    """The Dockerfile path relative to the context, cleaned: "./Dockerfile" is "Dockerfile"."""
    path = go_clean(dockerfile.replace(os.sep, "/")).lstrip("/")
    if not path or path in (".", "..") or path.startswith("../"):
        raise InvalidJob(f"the Dockerfile path {dockerfile!r} is not a file inside the build context")
    return path


def _resolve_in_root(root: Path, relative: str) -> list[str]:
    """The paths that following `relative` inside `root` visits: each link met, then the target."""

    def readlink(path: str) -> str | None:
        try:
            return os.readlink(root / path) if stat.S_ISLNK(os.lstat(root / path).st_mode) else None
        except OSError:
            return None

    return follow_links(relative, readlink)


def follow_links(relative: str, readlink: Callable[[str], str | None], hops: int = 40) -> list[str]:
    """The paths that following `relative` inside a context visits: each link met, then the
    target. `readlink(path)` is the target of the symlink at `path`, None if it is not one.

    Like BuildKit's FollowPaths, an absolute link target or a `..` stays inside the context.
    """
    visited: list[str] = []
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    done: list[str] = []
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        current = "/".join([*done, part])
        target = readlink(current) if hops > 0 else None
        if target is not None:
            hops -= 1
            visited.append(current)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        done.append(part)
    visited.append("/".join(done) or ".")
    return visited


def _always_sent(root: Path, dockerfile: str, ignore_file: str) -> set[str]:
    """The Dockerfile and the ignore files, as paths in the context (links and their targets)."""
    paths: set[str] = set()
    for name in {IGNORE_FILE, ignore_file, dockerfile}:
        paths.update(_resolve_in_root(root, name))
    paths.discard(".")
    return paths


# -- the walk ----------------------------------------------------------------------------------
class ContextSelection(Frozen):
    """What `docker build` sends for a local context, in walk order (parents first, names sorted).

    `forced` holds the entries sent only because Docker always sends the Dockerfile and the
    ignore file (and the directories above them): the patterns exclude them, so `COPY .` in
    the build does not see them.
    """

    paths: list[str]
    forced: set[str]
    ignore_file: str

    @property
    def copied(self) -> list[str]:
        return [p for p in self.paths if p not in self.forced]


def select_context(root: Path, dockerfile: str = "Dockerfile", limits: ContextLimits | IgnoreLimits | None = None,
                   cancel: CancelToken | None = None) -> ContextSelection:
    """Walk `root` as BuildKit's file sync does and return what it sends.

    Symbolic links are sent as links, never followed; sockets, FIFOs and devices are left out
    (the runner refuses them). Raises DockerignoreError for a malformed ignore file or one over
    `limits`, and InvalidJob for a directory that cannot be read unless the patterns exclude
    it; Cancelled as soon as `cancel` is set (checked entry by entry).
    """
    root = Path(root)
    if not root.is_dir():
        raise InvalidJob("the build context is not a directory")
    dockerfile = canonical_dockerfile(dockerfile)
    ignore_file, lines = read_dockerignore(root, dockerfile, limits)
    matcher = PatternMatcher(lines, cancel)
    walker = _Walker(root, matcher, _always_sent(root, dockerfile, ignore_file), cancel)
    walker.walk("", [])
    return ContextSelection(walker.out, walker.forced, ignore_file)


def context_paths(root: Path, dockerfile: str = "Dockerfile", limits: ContextLimits | IgnoreLimits | None = None,
                  cancel: CancelToken | None = None) -> list[str]:
    """The relative paths `docker build` sends for `root`, always with the Dockerfile and ignore file."""
    return select_context(root, dockerfile, limits, cancel).paths


class _Dir:
    """A directory of the walk and what became of it."""

    __slots__ = ("path", "info", "excluded", "sent", "forced_only")

    def __init__(self, path: str, info: ParentInfo, excluded: bool, sent: bool = False, forced_only: bool = False):
        self.path, self.info, self.excluded = path, info, excluded
        self.sent = sent
        self.forced_only = forced_only  # sent only because something always sent is inside


class _Walker:
    """fsutil's filtered walk: match each entry with its parent's results, prune what no exception
    can reach, and send an excluded directory only once something inside it is sent."""

    def __init__(self, root: Path, matcher: PatternMatcher, must_send: set[str], cancel: CancelToken | None = None) -> None:
        self.root, self.cancel = root, cancel
        self.matcher = matcher if matcher.patterns else None
        self.must_send = must_send
        self.must_descend = {"/".join(p.split("/")[:k]) for p in must_send for k in range(1, p.count("/") + 1)}
        self.out: list[str] = []
        self.forced: set[str] = set()

    def emit(self, path: str, stack: list[_Dir], forced: bool) -> None:
        """Send `path`, and first every directory above it not sent yet."""
        pending: list[_Dir] = []
        for node in reversed(stack):
            if node.sent and (forced or not node.forced_only):
                break  # everything above is sent already, and as it should be
            pending.append(node)
        for node in reversed(pending):
            if not node.sent:
                node.sent, node.forced_only = True, forced
                self.out.append(node.path)
                if forced:
                    self.forced.add(node.path)
            elif not forced and node.forced_only:
                node.forced_only = False
                self.forced.discard(node.path)
        self.out.append(path)
        if forced:
            self.forced.add(path)

    def walk(self, rel_dir: str, stack: list[_Dir]) -> None:
        try:
            with os.scandir(self.root / rel_dir if rel_dir else self.root) as it:
                entries = list(it)
        except PermissionError:
            if stack and stack[-1].excluded:
                return  # fsutil ignores what it cannot read inside an excluded directory
            raise InvalidJob(f"cannot read {rel_dir or '.'!r} in the build context: permission denied") from None
        names = [e.name for e in entries]
        if any("\udc80" <= ch <= "\udcff" for name in names for ch in name):
            entries.sort(key=lambda e: os.fsencode(e.name))  # Go sorts names as bytes
        else:
            entries.sort(key=lambda e: e.name)  # for valid UTF-8, code point order is byte order
        parent_info = stack[-1].info if stack else ()
        matcher, must_send = self.matcher, self.must_send
        prefix = rel_dir + "/" if rel_dir else ""
        for entry in entries:
            if self.cancel is not None:
                self.cancel.raise_if_set()
            rel = prefix + entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                if not (is_dir or entry.is_symlink() or entry.is_file(follow_symlinks=False)):
                    continue  # sockets, FIFOs, devices
            except FileNotFoundError:
                continue  # removed while walking
            excluded, info = False, parent_info
            if matcher is not None:
                excluded, info = matcher.matches_using_parent_results(rel, parent_info)
            if not excluded:
                self.emit(rel, stack, forced=False)
            elif rel in must_send:
                self.emit(rel, stack, forced=True)
            if not is_dir:
                continue
            node = _Dir(rel, info, excluded, sent=not excluded or rel in must_send, forced_only=excluded)
            if excluded and rel not in self.must_descend and not matcher.could_reinclude_inside(rel):  # type: ignore[union-attr]
                continue
            stack.append(node)
            self.walk(rel, stack)
            stack.pop()


def is_excluded(path: str, patterns: Sequence[str | IgnoreLine]) -> bool:
    """Whether Docker leaves `path` out, evaluated without a walk (its parents matched as in the walk)."""
    matcher = PatternMatcher(patterns)
    info: ParentInfo = ()
    parts = path.split("/")
    excluded = False
    for k in range(len(parts)):
        excluded, info = matcher.matches_using_parent_results("/".join(parts[:k + 1]), info)
    return excluded

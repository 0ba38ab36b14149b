"""What `COPY .` sees of a context tar: its own ignore file applied member by member.

An engine (BuildKit) re-applies `.dockerignore` from the tar it is given; a tool that reads an
unpacked folder (buildah, img) would apply it with its own rules, or not at all. So the spool
reads the tar's ignore file (`<Dockerfile>.dockerignore` beside the Dockerfile, else
`.dockerignore`; links followed inside the context) while it streams, refuses a malformed one
there with Docker's words, and hands the extractor a `CopyFilter`: for each member, the
decision BuildKit's walk (runner.context.dockerignore) makes for that path. What Docker sends
only because it always sends the Dockerfile and the ignore file is left out of the context.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runner.context.dockerignore import (
    IGNORE_FILE,
    DockerignoreError,
    IgnoreLine,
    ParentInfo,
    PatternMatcher,
    check_ignore_size,
    follow_links,
    read_ignore_lines,
)
from runner.context.extract import Placement
from runner.context.limits import ContextLimits
from runner.context.tarpolicy import member_parts
from runner.context.tarstream import TarReader

if TYPE_CHECKING:
    from runner.core.cancel import CancelToken

#: symlink names and targets remembered while spooling, to follow a linked ignore file
MAX_LINK_BYTES = 1024 * 1024
_MAX_HOPS = 8  # hard links followed when reading a linked ignore file (each costs a pass)
_DIR_CACHE = 4096  # folders whose match results are kept (tars list a folder's entries together)


@dataclass(frozen=True)
class TooBig:
    """Stands for the content of a file over limits.max_ignore_file_bytes (not kept)."""

    size: int


#: a member as remembered: (kind, content for a file (bytes or TooBig), target for a link)
Seen = tuple[str, object]
#: the spooled canonical tar's bytes, read from its start each time it is called
TarBytes = Callable[[], Generator[bytes, None, None]]


class PathSet:
    """A set of context paths kept as keyed 16-byte digests: memory does not grow with the
    length of the names, and nobody can aim a collision at a key they never see."""

    def __init__(self) -> None:
        self._key = os.urandom(16)
        self._items: set[bytes] = set()

    def _digest(self, path: str) -> bytes:
        return hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=16, key=self._key).digest()

    def add(self, path: str) -> None:
        self._items.add(self._digest(path))

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and self._digest(path) in self._items


class IgnoreFiles:
    """Watches the members streaming through the spool for the two possible ignore files
    (capturing their content, bounded) and remembers symlinks, so `read()` can pick the one
    BuildKit uses without reading the tar again, except when it is reached through a link.
    Also notes which paths a hard link names (their data may be needed where they are ignored)."""

    def __init__(self, dockerfile: str, limits: ContextLimits | None = None):
        self.limits = limits or ContextLimits()
        self.candidates = ("/".join(member_parts(dockerfile)) + IGNORE_FILE, IGNORE_FILE)
        self.seen: dict[str, Seen] = {}
        self.links: dict[str, str] = {}
        self._link_bytes = 0
        self.links_complete = True
        self.hardlinked = PathSet()

    def observe(self, name: str, kind: str, target: str, data: Iterable[memoryview]) -> Iterable[memoryview]:
        """Note one accepted member (canonical name); returns its data, captured on the way if wanted."""
        if kind == "hardlink":
            self.hardlinked.add(target)
        if kind == "symlink" and self.links_complete:
            self._link_bytes += len(name) + len(target)
            if self._link_bytes > MAX_LINK_BYTES:
                self.links, self.links_complete = {}, False
            else:
                self.links[name] = target
        elif kind != "symlink":
            self.links.pop(name, None)
        if name not in self.candidates:
            return data
        if kind == "file":
            return self._capture(name, data)
        self.seen[name] = (kind, target if kind in ("symlink", "hardlink") else None)
        return data

    def _capture(self, name: str, data: Iterable[memoryview]) -> Iterator[memoryview]:
        content, size, cap = bytearray(), 0, self.limits.max_ignore_file_bytes
        for piece in data:
            size += len(piece)
            if size <= cap:
                content += piece
            yield piece
        self.seen[name] = ("file", bytes(content) if size <= cap else TooBig(size))

    def read(self, tar: TarBytes, cancel: CancelToken | None = None) -> tuple[str, list[IgnoreLine]]:
        """The ignore file BuildKit uses and its lines (none: `.dockerignore`, no lines); `tar`
        reads the spooled tar again, for an ignore file reached through a link."""
        for name in self.candidates:
            content = self._content(name, tar, cancel)
            if content is not None:
                return name, read_ignore_lines(content, name, self.limits.max_ignore_patterns)
        return IGNORE_FILE, []

    def _content(self, name: str, tar: TarBytes, cancel: CancelToken | None) -> bytes | None:
        """The content of the regular file at `name` (links followed), None if there is none."""
        seen = self.seen.get(name)
        if seen is not None and seen[0] == "symlink":
            if not self.links_complete:
                raise DockerignoreError(f"is a symbolic link, and the context holds more symbolic links than the runner "
                                        f"follows ({MAX_LINK_BYTES:,} bytes of them); replace it with a file", file=name)
            name = follow_links(name, self.links.get)[-1]
            seen = self.seen.get(name) or self._member(tar, name, cancel)
        for _ in range(_MAX_HOPS):
            if seen is None or seen[0] != "hardlink":
                break
            seen = self._member(tar, str(seen[1]), cancel)
        if seen is None or seen[0] != "file":
            return None
        if isinstance(seen[1], TooBig):
            check_ignore_size(seen[1].size, name, self.limits)
        return seen[1] if isinstance(seen[1], bytes) else None

    def _member(self, tar: TarBytes, name: str, cancel: CancelToken | None) -> Seen | None:
        """What the canonical tar holds at `name` (its last member there), read in one pass."""
        return _member(tar, name, cancel, self.limits.max_ignore_file_bytes)


def _member(tar: TarBytes, name: str, cancel: CancelToken | None, max_bytes: int) -> Seen | None:
    found: Seen | None = None
    with closing(tar()) as chunks:
        reader = TarReader(chunks, cancel=cancel)
        for member in reader.members():
            if "/".join(member_parts(member.name)) != name:
                continue
            if member.kind == "file":
                data = b"".join(bytes(p) for p in reader.data()) if member.size <= max_bytes else TooBig(member.size)
                found = ("file", data)
            else:
                found = (member.kind, member.linkname or None)
    return found


class CopyFilter:
    """Places each member of a context tar as `COPY .` sees it (a runner.context.extract.MemberFilter).

    A path is excluded exactly as BuildKit's walk decides it: matched with its parent folder's
    match results, and everything below a folder the walk would not enter (excluded, with no
    exception that could re-include something inside) is excluded too. An excluded folder is in
    the context only if something inside it is. The Dockerfile always goes aside as well.
    """

    def __init__(self, lines: list[IgnoreLine], dockerfile: str, cancel: CancelToken | None = None):
        self.matcher = PatternMatcher(lines, cancel)  # a malformed pattern raises DockerignoreError here
        self.active = bool(self.matcher.patterns)
        self.dockerfile = "/".join(member_parts(dockerfile))
        self._dirs: dict[str, tuple[ParentInfo, bool]] = {}  # folder -> (match info, nothing below is sent)

    def _folder(self, path: str) -> tuple[ParentInfo, bool]:
        known = self._dirs.get(path)
        if known is not None:
            return known
        parts = path.split("/")
        depth = len(parts) - 1
        while depth > 0 and "/".join(parts[:depth]) not in self._dirs:
            depth -= 1
        info, pruned = self._dirs["/".join(parts[:depth])] if depth else ((), False)
        if len(self._dirs) >= _DIR_CACHE:
            self._dirs.clear()
        for end in range(depth + 1, len(parts) + 1):
            folder = "/".join(parts[:end])
            if not pruned:
                excluded, info = self.matcher.matches_using_parent_results(folder, info)
                pruned = excluded and not self.matcher.could_reinclude_inside(folder)
            self._dirs[folder] = (info, pruned)
        return info, pruned

    def excluded(self, path: str) -> bool:
        if not self.active:
            return False
        parent = path.rpartition("/")[0]
        info, pruned = self._folder(parent) if parent else ((), False)
        return pruned or self.matcher.matches_using_parent_results(path, info)[0]

    def __call__(self, path: str, kind: str) -> Placement:
        excluded = self.excluded(path)
        if path == self.dockerfile:
            return Placement.ASIDE if excluded else Placement.BOTH
        if not excluded:
            return Placement.CONTEXT
        return Placement.IF_USED if kind == "dir" else Placement.ASIDE


def copy_filter(ignore: IgnoreFiles, tar: TarBytes, dockerfile: str, cancel: CancelToken | None = None) -> CopyFilter:
    """The filter for a spooled context (`tar` reads its canonical tar); raises DockerignoreError
    (an InvalidJob) for a malformed or unreadable ignore file, naming the file and line, or one
    over the limits (limits.max_ignore_file_bytes, limits.max_ignore_patterns), naming the limit."""
    _, lines = ignore.read(tar, cancel)
    return CopyFilter(lines, dockerfile, cancel)


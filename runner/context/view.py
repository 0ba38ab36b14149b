"""What `COPY .` sees of a context, decided once, by the spool: the view.

The tar every executor gets holds what `COPY .` sees in `docker build`, plus the Dockerfile (an
engine reads it from the tar, and applies no ignore file itself). Unpacking it for buildah and
img takes that tar as it is: only the Dockerfile and the folders above it have a place of their
own (`view_placement`); the patterns are not matched a second time.

The spool writes the view in its one pass over the upload when the ignore file comes first
(after only the folders above it), as in every tar that `runner submit`, the API client and git
contexts pack (runner.context.pack): each member goes to the tar or, left out, to a side file
(`StreamingView`). Which ignore file applies is certain only at the end of the tar, so when it
turns out to be another one (the Dockerfile's own coming later, a later member replacing it), or
a kept hard link names a member left out, the members are read back from the two files in their
first order (`Spans`) and the view is written from them (`write_copy_view`), as for a tar whose
ignore file comes later.
"""

from __future__ import annotations

import shutil
from array import array
from collections.abc import Generator, Iterable
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from runner.context.copy_filter import CopyFilter, IgnoreFiles, PathSet, TarBytes
from runner.context.dockerignore import read_ignore_lines
from runner.context.extract import MemberFilter, Placement
from runner.context.limits import ContextLimits
from runner.context.tarpolicy import member_parts
from runner.context.tarstream import PIECE, Member, TarReader, file_chunks
from runner.core.errors import InvalidJob

if TYPE_CHECKING:
    from runner.core.cancel import CancelToken

MAIN, SIDE = 0, 1  # the files a member of the first pass went to: the tar, the side file
_END_OF_ARCHIVE = bytes(1024)


class TarSink(Protocol):
    """Where members are written (runner.context.spool.CanonicalTar)."""

    size: int

    def add(self, member: Member, name: str, target: str, data: Iterable[memoryview] = ()) -> None: ...


class Spans:
    """Where the first pass wrote each member, in the upload's order: byte ranges of the tar
    (MAIN) or of the side file (SIDE), neighbours merged. Read back, they are the canonical tar."""

    def __init__(self) -> None:
        self.files = bytearray()
        self.starts, self.ends = array("q"), array("q")

    def add(self, file: int, start: int, end: int) -> None:
        if self.files and self.files[-1] == file and self.ends[-1] == start:
            self.ends[-1] = end
        else:
            self.files.append(file)
            self.starts.append(start)
            self.ends.append(end)

    def chunks(self, paths: tuple[Path, Path]) -> Generator[bytes, None, None]:
        """The canonical tar: each span of `paths` (MAIN's, SIDE's) in order, then the end blocks."""
        handles: dict[int, BinaryIO] = {}
        try:
            for file, start, end in zip(self.files, self.starts, self.ends, strict=True):
                if file not in handles:
                    handles[file] = paths[file].open("rb")
                handle = handles[file]
                handle.seek(start)
                left = end - start
                while left:
                    piece = handle.read(min(left, PIECE))
                    if not piece:  # the file shrank under us: the reader reports a truncated tar
                        return
                    left -= len(piece)
                    yield piece
            yield _END_OF_ARCHIVE
        finally:
            for handle in handles.values():
                handle.close()


def early_filter(name: str, content: bytes, dockerfile: str, limits: ContextLimits,
                 cancel: CancelToken | None = None) -> CopyFilter | None:
    """The filter of the ignore file met first (`name`, its whole `content`) if it has patterns;
    None if it has none or is refused (the end of the spool decides then, and reports it)."""
    try:
        place = CopyFilter(read_ignore_lines(content, name, limits.max_ignore_patterns), dockerfile, cancel)
    except InvalidJob:  # DockerignoreError: malformed or over the limits, unless another file applies
        return None
    return place if place.active else None


class StreamingView:
    """The view written while the tar streams, from the ignore file met first (`ignore`: its
    name and content): what `COPY .` sees and the Dockerfile go to `out`, every other member
    to `side`, and `spans` records where each went. `written`: the folders above the ignore
    file, written to `out` before it."""

    def __init__(self, place: CopyFilter, ignore: tuple[str, bytes], out: TarSink, side: TarSink, spans: Spans,
                 written: Iterable[str] = ()):
        self.place, self.ignore = place, ignore
        self.out, self.side, self.spans = out, side, spans
        self.folders = HeldFolders(written)  # excluded folders (in `side`) go to `out` once something inside them does
        self.whole = True

    def add(self, member: Member, name: str, target: str, data: Iterable[memoryview]) -> bool:
        """Write one accepted member where the view puts it. False, with nothing written, when the
        view cannot be kept as the tar streams (a kept hard link to a member left out): the
        caller writes the rest as it comes, and the view is written at the end."""
        place = self.place
        where = place(name, member.kind)
        if where is Placement.IF_USED and member.kind == "dir":
            if name in self.folders.used:
                self._write(MAIN, member, name, target, data)
            else:
                self.folders.hold(name, member)
                self._write(SIDE, member, name, target, data)
            return True
        if where in (Placement.ASIDE, Placement.IF_USED) and name != place.dockerfile:
            self._write(SIDE, member, name, target, data)
            return True
        if member.kind == "hardlink" and self._left_out(target):
            self.whole = False
            return False
        self.folders.write_above(self.out, name)
        self._write(MAIN, member, name, target, data)
        return True

    def _left_out(self, path: str) -> bool:
        return self.place(path, "file") in (Placement.ASIDE, Placement.IF_USED) and path != self.place.dockerfile

    def _write(self, file: int, member: Member, name: str, target: str, data: Iterable[memoryview]) -> None:
        tar = self.out if file == MAIN else self.side
        start = tar.size
        tar.add(member, name, target, data)
        self.spans.add(file, start, tar.size)

    def confirmed(self, ignore: IgnoreFiles) -> bool:
        """Whether the whole tar, now read, applies the same ignore file: then `out` is the view."""
        name, content = self.ignore
        first = ignore.candidates[0]
        return self.whole and ignore.seen.get(name) == ("file", content) and (name == first or first not in ignore.seen)


def write_copy_view(source: TarBytes, view: TarSink, place: CopyFilter, hardlinked: PathSet, stash: Path,
                    cancel: CancelToken | None = None) -> None:
    """Write the canonical tar that `source` reads into `view` as what `COPY .` sees: the
    members `place` leaves out are dropped, except the Dockerfile; an excluded folder is kept
    (before its content) only if something inside it is; a kept hard link to a dropped file
    becomes that file (its data kept in the folder `stash` meanwhile, removed at the end)."""
    folders = HeldFolders()
    stashed: dict[str, tuple[Path, Member]] = {}  # dropped files a hard link names: their data
    relinked: dict[str, str] = {}  # such a file -> the first link written (as a regular file)
    try:
        with closing(source()) as chunks:
            reader = TarReader(chunks, cancel=cancel)
            for member in reader.members():
                name = "/".join(member_parts(member.name))
                where = place(name, member.kind)
                if where is Placement.IF_USED and member.kind == "dir":
                    if name in folders.used:
                        view.add(member, name, "")
                    else:
                        folders.hold(name, member)
                    continue
                if where in (Placement.ASIDE, Placement.IF_USED) and name != place.dockerfile:
                    if member.kind == "file" and name in hardlinked:
                        stashed[name] = (_stash(stash, len(stashed), reader.data()), member)
                    continue
                folders.write_above(view, name)
                if member.kind == "hardlink" and member.linkname in stashed:
                    if member.linkname in relinked:
                        view.add(member, name, relinked[member.linkname])
                    else:
                        data, source_member = stashed[member.linkname]
                        copied = Member(name, "file", source_member.size, source_member.mode, source_member.mtime)
                        with closing(file_chunks(data)) as pieces:
                            view.add(copied, name, "", (memoryview(p) for p in pieces))
                        relinked[member.linkname] = name
                else:
                    view.add(member, name, member.linkname, reader.data() if member.kind == "file" else ())
    finally:
        shutil.rmtree(stash, ignore_errors=True)


class HeldFolders:
    """Folders the patterns exclude, held back until something inside them is written (an
    excluded folder is in the view only then, before its content), and the folders something
    was written inside."""

    def __init__(self, used: Iterable[str] = ()):
        self.pending: dict[str, Member] = {}
        self.used = PathSet()
        for folder in used:
            self.used.add(folder)
        self._last: str | None = None  # the folder the last member written was in: done already

    def hold(self, name: str, member: Member) -> None:
        self.pending[name] = member

    def write_above(self, view: TarSink, name: str) -> None:
        """Before `name` is written: the held folders above it, and every folder above it noted as used.
        (A folder held after the last member in `name`'s folder was written cannot be above it:
        that member made every folder above it used.)"""
        parent = name.rpartition("/")[0]
        if parent == self._last:
            return
        parts = name.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if self.pending:
                member = self.pending.pop(folder, None)
                if member is not None:
                    view.add(member, folder, "")
            self.used.add(folder)
        self._last = parent


def _stash(folder: Path, index: int, data: Iterable[memoryview]) -> Path:
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / str(index)
    with path.open("wb") as out:
        for piece in data:
            out.write(piece)
    return path


def view_placement(place: CopyFilter) -> MemberFilter:
    """Where each member of the view goes when it is unpacked: all of it is what `COPY .` sees,
    but the Dockerfile (also, or only, aside) and the folders above it (in the context only if
    something else there is, when the patterns exclude them): their places are the filter's,
    asked for those few paths only."""
    parts = place.dockerfile.split("/")
    own = {"/".join(parts[:depth]) for depth in range(1, len(parts) + 1)}

    def placement(path: str, kind: str) -> Placement:
        return place(path, kind) if path in own else Placement.CONTEXT

    return placement

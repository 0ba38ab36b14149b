"""Spooling a stored context on the worker: the tar (from Redis chunks or a packed checkout)
streamed through our own reader (runner.context.tarstream) and the lexical rules
(runner.context.tarpolicy), and written again as a canonical tar of only the accepted members,
so every executor gets exactly what was checked.

The tar's own ignore file is read on the way (runner.context.copy_filter), and the tar written
holds only what `COPY .` sees in `docker build` (plus the Dockerfile, which an engine reads from
the tar): an engine given a tar applies no ignore file, and the CLI's tar still holds the
ignore file and Dockerfile Docker always sends. That view is written as the upload streams when
its ignore file comes first, else once more at the end (runner.context.view); a tool that
builds from an unpacked folder gets the same view, unpacked as it is."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tarfile
from collections.abc import Iterable
from pathlib import Path

from runner.context.build_context import BuildContext
from runner.context.copy_filter import CopyFilter, IgnoreFiles, TarBytes, copy_filter
from runner.context.extract import make_private, workspace_error
from runner.context.limits import ContextLimits
from runner.context.tarpolicy import hardlink_target, member_parts, symlink_target
from runner.context.tarstream import Member, TarError, TarLimitError, TarLimits, TarReader, file_chunks, shown
from runner.context.view import MAIN, Spans, StreamingView, early_filter, view_placement, write_copy_view
from runner.core.cancel import CancelToken
from runner.core.errors import InvalidJob

#: which setting each tar limit comes from, for messages
LIMIT_SETTINGS = {"bytes": "limits.max_context_bytes", "upload": "limits.max_context_bytes",
                  "members": "limits.max_context_files", "path": "limits.max_context_path_bytes",
                  "link": "limits.max_context_path_bytes", "header": "limits.max_context_header_bytes"}
_TAR_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}
_DIR, _SYMLINK = b"d", b"l"
#: a Dockerfile up to this size is kept in memory as the spool writes it (its FROM lines are read
#: before the build: runner.supply.inputs); a larger one is read from the tar when needed
MAX_KEPT_DOCKERFILE = 1024**2


def tar_limits(limits: ContextLimits) -> TarLimits:
    return TarLimits(max_bytes=limits.max_context_bytes, max_upload_bytes=limits.max_context_bytes,
                     max_members=limits.max_context_files, max_path_bytes=limits.max_context_path_bytes,
                     max_link_bytes=limits.max_context_path_bytes, max_header_bytes=limits.max_context_header_bytes)


class ContextChecker:
    """Decides each member lexically (runner.context.tarpolicy) and remembers which paths the archive
    made folders or symlinks, so a member below a symlink, or a non-folder replacing a folder,
    is refused. Paths are kept as keyed 16-byte digests: memory stays ~100 bytes per folder or
    symlink however long the names are, and nobody can aim a collision at a key they never see."""

    def __init__(self, dockerfile: str):
        self._key = os.urandom(16)
        self._made: dict[bytes, bytes] = {}
        self._dockerfile = member_parts(dockerfile)
        self.found_dockerfile = False

    def _digests(self, parts: tuple[str, ...]) -> list[bytes]:
        """Digests of every prefix of `parts`, the whole path last (linear in the path length)."""
        h = hashlib.blake2b(digest_size=16, key=self._key)
        out = []
        for part in parts:
            h.update(part.encode("utf-8", "surrogateescape") + b"\0")
            out.append(h.copy().digest())
        return out

    def _below_symlink(self, parts: tuple[str, ...], digests: list[bytes]) -> str | None:
        for i, digest in enumerate(digests[:-1]):
            if self._made.get(digest) == _SYMLINK:
                return "/".join(parts[: i + 1])
        return None

    def accept(self, member: Member) -> tuple[str, str] | None:
        """(canonical name, canonical link target) for the member, None for the root folder
        itself; raises InvalidJob naming the member when it is refused."""
        parts = member_parts(member.name)
        if not parts:
            if member.kind != "dir":
                raise InvalidJob(f"context tar member {shown(member.name)} would replace the context's root folder")
            return None
        digests = self._digests(parts)
        link = self._below_symlink(parts, digests)
        if link is not None:
            raise InvalidJob(f"context tar member {shown(member.name)} is inside {shown(link)}, which the archive "
                             "made a symlink; a member may not be written through a link")
        here = self._made.get(digests[-1])
        if here == _DIR and member.kind != "dir":
            raise InvalidJob(f"context tar member {shown(member.name)} would replace a folder with a {member.kind}")
        target = ""
        if member.kind == "symlink":
            target = symlink_target(member, parts)
        elif member.kind == "hardlink":
            target_parts = hardlink_target(member, parts)
            target_digests = self._digests(target_parts)
            what = self._made.get(target_digests[-1])
            if self._below_symlink(target_parts, target_digests) is not None or what is not None:
                kind = "to a symlink" if what == _SYMLINK else "to a folder" if what == _DIR else "through a symlink"
                raise InvalidJob(f"context tar member {shown(member.name)} is a hard link {kind}; "
                                 "a hard link must name a regular file")
            target = "/".join(target_parts)
        for digest in digests[:-1]:
            self._made.setdefault(digest, _DIR)
        if member.kind in ("dir", "symlink"):
            self._made[digests[-1]] = _DIR if member.kind == "dir" else _SYMLINK
        elif here is not None:
            del self._made[digests[-1]]
        if parts == self._dockerfile:
            self.found_dockerfile = member.kind in ("file", "hardlink")
        return "/".join(parts), target


_USTAR = struct.Struct("100s8s8s8s12s12s8s1s100s8s32s32s8s8s155s12x")


def ustar_header(member: Member, name: str, target: str) -> bytes | None:
    """The plain ustar header tarfile would write for a simple member, made ~8x faster (the
    2,000,000-member bomb is header after header); None when PAX records are needed."""
    try:
        raw_name = (name + "/" if member.kind == "dir" else name).encode("ascii")
        raw_link = target.encode("ascii")
    except UnicodeEncodeError:
        return None
    mtime = member.mtime
    if (len(raw_name) > 100 or len(raw_link) > 100 or not 0 <= member.size < 8**11
            or not isinstance(mtime, int) or not 0 <= mtime < 8**11):
        return None
    block = bytearray(_USTAR.pack(raw_name, b"%07o\0" % member.mode, b"0000000\0", b"0000000\0",
                                  b"%011o\0" % member.size, b"%011o\0" % mtime, b" " * 8, _TAR_TYPES[member.kind],
                                  raw_link, tarfile.POSIX_MAGIC, b"", b"", b"", b"", b""))
    block[148:155] = b"%06o\0" % sum(block)
    return bytes(block)


class CanonicalTar:
    """The tar every executor gets: only accepted members, normalised names, owner 0:0,
    modes and mtimes as uploaded. Headers are made by tarfile (writing only). Its sha256 is
    taken as it is written: the context's content digest (runner.core.build_inputs). So is a
    second one, `files_digest`, over what a builder's layer cache compares: each member's name,
    kind, mode, size, link target and bytes, but not its mtime (BuildKit's content hash and the
    classic builder's tarsum leave mtimes out; a git checkout's mtimes are the time of the clone,
    so two clones of one commit differ only there)."""

    def __init__(self, path: Path):
        self._out = path.open("wb", buffering=1024 * 1024)
        self._sha256 = hashlib.sha256()
        self._files = hashlib.sha256()
        self.size = 0

    def _write(self, data: bytes | memoryview) -> None:
        self._out.write(data)
        self._sha256.update(data)

    def add(self, member: Member, name: str, target: str, data: Iterable[memoryview] = ()) -> None:
        header = ustar_header(member, name, target)
        if header is None:  # long or non-ASCII names, big sizes, odd mtimes: tarfile adds PAX records
            info = tarfile.TarInfo(name)
            info.type, info.size, info.mode, info.mtime = _TAR_TYPES[member.kind], member.size, member.mode, member.mtime
            info.linkname = target
            header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        self._write(header)
        # one JSON line per member, its size saying where its bytes end: unambiguous
        self._files.update(json.dumps([name, member.kind, member.mode, member.size, target]).encode() + b"\n")
        for piece in data:
            self._write(piece)
            self._files.update(piece)
        padding = -member.size % tarfile.BLOCKSIZE
        self._write(bytes(padding))
        self.size += len(header) + member.size + padding

    def close(self) -> None:
        self._write(bytes(2 * tarfile.BLOCKSIZE))
        self.size += 2 * tarfile.BLOCKSIZE
        self._out.close()

    @property
    def digest(self) -> str:
        """sha256:<hex> of every byte written so far (the whole tar, once closed)."""
        return "sha256:" + self._sha256.hexdigest()

    @property
    def files_digest(self) -> str:
        """sha256:<hex> of the members written so far, mtimes left out (see the class)."""
        return "sha256:" + self._files.hexdigest()

    def discard(self) -> None:
        try:
            self._out.close()
        except OSError:  # the buffer could not be flushed (a full disk): the file goes anyway
            pass


class KeptFile:
    """The content of one member, captured while it streams through (None past `cap`)."""

    def __init__(self, cap: int):
        self.cap = cap
        self.content: bytes | None = None

    def capture(self, data: Iterable[memoryview]) -> Iterable[memoryview]:
        content, size = bytearray(), 0
        for piece in data:
            size += len(piece)
            if size <= self.cap:
                content += piece
            yield piece
        self.content = bytes(content) if size <= self.cap else None


def spool_context(chunks: Iterable[bytes], workspace: Path, dockerfile: str, limits: ContextLimits | int,
                  cancel: CancelToken | None = None) -> BuildContext:
    """Stream the stored context (plain or compressed) through the checks into a canonical
    tar, `workspace/context.tar`, which is all any executor ever sees: what `COPY .` sees in
    `docker build`, plus the Dockerfile (runner.context.view).

    Nothing is held whole in memory and every limit is checked while streaming (uncompressed
    bytes, members, path, link and header sizes); each refusal is an InvalidJob naming the
    member or the setting, as is a malformed ignore file (naming its line, in Docker's words).
    `limits` may be a plain byte cap (tests).
    """
    if isinstance(limits, int):
        limits = ContextLimits(max_context_bytes=limits)
    make_private(workspace.parent, workspace)
    tar_path, side_path = workspace / "context.tar", workspace / "context.side.tar"
    reader = TarReader(chunks, tar_limits(limits), cancel)
    checker = ContextChecker(dockerfile)
    spool = _FirstPass(tar_path, side_path, IgnoreFiles(dockerfile, limits), dockerfile, limits, cancel)
    kept, dockerfile_name = KeptFile(MAX_KEPT_DOCKERFILE), "/".join(member_parts(dockerfile))
    try:
        for member in reader.members():
            accepted = checker.accept(member)
            if accepted is not None:
                name, target = accepted
                data: Iterable[memoryview] = reader.data() if member.kind == "file" else ()
                if name == dockerfile_name:
                    kept.content = None  # the last member of that name is the Dockerfile
                    if member.kind == "file":
                        data = kept.capture(data)
                spool.add(member, name, target, data)
        if reader.raw_bytes == 0:
            raise InvalidJob("the job has no build context (nothing was uploaded, or it expired)")
        if not checker.found_dockerfile:
            raise InvalidJob(f"Dockerfile {dockerfile!r} not found in the build context (it must be a regular file)")
        place, written = spool.finish()
    except BaseException as exc:
        spool.discard()
        tar_path.unlink(missing_ok=True)
        if isinstance(exc, TarLimitError):
            raise InvalidJob(f"{exc.message} ({LIMIT_SETTINGS[exc.limit]})") from None
        if isinstance(exc, TarError):
            raise InvalidJob(exc.message) from None
        if isinstance(exc, OSError):
            raise workspace_error(exc) from None
        raise
    finally:
        side_path.unlink(missing_ok=True)
    return BuildContext(tar_path=tar_path, workspace=workspace, dockerfile=dockerfile, size=written.size,
                        place=view_placement(place), digest=written.digest, files_digest=written.files_digest,
                        dockerfile_content=kept.content)


class _FirstPass:
    """Where the spool's one pass over the upload writes each accepted member: the canonical
    tar, or, from an ignore file met first, the view itself (runner.context.view.StreamingView,
    what it leaves out going to a side file). `finish` makes `tar_path` the view."""

    #: folders written before the ignore file that may still be the ones above it
    MAX_FOLDERS_BEFORE = 64

    def __init__(self, tar_path: Path, side_path: Path, ignore: IgnoreFiles, dockerfile: str, limits: ContextLimits,
                 cancel: CancelToken | None):
        self.tar_path, self.side_path = tar_path, side_path
        self.ignore, self.dockerfile, self.limits, self.cancel = ignore, dockerfile, limits, cancel
        self.out = CanonicalTar(tar_path)
        self.side: CanonicalTar | None = None  # made when the view is written as the tar streams
        self.view: StreamingView | None = None
        self.spans = Spans()
        self.before: list[str] | None = []  # what was written so far, while it is only a few folders

    def add(self, member: Member, name: str, target: str, data: Iterable[memoryview]) -> None:
        if self.side is None and member.kind == "file" and name in self.ignore.candidates and self._only_folders_above(name):
            data = self._start_view(member, name, data)
        data = self.ignore.observe(name, member.kind, target, data)
        if self.view is not None:
            if self.view.add(member, name, target, data):
                return
            self.view = None  # the rest is written as it comes; the view is written at the end
        start = self.out.size
        self.out.add(member, name, target, data)
        self.spans.add(MAIN, start, self.out.size)
        if self.before is not None:
            self.before = self.before + [name] if member.kind == "dir" and len(self.before) < self.MAX_FOLDERS_BEFORE else None

    def _only_folders_above(self, name: str) -> bool:
        return self.before is not None and all(name.startswith(folder + "/") for folder in self.before)

    def _start_view(self, member: Member, name: str, data: Iterable[memoryview]) -> Iterable[memoryview]:
        """Read the ignore file met first (whole: it is at most limits.max_ignore_file_bytes) and,
        if it has patterns, write the view from here on. Returns its data, to be written."""
        if member.size > self.limits.max_ignore_file_bytes:
            return data
        content = b"".join(data)
        place = early_filter(name, content, self.dockerfile, self.limits, self.cancel)
        if place is not None:
            self.side = CanonicalTar(self.side_path)
            self.view = StreamingView(place, (name, content), self.out, self.side, self.spans, self.before or ())
        return (memoryview(content),)

    def finish(self) -> tuple[CopyFilter, CanonicalTar]:
        """The filter `COPY .` applies, and the tar written last at `tar_path`, which now holds
        the view (its size and digests)."""
        self.out.close()
        if self.side is not None:
            self.side.close()
        if self.view is not None and self.view.confirmed(self.ignore):
            return self.view.place, self.out
        if self.side is None:  # the tar as uploaded, canonical: the view is written if the patterns leave something out
            tar: TarBytes = lambda: file_chunks(self.tar_path)  # noqa: E731
            place = copy_filter(self.ignore, tar, self.dockerfile, self.cancel)
            return (place, self._rewrite(tar, place)) if place.active else (place, self.out)
        paths = (self.tar_path, self.side_path)  # the view did not hold: read the upload back in its order
        tar = lambda: self.spans.chunks(paths)  # noqa: E731
        place = copy_filter(self.ignore, tar, self.dockerfile, self.cancel)
        return place, self._rewrite(tar, place)

    def _rewrite(self, tar: TarBytes, place: CopyFilter) -> CanonicalTar:
        """Write the view of the canonical tar that `tar` reads beside it, then in its place."""
        view_path = self.tar_path.with_name("context.view.tar")
        view = CanonicalTar(view_path)
        try:
            write_copy_view(tar, view, place, self.ignore.hardlinked, self.tar_path.with_name("context.stash"), self.cancel)
            view.close()
        except BaseException:
            view.discard()
            view_path.unlink(missing_ok=True)
            raise
        os.replace(view_path, self.tar_path)
        return view

    def discard(self) -> None:
        self.out.discard()
        if self.side is not None:
            self.side.discard()

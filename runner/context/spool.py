"""Spooling a stored context on the worker: the tar (from Redis chunks or a packed checkout)
streamed through our own reader (runner.context.tarstream) and the lexical rules
(runner.context.tarpolicy), and written again as a canonical tar of only the accepted members,
so every executor gets exactly what was checked.

The tar's own ignore file is read on the way (runner.context.copy_filter). When it has
patterns, the tar is written once more holding only what `COPY .` sees in `docker build`
(plus the Dockerfile, which an engine reads from the tar): an engine given a tar applies no
ignore file, and the CLI's tar still holds the ignore file and Dockerfile Docker always sends.
A tool that builds from an unpacked folder gets the same view (runner.context.build_context: BuildContext.unpack)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tarfile
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path

from runner.context.build_context import BuildContext
from runner.context.copy_filter import CopyFilter, IgnoreFiles, PathSet, copy_filter
from runner.context.extract import Placement, make_private, workspace_error
from runner.context.limits import ContextLimits
from runner.context.tarpolicy import hardlink_target, member_parts, symlink_target
from runner.context.tarstream import Member, TarError, TarLimitError, TarLimits, TarReader, file_chunks, shown
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
    """Decides each member lexically (runner.tarpolicy) and remembers which paths the archive
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
    tar, `workspace/context.tar`, which is all any executor ever sees.

    Nothing is held whole in memory and every limit is checked while streaming (uncompressed
    bytes, members, path, link and header sizes); each refusal is an InvalidJob naming the
    member or the setting, as is a malformed ignore file (naming its line, in Docker's words).
    `limits` may be a plain byte cap (tests).
    """
    if isinstance(limits, int):
        limits = ContextLimits(max_context_bytes=limits)
    make_private(workspace.parent, workspace)
    tar_path = workspace / "context.tar"
    reader = TarReader(chunks, tar_limits(limits), cancel)
    checker = ContextChecker(dockerfile)
    ignore = IgnoreFiles(dockerfile, limits)
    kept, dockerfile_name = KeptFile(MAX_KEPT_DOCKERFILE), "/".join(member_parts(dockerfile))
    out = CanonicalTar(tar_path)
    try:
        for member in reader.members():
            accepted = checker.accept(member)
            if accepted is not None:
                name, target = accepted
                data = ignore.observe(name, member.kind, target, reader.data() if member.kind == "file" else ())
                if name == dockerfile_name:
                    kept.content = None  # the last member of that name is the Dockerfile
                    if member.kind == "file":
                        data = kept.capture(data)
                out.add(member, name, target, data)
        if reader.raw_bytes == 0:
            raise InvalidJob("the job has no build context (nothing was uploaded, or it expired)")
        if not checker.found_dockerfile:
            raise InvalidJob(f"Dockerfile {dockerfile!r} not found in the build context (it must be a regular file)")
        out.close()
        place = copy_filter(ignore, tar_path, dockerfile, cancel)
        written = write_copy_view(tar_path, place, ignore.hardlinked, cancel) if place.active else out
    except BaseException as exc:
        out.discard()
        tar_path.unlink(missing_ok=True)
        if isinstance(exc, TarLimitError):
            raise InvalidJob(f"{exc.message} ({LIMIT_SETTINGS[exc.limit]})") from None
        if isinstance(exc, TarError):
            raise InvalidJob(exc.message) from None
        if isinstance(exc, OSError):
            raise workspace_error(exc) from None
        raise
    return BuildContext(tar_path=tar_path, workspace=workspace, dockerfile=dockerfile, size=written.size, place=place,
                        digest=written.digest, files_digest=written.files_digest,
                        dockerfile_content=kept.content)


def write_copy_view(tar_path: Path, place: CopyFilter, hardlinked: PathSet,
                    cancel: CancelToken | None = None) -> CanonicalTar:
    """Rewrite the canonical tar at `tar_path` as what `COPY .` sees: the members `place`
    leaves out are dropped, except the Dockerfile; an excluded folder is kept (before its
    content) only if something inside it is; a kept hard link to a dropped file becomes that
    file. Returns the view written (its size and digests)."""
    view = CanonicalTar(tar_path.with_name("context.view.tar"))
    stash = tar_path.with_name("context.stash")
    pending: dict[str, Member] = {}  # excluded folders, written once something inside them is
    used = PathSet()  # folders something was written inside
    stashed: dict[str, tuple[Path, Member]] = {}  # dropped files a hard link names: their data
    relinked: dict[str, str] = {}  # such a file -> the first link written (as a regular file)
    try:
        with closing(file_chunks(tar_path)) as chunks:
            reader = TarReader(chunks, cancel=cancel)
            for member in reader.members():
                name = "/".join(member_parts(member.name))
                where = place(name, member.kind)
                if where is Placement.IF_USED and member.kind == "dir":
                    if name in used:
                        view.add(member, name, "")
                    else:
                        pending[name] = member
                    continue
                if where in (Placement.ASIDE, Placement.IF_USED) and name != place.dockerfile:
                    if member.kind == "file" and name in hardlinked:
                        stashed[name] = (_stash(stash, len(stashed), reader.data()), member)
                    continue
                _write_folders_above(view, name, pending, used)
                if member.kind == "hardlink" and member.linkname in stashed:
                    if member.linkname in relinked:
                        view.add(member, name, relinked[member.linkname])
                    else:
                        data, source = stashed[member.linkname]
                        copied = Member(name, "file", source.size, source.mode, source.mtime)
                        with closing(file_chunks(data)) as pieces:
                            view.add(copied, name, "", (memoryview(p) for p in pieces))
                        relinked[member.linkname] = name
                else:
                    view.add(member, name, member.linkname, reader.data() if member.kind == "file" else ())
        view.close()
    except BaseException:
        view.discard()
        tar_path.with_name("context.view.tar").unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(stash, ignore_errors=True)
    os.replace(tar_path.with_name("context.view.tar"), tar_path)
    return view


def _write_folders_above(view: CanonicalTar, name: str, pending: dict[str, Member], used: PathSet) -> None:
    parts = name.split("/")
    for depth in range(1, len(parts)):
        folder = "/".join(parts[:depth])
        if pending:
            member = pending.pop(folder, None)
            if member is not None:
                view.add(member, folder, "")
        used.add(folder)


def _stash(folder: Path, index: int, data: Iterable[memoryview]) -> Path:
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / str(index)
    with path.open("wb") as out:
        for piece in data:
            out.write(piece)
    return path

"""Unpack a context tar into a folder without ever following a link the tar made.

Every member is decided lexically (runner.context.tarpolicy). Its parent folders are opened one name
at a time with O_DIRECTORY|O_NOFOLLOW relative to the previous one, so the kernel never sees
more than one component of an attacker's path (PATH_MAX tricks have nothing to overflow) and
a member below a symlink fails to open instead of escaping. Files are created
O_CREAT|O_EXCL|O_NOFOLLOW after an existing non-folder is unlinked; hard links use linkat
without following, their source reached by the same walk; symlinks are made, never followed.

Modes are kept exactly as in the tar (setuid, setgid, sticky included), as `docker build`
keeps them. So that no host user can reach a setuid file, the extraction root and every
folder from the worker's workspace down to it are 0700. Folder modes and mtimes are applied
last, deepest first, so a 0555 folder still receives its children.

A build tool that reads a folder (buildah, img) must see exactly what `COPY .` sees in
`docker build`, so an optional `MemberFilter` places each member: in the context folder, in
a private "aside" folder (what the ignore file leaves out but the build may still need: the
Dockerfile, the source of a hard link), or, for a folder the patterns exclude, in the context
only when something placed there is inside it (it then keeps its own mode, as BuildKit sends it).
"""

from __future__ import annotations

import enum
import errno
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from runner.context.tarpolicy import hardlink_target, member_parts, symlink_target
from runner.context.tarstream import Member, TarError, TarReader, shown
from runner.core.errors import ExecutorError, InfrastructureError, InvalidJob

if TYPE_CHECKING:
    from runner.core.cancel import CancelToken

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SETID = stat.S_ISUID | stat.S_ISGID
#: errors that are the host's, not the archive's
_HOST_ERRORS = {errno.EIO, errno.EROFS, errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.EACCES}


class Placement(enum.Enum):
    """Where a member goes when a context is unpacked for a build tool."""

    CONTEXT = "context"  # the context folder: what `COPY .` sees
    ASIDE = "aside"  # only the aside folder (files and hard links; other kinds are dropped)
    BOTH = "both"  # the context folder, and hard-linked into the aside folder (a visible Dockerfile)
    IF_USED = "if-used"  # a folder: in the context only if something placed there is inside it


#: decides a member's place from its normalised path and kind ("file", "dir", "symlink", "hardlink")
MemberFilter = Callable[[str, str], Placement]


def workspace_error(exc: OSError) -> ExecutorError:
    """An error writing to the workspace, said without host paths or internal text."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InfrastructureError("the worker's workspace is full")
    return InfrastructureError(f"cannot write the build context to the worker's workspace ({os.strerror(exc.errno or 0)})")


def make_private(top: Path, target: Path) -> None:
    """Create `target`; make it and every folder from `top` down to it 0700 (only `target`
    when it is not below `top`). Refuses a shared sticky folder such as /tmp as `top`."""
    target.mkdir(parents=True, exist_ok=True)
    chain = [target]
    if target.is_relative_to(top):
        chain += [p for p in target.parents if p.is_relative_to(top)]
    for folder in chain:
        if os.stat(folder).st_mode & stat.S_ISVTX:
            raise InfrastructureError("worker.workspace must be a folder of its own, not a shared sticky one like /tmp")
        os.chmod(folder, 0o700)


def _ns(mtime: int | float) -> int:
    whole = int(mtime)  # the fraction alone, so a float epoch keeps its sub-second digits
    return whole * 1_000_000_000 + round((mtime - whole) * 1e9)


class Extractor:
    """Unpacks members below `root_fd`, one at a time (see the module docstring)."""

    def __init__(self, root_fd: int, place: MemberFilter | None = None, aside: Extractor | None = None):
        self.root_fd = root_fd
        self.place = place
        self.aside = aside  # where ASIDE and BOTH members go (None: ASIDE members are dropped)
        #: a second root searched for a hard link's source (the aside folder's, and back)
        self.other_root: int | None = None
        if aside is not None:
            self.other_root, aside.other_root = aside.root_fd, root_fd
        self._parent: tuple[tuple[str, ...], int] | None = None  # the last parent folder, kept open
        #: folder modes and mtimes to apply at the end; the flag: only if the folder exists then
        self._dirs: dict[tuple[str, ...], tuple[int, int | float, bool]] = {}
        self.setid_members = 0  # files and folders unpacked here with a setuid or setgid bit

    def close(self) -> None:
        if self._parent is not None:
            os.close(self._parent[1])
            self._parent = None

    def _walk(self, parts: tuple[str, ...], member: Member, create: bool, root: int | None = None) -> int:
        """A new fd of the folder `parts` below the root (or `root`), opened without following any link."""
        fd = os.dup(self.root_fd if root is None else root)
        for depth, part in enumerate(parts):
            try:
                try:
                    child = os.open(part, _OPEN_DIR, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    child = os.open(part, _OPEN_DIR, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    try:
                        is_link = stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode)
                    finally:
                        os.close(fd)
                    raise InvalidJob(f"context tar member {shown(member.name)} is inside "
                                     f"{shown('/'.join(parts[: depth + 1]))}, which is "
                                     f"{'a symlink; a member may not be written through a link' if is_link else 'not a folder'}"
                                     ) from None
                os.close(fd)
                raise
            os.close(fd)
            fd = child
        return fd

    def _parent_fd(self, parts: tuple[str, ...], member: Member) -> int:
        key = parts[:-1]
        if self._parent is None or self._parent[0] != key:
            fd = self._walk(key, member, create=True)
            self.close()
            self._parent = (key, fd)
        return self._parent[1]

    def _clear(self, parent: int, leaf: str, member: Member) -> bool:
        """Unlink an existing non-folder at `leaf`; True if a folder is there."""
        try:
            mode = os.stat(leaf, dir_fd=parent, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(mode):
            if member.kind != "dir":
                raise InvalidJob(f"context tar member {shown(member.name)} would replace a folder with a {member.kind}")
            return True
        os.unlink(leaf, dir_fd=parent)
        return False

    def add(self, member: Member, data: Iterable[memoryview]) -> None:
        parts = member_parts(member.name)
        if not parts:
            if member.kind != "dir":
                raise InvalidJob(f"context tar member {shown(member.name)} would replace the context's root folder")
            return  # the root keeps its 0700
        place = self.place("/".join(parts), member.kind) if self.place is not None else Placement.CONTEXT
        if place is Placement.IF_USED and member.kind == "dir":
            self._dirs[parts] = (member.mode, member.mtime, True)
            return
        if place is Placement.ASIDE or place is Placement.IF_USED:
            if self.aside is not None and member.kind in ("file", "hardlink"):
                self.aside.add_here(parts, member, data)
            return
        self.add_here(parts, member, data)
        if place is Placement.BOTH and self.aside is not None and member.kind in ("file", "hardlink"):
            self.aside.link_from(self.root_fd, parts, member)

    def add_here(self, parts: tuple[str, ...], member: Member, data: Iterable[memoryview]) -> None:
        """Unpack the member (its normalised `parts`) below this extractor's root."""
        parent, leaf = self._parent_fd(parts, member), parts[-1]
        target = symlink_target(member, parts) if member.kind == "symlink" else None
        link_parts = hardlink_target(member, parts) if member.kind == "hardlink" else None
        is_dir = self._clear(parent, leaf, member)
        if member.kind == "dir":
            if not is_dir:
                os.mkdir(leaf, 0o700, dir_fd=parent)
            self._dirs[parts] = (member.mode, member.mtime, False)
        elif member.kind == "file":
            self._write_file(parent, leaf, member, data)
            self.setid_members += bool(member.mode & _SETID)
        elif target is not None:
            os.symlink(target, leaf, dir_fd=parent)
            os.utime(leaf, ns=(_ns(member.mtime),) * 2, dir_fd=parent, follow_symlinks=False)
        elif link_parts is not None:
            self._hardlink(parent, leaf, link_parts, member)

    @staticmethod
    def _write_file(parent: int, leaf: str, member: Member, data: Iterable[memoryview]) -> None:
        fd = os.open(leaf, _CREATE_FILE, 0o600, dir_fd=parent)
        try:
            for piece in data:
                while piece:
                    piece = piece[os.write(fd, piece):]
            os.fchmod(fd, member.mode)  # after the data: a write would clear setuid/setgid
            os.utime(fd, ns=(_ns(member.mtime),) * 2)
        finally:
            os.close(fd)

    def _hardlink(self, parent: int, leaf: str, link_parts: tuple[str, ...], member: Member) -> None:
        roots = [self.root_fd] if self.other_root is None else [self.root_fd, self.other_root]
        folder_found = False
        for root in roots:  # the source is in this folder, or was placed in the other one
            try:
                source = self._walk(link_parts[:-1], member, create=False, root=root)
            except FileNotFoundError:
                continue
            folder_found = True
            try:
                mode = os.stat(link_parts[-1], dir_fd=source, follow_symlinks=False).st_mode
                if not stat.S_ISREG(mode):
                    what = "a symlink" if stat.S_ISLNK(mode) else "a folder"
                    raise InvalidJob(f"context tar member {shown(member.name)} is a hard link to {what} "
                                     f"({shown(member.linkname)}); a hard link must name an earlier regular file")
                os.link(link_parts[-1], leaf, src_dir_fd=source, dst_dir_fd=parent, follow_symlinks=False)
                return
            except FileNotFoundError:
                continue
            finally:
                os.close(source)
        if not folder_found:
            raise InvalidJob(f"context tar member {shown(member.name)} is a hard link to {shown(member.linkname)}, "
                             "which is not in the context")
        raise InvalidJob(f"context tar member {shown(member.name)} is a hard link to nothing "
                         f"({shown(member.linkname)}); a hard link must name an earlier regular file")

    def link_from(self, root: int, parts: tuple[str, ...], member: Member) -> None:
        """Hard-link the file at `parts` below `root` (already unpacked there) to the same path here."""
        parent, leaf = self._parent_fd(parts, member), parts[-1]
        self._clear(parent, leaf, member)
        source = self._walk(parts[:-1], member, create=False, root=root)
        try:
            os.link(leaf, leaf, src_dir_fd=source, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(source)

    def finish(self) -> None:
        """Folder modes and mtimes, deepest first (a 0555 folder got its children already)."""
        self.close()
        for parts, (mode, mtime, if_used) in sorted(self._dirs.items(), key=lambda item: len(item[0]), reverse=True):
            member = Member(name="/".join(parts), kind="dir", size=0, mode=mode, mtime=mtime)
            try:
                fd = self._walk(parts, member, create=False)
            except (FileNotFoundError, InvalidJob):
                if if_used:
                    continue  # nothing placed inside it: it is not in the context
                raise
            try:
                os.fchmod(fd, mode)
                os.utime(fd, ns=(_ns(mtime),) * 2)
                self.setid_members += bool(mode & _SETID)
            finally:
                os.close(fd)


def _member_error(exc: OSError, member: Member) -> ExecutorError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT) or exc.errno in _HOST_ERRORS:
        return workspace_error(exc)
    if member.kind == "hardlink" and exc.errno == errno.ENOENT:
        return InvalidJob(f"context tar member {shown(member.name)} is a hard link to {shown(member.linkname)}, "
                          "which is not in the context")
    return InvalidJob(f"context tar member {shown(member.name)} cannot be unpacked: {os.strerror(exc.errno or 0)}")


def extract_tar(chunks: Iterable[bytes], root: Path, cancel: CancelToken | None = None,
                place: MemberFilter | None = None, aside: Path | None = None) -> int:
    """Unpack the tar in `chunks` into the existing folder `root` (which the caller made private).
    With `place`, each member goes where it says; `aside` is the existing private folder for
    ASIDE and BOTH members (without it, ASIDE members are left out). Returns how many files and
    folders in `root` have a setuid or setgid bit."""
    root_fd = os.open(root, _OPEN_DIR)
    aside_fd = os.open(aside, _OPEN_DIR) if aside is not None else None
    beside = Extractor(aside_fd) if aside_fd is not None else None
    extractor = Extractor(root_fd, place, beside)
    member: Member | None = None
    try:
        reader = TarReader(chunks, cancel=cancel)
        for member in reader.members():
            extractor.add(member, reader.data())
        member = None
        extractor.finish()
        return extractor.setid_members
    except TarError as exc:
        raise InvalidJob(exc.message) from None
    except OSError as exc:
        if member is None:
            raise workspace_error(exc) from None
        raise _member_error(exc, member) from None
    finally:
        extractor.close()
        os.close(root_fd)
        if beside is not None and aside_fd is not None:
            beside.close()
            os.close(aside_fd)

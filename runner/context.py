"""Build contexts: pack a directory as a tar (honouring .dockerignore), and on the worker
spool a stored tar to disk while checking it is safe to build from."""

from __future__ import annotations

import os
import posixpath
import re
import tarfile
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

from executors.base import BuildContext, InvalidJob


# -- .dockerignore ---------------------------------------------------------------------------
def read_dockerignore(root: Path) -> list[str]:
    path = root / ".dockerignore"
    if not path.is_file():
        return []
    patterns = []
    for raw in path.read_text(errors="replace").splitlines():
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        negate = text.startswith("!")
        body = text[1:].strip() if negate else text
        body = posixpath.normpath(body.lstrip("/")) if body.lstrip("/") else "."
        patterns.append(("!" if negate else "") + body)
    return patterns


@lru_cache(maxsize=1024)
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Translate a Go filepath.Match pattern with Docker's `**` extension to a regex."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                out.append("(?:.*/)?")
            else:
                out.append(".*")
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                if body.startswith("^"):
                    body = "!" + body[1:]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
                i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("^" + "".join(out) + "$")


def is_ignored(path: str, patterns: Iterable[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern[1:] if negate else pattern)
        if any(regex.match(p) for p in prefixes):
            ignored = not negate
    return ignored


def _could_unignore_inside(directory: str, patterns: list[str]) -> bool:
    return any(p.startswith("!") and (p[1:] + "/").startswith(directory + "/") or "**" in p
               for p in patterns if p.startswith("!"))


def iter_context_files(root: Path, dockerfile: str = "Dockerfile") -> Iterator[str]:
    """Relative paths to send, in a stable order. Dockerfile and .dockerignore always go."""
    patterns = read_dockerignore(root)
    always = {dockerfile, ".dockerignore"}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
        dirnames.sort()
        keep = []
        for name in dirnames:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if is_ignored(rel, patterns) and not _could_unignore_inside(rel, patterns):
                continue
            keep.append(name)
            if not is_ignored(rel, patterns):
                yield rel
        dirnames[:] = keep
        for name in sorted(filenames):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if rel in always or not is_ignored(rel, patterns):
                yield rel


def write_tar(root: Path, sink: BinaryIO, dockerfile: str = "Dockerfile") -> None:
    """Stream the context of `root` as an uncompressed tar into `sink`."""
    root = root.resolve()
    if not root.is_dir():
        raise InvalidJob(f"build context {root} is not a directory")
    if not (root / dockerfile).is_file():
        raise InvalidJob(f"Dockerfile {dockerfile!r} not found in the build context {root}")
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for rel in iter_context_files(root, dockerfile):
            info = tar.gettarinfo(str(root / rel), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = int(info.mtime)  # a fractional mtime would add a PAX header to every member
            if info.isreg():
                with open(root / rel, "rb") as handle:
                    tar.addfile(info, handle)
            elif info.isdir() or info.issym() or info.islnk():
                tar.addfile(info)
            # sockets, fifos and devices are skipped, as docker does


# -- worker side -------------------------------------------------------------------------------
def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise InvalidJob(f"context tar member {name!r} has an absolute path")
    normal = posixpath.normpath(name)
    if normal == ".." or normal.startswith("../"):
        raise InvalidJob(f"context tar member {name!r} leaves the context")
    if member.issym():
        target = member.linkname
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(normal), target))
        if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
            raise InvalidJob(f"context tar member {name!r} is a link pointing outside the context ({target!r})")
    elif member.islnk():
        target = posixpath.normpath(member.linkname)
        if member.linkname.startswith("/") or target == ".." or target.startswith("../"):
            raise InvalidJob(f"context tar member {name!r} is a hard link pointing outside the context")
    elif not (member.isreg() or member.isdir()):
        raise InvalidJob(f"context tar member {name!r} is a device or fifo; only files, folders and links are allowed")


def spool_context(chunks: Iterable[bytes], workspace: Path, dockerfile: str, max_bytes: int) -> BuildContext:
    """Write the stored tar to disk chunk by chunk, then check every member header.

    The tar never sits in memory whole. Rejects absolute paths, `..`, links that leave the
    context, special files, and a missing Dockerfile, each with a message naming the member.
    """
    workspace.mkdir(parents=True, exist_ok=True)
    tar_path = workspace / "context.tar"
    size = 0
    with tar_path.open("wb") as out:
        for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise InvalidJob(f"the build context is over the limit of {max_bytes:,} bytes (limits.max_context_bytes)")
            out.write(chunk)
    if size == 0:
        raise InvalidJob("the job has no build context (nothing was uploaded, or it expired)")
    check_tar(tar_path, dockerfile)
    return BuildContext(tar_path=tar_path, workspace=workspace, dockerfile=dockerfile, size=size)


def check_tar(tar_path: Path, dockerfile: str) -> None:
    found = False
    try:
        with tarfile.open(tar_path, "r|*") as tar:
            for member in tar:
                _check_member(member)
                if posixpath.normpath(member.name) == dockerfile and member.isreg():
                    found = True
    except tarfile.TarError as exc:
        raise InvalidJob(f"the build context is not a valid tar: {exc}") from None
    if not found:
        raise InvalidJob(f"Dockerfile {dockerfile!r} not found in the build context")

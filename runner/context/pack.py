"""Packing a directory as a build context, as `docker build` sends it: the paths BuildKit's
file sync would send (runner.context.dockerignore), as one uncompressed tar. Used by the CLI
on the user's side and by git contexts on the worker. The ignore file leads the tar (after
only the folders above it), so the worker's spool applies it as the tar streams and writes
the tar once (runner.context.view)."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from runner.context.dockerignore import select_context
from runner.core.errors import InvalidJob

if TYPE_CHECKING:
    from runner.context.limits import ContextLimits
    from runner.core.cancel import CancelToken


class Sink(Protocol):
    """Where the tar goes: a file, an upload to Redis, a capped file (only `write` is called)."""

    def write(self, data: bytes, /) -> object: ...


def write_tar(root: Path, sink: Sink, dockerfile: str = "Dockerfile", limits: ContextLimits | None = None,
              cancel: CancelToken | None = None) -> None:
    """Stream the context of `root` as an uncompressed tar into `sink`. The ignore file is held
    to `limits` (its bytes and patterns; the defaults when None) before anything is walked, and
    `cancel` is checked entry by entry."""
    root = Path(os.path.abspath(root))  # lexical: on the worker `root` is a checkout, never resolved
    if not root.is_dir():
        raise InvalidJob(f"build context {root} is not a directory")
    if not (root / dockerfile).is_file():
        raise InvalidJob(f"Dockerfile {dockerfile!r} not found in the build context {root}")
    # stream mode ("w|") only writes to fileobj; typeshed asks every mode's fileobj for read, seek, tell and close too
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        selection = select_context(root, dockerfile, limits, cancel)
        for rel in ignore_file_first(selection.paths, selection.ignore_file):
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


def ignore_file_first(paths: list[str], ignore_file: str) -> list[str]:
    """`paths` with the ignore file, after the folders above it, first (when it is sent)."""
    sent = set(paths)
    if ignore_file not in sent:
        return paths
    parts = ignore_file.split("/")
    lead = [folder for folder in ("/".join(parts[:depth]) for depth in range(1, len(parts) + 1)) if folder in sent]
    first = set(lead)
    return lead + [path for path in paths if path not in first]

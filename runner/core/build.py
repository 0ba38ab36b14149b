"""What a build is handed: a checked context on disk, a log sink, a cancel token."""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from runner.core.cancel import CancelToken
from runner.core.jobs import BuildRequest


class LogSink(Protocol):
    def line(self, text: str) -> None:
        """Append one line of build output (no trailing newline needed)."""

    def write(self, chunk: str) -> None:
        """Append raw output that may hold partial lines; lines are split and masked."""

    def add_secret(self, value: str) -> None:
        """Mask `value` from now on (a secret an executor learns during the build)."""


@dataclass
class BuildContext:
    """A build context checked by runner.context: a tar on disk plus a scratch directory."""

    tar_path: Path
    workspace: Path
    dockerfile: str = "Dockerfile"
    size: int = 0

    def open(self):
        return self.tar_path.open("rb")

    def extract_to(self, target: Path, cancel: CancelToken | None = None) -> Path:
        """Unpack into `target`, never writing outside it (runner.extract: no link the tar made
        is ever followed). `target` and the folders from the workspace root down to it are 0700."""
        from runner.core.extract import extract_tar, make_private
        from runner.core.tarstream import file_chunks

        make_private(self.workspace.parent, target)
        with closing(file_chunks(self.tar_path)) as chunks:
            extract_tar(chunks, target, cancel)
        return target


class ContextSource(Protocol):
    """Where a job's context comes from (an upload, a git repository): makes the checked
    BuildContext in the job's workspace."""

    def prepare(self, request: BuildRequest, workspace: Path, log: LogSink, cancel: CancelToken) -> BuildContext:
        """The context for `request`, or raise a typed error naming what is wrong with it."""

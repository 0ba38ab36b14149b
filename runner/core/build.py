"""What a build is handed: a checked context on disk, a log sink, a cancel token."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from runner.core.errors import Cancelled
from runner.core.jobs import BuildRequest


class LogSink(Protocol):
    def line(self, text: str) -> None:
        """Append one line of build output (no trailing newline needed)."""

    def write(self, chunk: str) -> None:
        """Append raw output that may hold partial lines; lines are split and masked."""


class CancelToken:
    """Set by the pipeline when the job is cancelled or times out.

    Executors either poll `is_set()` between steps or register `on_cancel(callback)` to kill
    their processes / builds at once. Callbacks run once, on the thread that sets the token.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self.reason: str | None = None

    def set(self, reason: str = "cancelled") -> None:
        with self._lock:
            if self._event.is_set():
                return
            self.reason = reason
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # noqa: BLE001 - one failing kill must not stop the others
                pass

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Register a callback; returns a function that unregisters it."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)

                def remove() -> None:
                    with self._lock:
                        if callback in self._callbacks:
                            self._callbacks.remove(callback)

                return remove
        callback()
        return lambda: None

    def raise_if_set(self) -> None:
        if self._event.is_set():
            raise Cancelled(self.reason or "cancelled")


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

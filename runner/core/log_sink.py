"""Where a job's output goes: the one interface executors, sources and the process runner write to."""

from __future__ import annotations

from typing import Protocol


class LogSink(Protocol):
    def line(self, text: str) -> None:
        """Append one line of build output (no trailing newline needed)."""

    def write(self, chunk: str) -> None:
        """Append raw output that may hold partial lines; lines are split and masked."""

    def add_secret(self, value: str) -> None:
        """Mask `value` from now on (a secret an executor learns during the build)."""

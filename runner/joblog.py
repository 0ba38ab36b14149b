"""A job's log sink: splits output into lines, masks secrets, caps size, appends to the store."""

from __future__ import annotations

import threading

from runner.store import JobStore

MASK = "***"
_FORCE_FLUSH = 16 * 1024


class JobLog:
    """Implements executors.base.LogSink for one job.

    Secrets are masked on whole lines, and raw chunks are buffered up to a newline first,
    so a secret split across two output chunks is still masked.
    """

    def __init__(self, store: JobStore, job_id: str, secrets: list[str] | None = None,
                 max_bytes: int = 16 * 1024**2, max_lines: int = 200_000):
        self.store, self.job_id = store, job_id
        self.secrets = sorted({s for s in (secrets or []) if s}, key=len, reverse=True)
        self.max_bytes, self.max_lines = max_bytes, max_lines
        self.bytes_written = 0
        self.truncated = False
        self._partial = ""
        self._lock = threading.Lock()

    def add_secret(self, value: str) -> None:
        if value and value not in self.secrets:
            self.secrets = sorted([*self.secrets, value], key=len, reverse=True)

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def line(self, text: str) -> None:
        with self._lock:
            self._emit(text.rstrip("\r\n").split("\n"))

    def write(self, chunk: str) -> None:
        with self._lock:
            data = self._partial + chunk.replace("\r\n", "\n")
            *lines, self._partial = data.split("\n")
            if len(self._partial) > _FORCE_FLUSH:
                keep = max((len(s) for s in self.secrets), default=1) - 1
                cut = len(self._partial) - keep
                lines.append(self._partial[:cut])
                self._partial = self._partial[cut:]
            self._emit(lines)

    def flush(self) -> None:
        with self._lock:
            if self._partial:
                self._emit([self._partial])
                self._partial = ""

    def _emit(self, lines: list[str]) -> None:
        if self.truncated or not lines:
            return
        out: list[str] = []
        for text in lines:
            text = self.mask(text)
            size = len(text.encode()) + 1
            if self.bytes_written + size > self.max_bytes:
                out.append(f"[runner] log truncated: over {self.max_bytes:,} bytes (limits.max_log_bytes); the build goes on")
                self.truncated = True
                break
            self.bytes_written += size
            out.append(text)
        self.store.append_log(self.job_id, out, self.max_lines)

"""A job's log sink: splits output into lines, masks secrets, appends to the store in
batches, and keeps the head and the tail of an over-long log with one marker between them."""

from __future__ import annotations

import threading
from collections import deque

from runner.store import JobStore

MASK = "***"
_FORCE_FLUSH = 16 * 1024
#: lines per stream entry, and bytes: a burst of output costs one entry, not one per line
ENTRY_LINES = 1000
ENTRY_BYTES = 64 * 1024


class JobLog:
    """Implements executors.base.LogSink for one job.

    Secrets are masked on whole lines, and raw chunks are buffered up to a newline first,
    so a secret split across two output chunks is still masked.

    Caps (limits.max_log_lines, limits.max_log_bytes): the first half of each cap is the
    head, kept whole; past it one marker line is written and from then on only the newest
    entries fitting in the other half are kept (older tail entries are deleted as new ones
    come). So a failing build's last lines and the `[runner]` header both survive.
    """

    def __init__(self, store: JobStore, job_id: str, secrets: list[str] | None = None,
                 max_bytes: int = 16 * 1024**2, max_lines: int = 200_000):
        self.store, self.job_id = store, job_id
        self.secrets = sorted({s for s in (secrets or []) if s}, key=len, reverse=True)
        self.max_bytes, self.max_lines = max_bytes, max_lines
        self.head_lines, self.head_bytes = max_lines // 2, max_bytes // 2
        self.tail_lines, self.tail_bytes = max_lines - self.head_lines, max_bytes - self.head_bytes
        self.max_line = max(self.tail_bytes // 4, 1024)
        # entries are dropped whole from the tail, so each is a small part of it
        self.entry_lines = max(1, min(ENTRY_LINES, self.tail_lines // 8))
        self.entry_bytes = max(256, min(ENTRY_BYTES, self.tail_bytes // 8))
        self.lines_written = self.bytes_written = 0
        self.in_tail = False
        self._tail: deque[tuple[str, int, int]] = deque()  # (entry id, lines, bytes)
        self._tail_lines = self._tail_bytes = 0
        self.dropped_lines = self.dropped_bytes = 0
        self._partial = ""
        self._lock = threading.Lock()

    @property
    def truncated(self) -> bool:
        return self.in_tail

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

    def close(self) -> None:
        """Flush, and say how much of the middle was dropped (if any)."""
        self.flush()
        if self.dropped_lines:
            self.line(f"[runner] log: {self.dropped_lines:,} lines ({self.dropped_bytes:,} bytes) between the head and the "
                      "tail were dropped (limits.max_log_lines / limits.max_log_bytes)")

    # -- internals --------------------------------------------------------------------------
    def _emit(self, lines: list[str]) -> None:
        if not lines:
            return
        if self.secrets:  # one pass over the batch instead of one per line
            lines = self.mask("\n".join(lines)).split("\n")
        for index, text in enumerate(lines):
            if len(text) > self.max_line:
                lines[index] = text[: self.max_line] + f" [line cut at {self.max_line:,} characters]"
        for entry in _entries(lines, self.entry_lines, self.entry_bytes):
            if not self.in_tail:
                entry = self._fill_head(entry)
            if entry:
                self._append_tail(entry)
        self._trim_tail()

    def _fill_head(self, entry: list[str]) -> list[str]:
        """Append what fits in the head; return the rest (which starts the tail)."""
        size = _size(entry)
        if self.lines_written + len(entry) <= self.head_lines and self.bytes_written + size <= self.head_bytes:
            self._append(entry, size)
            return []
        fits = 0
        room_lines, room_bytes = self.head_lines - self.lines_written, self.head_bytes - self.bytes_written
        while fits < len(entry) and fits < room_lines and len(entry[fits].encode()) + 1 <= room_bytes:
            room_bytes -= len(entry[fits].encode()) + 1
            fits += 1
        if fits:
            self._append(entry[:fits], _size(entry[:fits]))
        marker = (f"[runner] log over {self.head_lines:,} lines or {self.head_bytes:,} bytes: from here on only the last "
                  f"{self.tail_lines:,} lines / {self.tail_bytes:,} bytes are kept (limits.max_log_lines, "
                  "limits.max_log_bytes); the build goes on")
        self._append([marker], len(marker) + 1)
        self.in_tail = True
        return entry[fits:]

    def _append(self, entry: list[str], size: int) -> list[str]:
        ids = self.store.append_log(self.job_id, ["\n".join(entry)])
        self.lines_written += len(entry)
        self.bytes_written += size
        return ids

    def _append_tail(self, entry: list[str]) -> None:
        size = _size(entry)
        [entry_id] = self._append(entry, size)
        self._tail.append((entry_id, len(entry), size))
        self._tail_lines += len(entry)
        self._tail_bytes += size

    def _trim_tail(self) -> None:
        doomed = []
        while len(self._tail) > 1 and (self._tail_lines > self.tail_lines or self._tail_bytes > self.tail_bytes):
            entry_id, lines, size = self._tail.popleft()
            self._tail_lines -= lines
            self._tail_bytes -= size
            self.dropped_lines += lines
            self.dropped_bytes += size
            doomed.append(entry_id)
        self.store.delete_log_entries(self.job_id, doomed)


def _size(lines: list[str]) -> int:
    """Bytes the lines take in the log, a newline each."""
    return len("\n".join(lines).encode()) + 1


def _entries(lines: list[str], max_lines: int, max_bytes: int) -> list[list[str]]:
    """Group lines into stream entries of at most `max_lines` lines and about `max_bytes`."""
    out, current, size = [], [], 0
    for text in lines:
        if current and (len(current) >= max_lines or size + len(text) > max_bytes):
            out.append(current)
            current, size = [], 0
        current.append(text)
        size += len(text) + 1
    if current:
        out.append(current)
    return out

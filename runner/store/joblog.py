"""A job's log sink: splits output into lines, masks secrets, appends to the store in
batches, and keeps the head and the tail of an over-long log with one marker between them.

Output is handled as blocks of text, not line by line: masking, cutting into stream entries
and counting lines are string operations, so a million-line build costs a few hundred stream
entries and no Python loop per line."""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from functools import lru_cache

from runner.core.process_log import MASK
from runner.store.jobstore import JobStore

_FORCE_FLUSH = 16 * 1024
#: the longest a line of a burst waits before it is sent with the ones after it
LINGER = 0.05
#: lines per stream entry, and bytes: a burst of output costs one entry, not one per line
ENTRY_LINES = 1000
ENTRY_BYTES = 64 * 1024


class JobLog:
    """Implements the LogSink protocol for one job.

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
        self._pending: list[str] = []  # a burst of line() calls, sent together
        self._pending_bytes = 0
        self._last_emit = 0.0
        self._closed = False
        self._flusher: threading.Thread | None = None
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)

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
        """One line. A line after a quiet spell goes out at once; lines that come in a burst
        (a builder printing line by line) are sent together, LINGER seconds later at most."""
        with self._lock:
            self._pending.append(text.rstrip("\r\n"))
            self._pending_bytes += len(text) + 1
            quiet = len(self._pending) == 1 and time.monotonic() - self._last_emit > LINGER
            if self._closed or quiet or len(self._pending) >= self.entry_lines or self._pending_bytes >= self.entry_bytes:
                self._drain()
            else:
                self._wake_flusher()

    def write(self, chunk: str) -> None:
        with self._lock:
            self._drain()
            data = self._partial + chunk.replace("\r\n", "\n")
            cut = data.rfind("\n")
            complete, self._partial = (data[:cut], data[cut + 1:]) if cut >= 0 else ("", data)
            if len(self._partial) > _FORCE_FLUSH:  # a line with no end in sight: log most of it now
                keep = max((len(s) for s in self.secrets), default=1) - 1
                split = len(self._partial) - keep
                complete = f"{complete}\n{self._partial[:split]}" if cut >= 0 else self._partial[:split]
                self._partial = self._partial[split:]
                cut = 0
            if cut >= 0:
                self._emit(complete)

    def flush(self) -> None:
        with self._lock:
            self._drain()
            if self._partial:
                self._emit(self._partial)
                self._partial = ""

    def close(self) -> None:
        """Flush, and say how much of the middle was dropped (if any). Lines after this go
        out at once."""
        self.flush()
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        if self.dropped_lines:  # a footer: outside the tail's accounting, so it drops nothing itself
            footer = (f"[runner] log: {self.dropped_lines:,} lines ({self.dropped_bytes:,} bytes) between the head and the "
                      "tail were dropped (limits.max_log_lines / limits.max_log_bytes)")
            with self._lock:
                self.store.append_log(self.job_id, [footer])

    def closing(self, text: str) -> str:
        """Close the log and return its last line, masked, for JobStore.end to write in the
        job's end (with the end marker, in one transaction); an over-long line is cut as any other."""
        self.close()
        return "\n".join(self._entries(self.mask(text.rstrip("\r\n"))))

    # -- internals --------------------------------------------------------------------------
    def _drain(self) -> None:
        """Send the lines waiting in a burst (the lock is held)."""
        if self._pending:
            block = "\n".join(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            self._emit(block)

    def _wake_flusher(self) -> None:
        """Make sure a flusher will send the pending lines within LINGER seconds (lock held).
        Only the burst's first line wakes it: a wake-up during its LINGER wait would send the
        burst at once, one round trip per line."""
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_bursts, name=f"joblog-{self.job_id}", daemon=True)
            self._flusher.start()
        if len(self._pending) == 1:
            self._wake.notify()

    def _flush_bursts(self) -> None:
        with self._lock:
            while not self._closed:
                if not self._pending:
                    self._wake.wait()
                    continue
                self._wake.wait(LINGER)
                self._drain()

    def _emit(self, block: str) -> None:
        """Log `block`: one or more lines joined by "\\n" (no trailing newline), in one round trip."""
        head: list[str] = []
        tail: list[tuple[str, int, int]] = []
        for entry in self._entries(self.mask(block)):
            if not self.in_tail:
                entry = self._into_head(entry, head)
                if not entry:
                    continue
            lines, size = entry.count("\n") + 1, _size(entry)
            self._count(lines, size)
            tail.append((entry, lines, size))
        ids = self.store.append_log(self.job_id, head + [entry for entry, _, _ in tail])
        self._last_emit = time.monotonic()
        for entry_id, (_, lines, size) in zip(ids[len(head):], tail, strict=True):
            self._tail.append((entry_id, lines, size))
            self._tail_lines += lines
            self._tail_bytes += size
        self._trim_tail()

    def _entries(self, block: str):
        """Cut `block` at line ends into entries of at most entry_lines lines / ~entry_bytes,
        cutting over-long lines at max_line characters."""
        start, end_of_block = 0, len(block)
        while start <= end_of_block:
            stop = min(start + self.entry_bytes, end_of_block)
            if stop < end_of_block:
                newline = block.rfind("\n", start, stop + 1)
                if newline < start:  # one line longer than an entry
                    newline = block.find("\n", stop)
                    newline = end_of_block if newline < 0 else newline
                stop = newline
            entry = block[start:stop]
            if entry.count("\n") >= self.entry_lines:
                match = _n_lines(self.entry_lines).match(block, start)
                assert match is not None
                stop = match.end() - 1
                entry = block[start:stop]
            if len(entry) > self.max_line and "\n" not in entry:
                entry = entry[: self.max_line] + f" [line cut at {self.max_line:,} characters]"
            yield entry
            start = stop + 1

    def _into_head(self, entry: str, head: list[str]) -> str | None:
        """Put into `head` what of `entry` fits in the head (and the marker once it is full);
        return the rest, which belongs to the tail."""
        lines, size = entry.count("\n") + 1, _size(entry)
        if self.lines_written + lines <= self.head_lines and self.bytes_written + size <= self.head_bytes:
            self._count(lines, size)
            head.append(entry)
            return None
        room_lines, room_bytes = self.head_lines - self.lines_written, self.head_bytes - self.bytes_written
        parts = entry.split("\n")
        fits = 0
        while fits < len(parts) and fits < room_lines and len(parts[fits].encode()) + 1 <= room_bytes:
            room_bytes -= len(parts[fits].encode()) + 1
            fits += 1
        if fits:
            first = "\n".join(parts[:fits])
            self._count(fits, _size(first))
            head.append(first)
        marker = (f"[runner] log over {self.head_lines:,} lines or {self.head_bytes:,} bytes: from here on only the last "
                  f"{self.tail_lines:,} lines / {self.tail_bytes:,} bytes are kept (limits.max_log_lines, "
                  "limits.max_log_bytes); the build goes on")
        self._count(1, len(marker) + 1)
        head.append(marker)
        self.in_tail = True
        return "\n".join(parts[fits:]) if fits < len(parts) else None

    def _count(self, lines: int, size: int) -> None:
        self.lines_written += lines
        self.bytes_written += size

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


def _size(entry: str) -> int:
    """Bytes the entry's lines take in the log, a newline each."""
    return len(entry.encode()) + 1


@lru_cache(maxsize=8)
def _n_lines(count: int) -> re.Pattern[str]:
    """Matches `count` whole lines (each with its newline) from a position."""
    return re.compile(r"(?:[^\n]*\n){" + str(count) + "}")

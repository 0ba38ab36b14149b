"""A build tool's output, read from a pipe in large chunks and cut into lines in linear time.

- `LineAssembler`: byte chunks to whole lines (UTF-8, CR/LF, invalid bytes replaced). Every
  byte is scanned a constant number of times, however long the line; a line longer than
  `MAX_LINE` bytes is handed on in pieces, so a tool that never prints a newline cannot grow
  the worker's memory without bound.
- `read_until_exit`: reads the pipe until EOF, or, once the tool has exited, until what the
  pipe already holds is read. A grandchild that keeps the write end open (runc keeps a RUN
  step alive after buildah is killed) must not hold the job.
"""

from __future__ import annotations

import os
import select
from collections.abc import Callable

#: bytes per read: a burst of output costs one read and one log append, not one per line
CHUNK = 64 * 1024
#: a line longer than this goes on in pieces of this size
MAX_LINE = 1024 * 1024
#: at most this much is read once the tool has exited (a pipe holds 64 KiB; the rest would
#: come from a process that outlived the tool and may never stop writing)
DRAIN_LIMIT = 1024 * 1024


class LineAssembler:
    """Feed raw chunks; `on_lines` gets the whole lines each chunk completes, as one batch."""

    def __init__(self, on_lines: Callable[[list[str]], None], max_line: int = MAX_LINE):
        self.on_lines = on_lines
        self.max_line = max_line
        self._pending: list[bytes] = []  # pieces of the unfinished line, joined once it ends
        self._pending_size = 0

    def feed(self, chunk: bytes) -> None:
        end = chunk.rfind(b"\n")
        if end < 0:
            self._hold(chunk)
            return
        head = chunk[:end]
        if self._pending:
            head = b"".join([*self._pending, head])
            self._pending, self._pending_size = [], 0
        text = head.decode("utf-8", "replace")  # "\n" never occurs inside a UTF-8 sequence
        lines = text.split("\n")
        self.on_lines([line.rstrip("\r") for line in lines] if "\r" in text else lines)
        if end + 1 < len(chunk):
            self._hold(chunk[end + 1:])

    def close(self) -> None:
        """Hand on the last line if the output did not end with a newline."""
        if self._pending:
            tail = b"".join(self._pending)
            self._pending, self._pending_size = [], 0
            self.on_lines([tail.decode("utf-8", "replace").rstrip("\r")])

    def _hold(self, piece: bytes) -> None:
        self._pending.append(piece)
        self._pending_size += len(piece)
        if self._pending_size <= self.max_line:
            return
        data = b"".join(self._pending)
        pieces, start = [], 0
        while len(data) - start > self.max_line:
            cut = _char_boundary(data, start + self.max_line, start)
            pieces.append(data[start:cut].decode("utf-8", "replace"))
            start = cut
        rest = data[start:]
        self._pending, self._pending_size = ([rest], len(rest)) if rest else ([], 0)
        self.on_lines(pieces)


def _char_boundary(data: bytes, at: int, floor: int) -> int:
    """`at`, moved back (at most 3 bytes) so that it does not split a UTF-8 sequence."""
    cut = at
    while cut > max(floor + 1, at - 3) and data[cut] & 0xC0 == 0x80:
        cut -= 1
    return cut if data[cut] & 0xC0 != 0x80 else at


def read_until_exit(fd: int, exited_fd: int, feed: Callable[[bytes], None]) -> bool:
    """Read `fd` in chunks into `feed` until EOF, or, once `exited_fd` turns readable (the
    tool has ended), until what the pipe holds is read. True if EOF was reached, False if
    some other process still holds the write end."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.register(exited_fd, select.POLLIN)
    while True:
        ready = {ready_fd for ready_fd, _ in poller.poll()}
        if exited_fd in ready:
            return _drain(fd, feed)
        data = os.read(fd, CHUNK)
        if not data:
            return True
        feed(data)


def _drain(fd: int, feed: Callable[[bytes], None]) -> bool:
    os.set_blocking(fd, False)
    left = DRAIN_LIMIT
    while left > 0:
        try:
            data = os.read(fd, min(CHUNK, left))
        except BlockingIOError:
            return False
        if not data:
            return True
        feed(data)
        left -= len(data)
    return False

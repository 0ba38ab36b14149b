"""Hostile HTTP hosts on loopback for the delivery tests and benchmarks: a raw TCP server that
reads a request and then answers as slowly as it likes, recording each connection (when it
opened, whether and when the client closed it)."""

from __future__ import annotations

import select
import socket
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Connection:
    opened: float  # monotonic
    request: bytes = b""
    closed: float | None = None
    closed_by_client: bool = False
    sent: int = 0


@dataclass
class SlowHost:
    """Answers each request slowly, `mode`:

      headers  the status line, then one byte of a header every `interval` seconds, for ever
      body     status and headers (Content-Length 1 GB), then one body byte every `interval`
      silent   nothing at all
      tls      one byte every `interval` of what looks like a TLS ServerHello record, for ever
      flood    a 200 whose headers or body (`flood` = "headers" / "body") come as fast as taken

    A connection ends when the client closes it, or at `release()`."""

    mode: str = "headers"
    interval: float = 0.2
    flood: str = "body"
    connections: list[Connection] = field(default_factory=list)
    url: str = ""
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    released: threading.Event = field(default_factory=threading.Event)
    _open: int = 0
    max_open: int = 0

    def start(self) -> SlowHost:
        self.server = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def open_now(self) -> int:
        with self.lock:
            return self._open

    def wait(self, predicate, timeout: float = 60, what: str = "the slow host") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"{what}: " + ", ".join(
                f"[opened {c.opened:.1f}, closed {c.closed and round(c.closed, 1)}, by the client {c.closed_by_client}]"
                for c in self.connections)
            time.sleep(0.02)

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.release()
        self.server.close()

    def _accept(self) -> None:
        while not self.released.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            record = Connection(time.monotonic())
            with self.lock:
                self.connections.append(record)
                self._open += 1
                self.max_open = max(self.max_open, self._open)
            threading.Thread(target=self._serve, args=(conn, record), daemon=True).start()

    def _serve(self, conn: socket.socket, record: Connection) -> None:
        try:
            if self.mode != "tls":
                record.request = read_request(conn)
            for piece in self._answer():
                if self.released.is_set():
                    break
                readable, _, _ = select.select([conn], [], [], self.interval if len(piece) <= 1 else 0)
                if readable and not conn.recv(65536, socket.MSG_PEEK):
                    record.closed_by_client = True
                    break
                if readable:
                    conn.recv(65536)
                conn.sendall(piece)
                record.sent += len(piece)
        except OSError:
            record.closed_by_client = not self.released.is_set()
        finally:
            record.closed = time.monotonic()
            with self.lock:
                self._open -= 1
            conn.close()

    def _answer(self):
        if self.mode == "headers":
            yield b"HTTP/1.1 200 OK\r\n"
            while True:
                yield b"X"
        elif self.mode == "body":
            yield b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n"
            while True:
                yield b"x"
        elif self.mode == "tls":
            yield b"\x16"  # a handshake record, 16 KiB long, that never ends
            yield b"\x03"
            yield b"\x03"
            yield b"\x40"
            yield b"\x00"
            while True:
                yield b"\x02"
        elif self.mode == "flood" and self.flood == "headers":
            yield b"HTTP/1.1 200 OK\r\n"
            while True:
                yield b"X-Flood: " + b"f" * 8000 + b"\r\n"
        elif self.mode == "flood":
            yield b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n"
            while True:
                yield b"x" * 65536
        else:  # silent
            while True:
                yield b""


def read_request(conn: socket.socket) -> bytes:
    """One HTTP/1.1 request with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body

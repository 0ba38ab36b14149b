"""The socket of one delivery request, every step of it bounded by one deadline.

Name lookup (on a thread of its own, left to finish alone if the deadline comes first),
connect, TLS handshake, sending, and the whole answer: each read and write is given only the
time left until the deadline, and the caller closes the socket at the end, so a host that
answers one byte a second holds a thread for the deadline and no longer. At most 16 KiB of
headers and `max_answer` bytes of body are read. Each request has a connection of its own
(`Connection: close`) and asks for no compression.

With an `AddressRule` (callbacks: runner/worker/notify/addresses.py) each address the name
resolves to is checked before it is connected to, and the connection goes to that checked
address, while the Host header and TLS (SNI, certificate verification against the system's
trust store) use the name: a name cannot resolve to one address for the check and another for
the connection (no DNS rebinding). Environment proxies (HTTPS_PROXY) are not used.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import socket
import ssl
import threading
import time
from typing import Any
from urllib.parse import quote, urlsplit

from runner.worker.notify.addresses import AddressRule

MAX_HEADERS = 16 * 1024
USER_AGENT = "ci-build-runner"
_TLS: ssl.SSLContext | None = None
#: what a request target may hold as it is (the rest is percent-encoded)
_TARGET_SAFE = "/%:@!$&'()*+,;=-._~"


class TimedOut(Exception):
    """The request's deadline passed."""


class Blocked(Exception):
    """Every address of the name is one the address rule refuses."""


class TooLarge(Exception):
    """The answer's headers are larger than MAX_HEADERS."""


class Clock:
    """Time left until a request's deadline (time.monotonic)."""

    def __init__(self, deadline: float):
        self.deadline = deadline

    def left(self) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimedOut
        return remaining


def tls_context() -> ssl.SSLContext:
    """The system's trust store, hostname checked (made once)."""
    global _TLS
    if _TLS is None:
        _TLS = ssl.create_default_context()
    return _TLS


def resolve(host: str, port: int, clock: Clock) -> list[tuple[int, Any]]:
    """(family, sockaddr) of each address of `host`, looked up within the clock's time."""
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        return [(family, (host, port) if family == socket.AF_INET else (host, port, 0, 0))]
    found: dict[str, Any] = {}

    def lookup() -> None:
        try:
            found["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            found["error"] = exc

    thread = threading.Thread(target=lookup, name="runner-resolve", daemon=True)
    thread.start()
    thread.join(clock.left())
    if thread.is_alive():
        raise TimedOut
    if "error" in found:
        raise found["error"]
    seen, out = set(), []
    for family, _, _, _, sockaddr in found["infos"]:
        if sockaddr[0] not in seen:
            seen.add(sockaddr[0])
            out.append((family, sockaddr))
    return out


class Connection:
    """One request's socket: every operation bounded by the clock; closed by `close`."""

    def __init__(self, sock: socket.socket, clock: Clock, host: str, port: int, default_port: int):
        self.sock, self.clock = sock, clock
        name = host if host.isascii() else host.encode("idna").decode("ascii")  # an international name, as DNS has it
        self.host_header = (f"[{name}]" if ":" in name else name) + ("" if port == default_port else f":{port}")

    @classmethod
    def open(cls, url: str, clock: Clock, rule: AddressRule | None) -> Connection:
        parts = urlsplit(url)
        host = parts.hostname or ""
        secure = parts.scheme == "https"
        default_port = 443 if secure else 80
        port = parts.port or default_port
        sock = cls._connect(host, port, clock, rule)
        if secure:
            try:
                sock = cls._handshake(sock, host, clock)
            except BaseException:
                sock.close()
                raise
        return cls(sock, clock, host, port, default_port)

    @staticmethod
    def _connect(host: str, port: int, clock: Clock, rule: AddressRule | None) -> socket.socket:
        refused: list[str] = []
        error: OSError | None = None
        for family, sockaddr in resolve(host, port, clock):
            if rule is not None:
                why = rule.refusal(ipaddress.ip_address(sockaddr[0].partition("%")[0]))
                if why:
                    refused.append(why)
                    continue
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(clock.left())
                sock.connect(sockaddr)  # the address just checked: no second lookup
                return sock
            except BaseException as exc:
                sock.close()
                if not isinstance(exc, OSError) or isinstance(exc, TimeoutError):
                    raise
                error = exc
        if error is not None:
            raise error
        if refused:
            raise Blocked(f"{host} may not be called back: {'; '.join(refused)} (allow it with callbacks.allowed_networks "
                          "or by naming the host in callbacks.allowed_hosts)")
        raise socket.gaierror(socket.EAI_NONAME, "no address")

    @staticmethod
    def _handshake(sock: socket.socket, host: str, clock: Clock) -> socket.socket:
        tls = tls_context().wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
        tls.settimeout(clock.left())  # the handshake as a whole is bounded by this (CPython's deadline)
        tls.do_handshake()
        return tls

    def exchange(self, method: str, url: str, headers: dict[str, str], body: bytes,
                 max_answer: int) -> tuple[int, Any, bytes]:
        """Send the request; return the answer's status, headers and (up to `max_answer` of) body."""
        self._send_request(method, url, headers, body)
        stream = _Stream(self.sock, self.clock, MAX_HEADERS)
        response = http.client.HTTPResponse(_Source(stream), method=method)  # type: ignore[arg-type]
        try:
            response.begin()
        except _Exhausted:
            raise TooLarge(f"answer headers over {MAX_HEADERS // 1024} KiB") from None
        # the status is known: the body only adds the host's message (or a listing), so what
        # arrives of it before the deadline or the byte budget is what is read
        stream.allow(max_answer + 1024)  # the body, and chunk framing around it
        pieces: list[bytes] = []
        got = 0
        try:
            while method != "HEAD" and got < max_answer and (piece := response.read1(max_answer - got)):
                pieces.append(piece)
                got += len(piece)
        except (TimedOut, _Exhausted, http.client.HTTPException, OSError):
            pass
        return response.status, response.headers, b"".join(pieces)

    def _send_request(self, method: str, url: str, extra: dict[str, str], body: bytes) -> None:
        parts = urlsplit(url)
        target = quote(parts.path or "/", safe=_TARGET_SAFE) + ("?" + quote(parts.query, safe=_TARGET_SAFE + "?")
                                                                 if parts.query else "")
        headers = {"Host": self.host_header, "User-Agent": USER_AGENT, "Accept-Encoding": "identity", "Connection": "close",
                   **extra}
        if body or method in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(body))
        lines = [f"{method} {target} HTTP/1.1"]
        for name, value in headers.items():
            if any(c in f"{name}{value}" for c in "\r\n\0"):
                raise http.client.InvalidURL(f"header {name!r} holds a line break")
            lines.append(f"{name}: {value}")
        payload = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "strict") + body
        view = memoryview(payload)
        while view:
            self.sock.settimeout(self.clock.left())
            sent = self.sock.send(view[: 64 * 1024])
            view = view[sent:]

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class _Exhausted(Exception):
    """More bytes came than the answer may have."""


class _Stream(io.RawIOBase):
    """The socket as http.client reads it: each read bounded by the clock, and by a byte budget."""

    def __init__(self, sock: socket.socket, clock: Clock, budget: int):
        self.sock, self.clock, self.budget, self.taken = sock, clock, budget, 0

    def allow(self, more: int) -> None:
        self.budget = self.taken + more

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        room = self.budget - self.taken
        if room <= 0:
            raise _Exhausted
        self.sock.settimeout(self.clock.left())
        view = memoryview(buffer)[: min(len(buffer), room)]
        count = self.sock.recv_into(view)
        self.taken += count
        return count


class _Source:
    """What http.client.HTTPResponse reads from (it asks for a file)."""

    def __init__(self, stream: _Stream):
        self.stream = stream

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(self.stream, buffer_size=1024)

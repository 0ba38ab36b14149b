"""One HTTP request of a delivery, and its answer sorted into delivered, worth retrying, or refused.

Retried: no answer (connection refused or reset, timeout), 5xx, 408, 425, 429, and a 403 that
says a rate limit was hit (GitHub's `x-ratelimit-remaining: 0` or a Retry-After); a Retry-After
or rate-limit reset time is honoured as the least wait. Anything else below 500 is final:
401 (the token), 404 (no such repository or commit, or the token cannot see it), 422.
Redirects are not followed.

A request has one deadline for all of it: name lookup, connect, TLS handshake, sending, and
the whole answer. Every read and write is given only the time left, and the socket is closed
at the deadline, so a host that answers one byte a second holds a delivery thread for the
deadline and no longer. At most 16 KiB of headers and `Outgoing.max_answer` bytes of body are
read: 4 KiB, or 64 KiB for a commit's statuses listed by a configured git host. Each request has a connection of its own
(`Connection: close`) and asks for no compression.

With an `AddressRule` (callbacks: runner/worker/notify/addresses.py) the name is resolved
here and each address checked before it is connected to; the connection goes to that checked
address, while the Host header and TLS (SNI, certificate verification) use the name. A name
that resolves to a refused address cannot switch after the check (no DNS rebinding).
Environment proxies (HTTPS_PROXY) are not used: a delivery connects to its host itself.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from runner.worker.notify.addresses import AddressRule

RETRY_STATUSES = {408, 425, 429}
MAX_ANSWER = 4 * 1024  # body bytes read of an answer: enough for a status code's reason
MAX_LISTING = 64 * 1024  # a commit's statuses, listed by the operator's own git host
MAX_HEADERS = 16 * 1024
USER_AGENT = "ci-build-runner"
_TLS: ssl.SSLContext | None = None


@dataclass(frozen=True)
class Outgoing:
    """A request to make. Its headers may hold a token: never log them."""

    method: str
    url: str
    shown: str  # the URL to name in logs and errors (no credentials)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    max_answer: int = MAX_ANSWER


@dataclass
class Answer:
    status: int | None  # None: no answer
    reason: str  # short, for logs: "HTTP 503: Service Unavailable", "no answer within 10s"
    retry: bool = False
    retry_after: float | None = None
    data: Any = None  # the JSON body, when there is one
    #: no request was made: the address rule refused every address the name has
    blocked: bool = False

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def host_failed(self) -> bool:
        """Does this answer say the host is failing (what a host's circuit counts)?"""
        return self.retry and not self.blocked


class TimedOut(Exception):
    """The request's deadline passed."""


class Blocked(Exception):
    """Every address of the name is one the address rule refuses."""


class Clock:
    """Time left until a request's deadline (time.monotonic)."""

    def __init__(self, deadline: float):
        self.deadline = deadline

    def left(self) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimedOut
        return remaining


def send(call: Outgoing, timeout: float, deadline: float | None = None, rule: AddressRule | None = None) -> Answer:
    """Make `call` within `timeout` seconds (and before `deadline`, a time.monotonic value,
    if that comes first), connecting only to addresses `rule` allows."""
    now = time.monotonic()
    cut_short = deadline is not None and deadline < now + timeout
    limit = deadline if cut_short and deadline is not None else now + timeout
    clock = Clock(limit)
    connection: _Connection | None = None
    try:
        connection = _Connection.open(call.url, clock, rule)
        return connection.exchange(call)
    except Blocked as why:
        return Answer(None, str(why), blocked=True)
    except (TimedOut, TimeoutError):
        within = f"within the attempt's time left ({limit - now:.1f}s)" if cut_short else f"within {timeout:g}s"
        return Answer(None, f"no answer {within}", retry=True)
    except ssl.SSLCertVerificationError as exc:
        return Answer(None, f"TLS certificate not accepted: {exc.verify_message or exc.reason}", retry=True)
    except ssl.SSLError as exc:
        return Answer(None, f"TLS failed ({exc.reason or type(exc).__name__})", retry=True)
    except _TooLarge as exc:
        return Answer(None, str(exc), retry=True)
    except http.client.HTTPException as exc:
        return Answer(None, f"not an HTTP answer ({type(exc).__name__})", retry=True)
    except ConnectionRefusedError:
        return Answer(None, "could not connect (refused)", retry=True)
    except socket.gaierror as exc:
        return Answer(None, f"could not resolve the host ({exc.strerror})", retry=True)
    except OSError as exc:  # reset, unreachable, a connection dropped while the answer was read
        return Answer(None, f"connection lost ({type(exc).__name__})", retry=True)
    finally:
        if connection is not None:
            connection.close()


def classify(status: int, headers: Any, raw: bytes) -> Answer:
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        data = None
    message = host_message(data) or raw[:200].decode("utf-8", "replace")
    reason = f"HTTP {status}" + (f": {one_line(message)}" if message and status >= 300 else "")
    rate_limited = status == 403 and (headers.get("x-ratelimit-remaining") == "0" or "retry-after" in headers)
    retry = status >= 500 or status in RETRY_STATUSES or rate_limited
    return Answer(status, reason, retry=retry, retry_after=wait_hint(headers) if retry else None, data=data)


def host_message(data: Any) -> str:
    """What a host says went wrong: GitHub and Gitea {"message"}, GitLab {"message"} or {"error"}."""
    if isinstance(data, dict):
        for key in ("message", "error"):
            value = data.get(key)
            if isinstance(value, str | list | dict):
                return value if isinstance(value, str) else json.dumps(value)
    return ""


def one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def wait_hint(headers: Any) -> float | None:
    """Seconds the server asks us to wait: Retry-After (seconds), or until x-ratelimit-reset (epoch)."""
    after = str(headers.get("retry-after", "")).strip()
    if after.isdigit():
        return float(after)
    reset = str(headers.get("x-ratelimit-reset", "")).strip()
    if reset.isdigit() and headers.get("x-ratelimit-remaining") == "0":
        return max(0.0, float(reset) - time.time())
    return None


# -- the connection ------------------------------------------------------------------------------------
class _TooLarge(Exception):
    pass


def tls_context() -> ssl.SSLContext:
    """The system's trust store, hostname checked (made once)."""
    global _TLS
    if _TLS is None:
        _TLS = ssl.create_default_context()
    return _TLS


def resolve(host: str, port: int, clock: Clock) -> list[tuple[int, Any]]:
    """(family, sockaddr) of each address of `host`, looked up within the clock's time: the
    lookup runs on a thread of its own, left to finish alone if the deadline comes first."""
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


class _Connection:
    """One request's socket: every operation bounded by the clock; closed by `close`."""

    def __init__(self, sock: socket.socket, clock: Clock, host: str, port: int, default_port: int):
        self.sock, self.clock = sock, clock
        self.host_header = (f"[{host}]" if ":" in host else host) + ("" if port == default_port else f":{port}")

    @classmethod
    def open(cls, url: str, clock: Clock, rule: AddressRule | None) -> _Connection:
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

    def exchange(self, call: Outgoing) -> Answer:
        self._send_request(call)
        stream = _Stream(self.sock, self.clock, MAX_HEADERS)
        response = http.client.HTTPResponse(_Source(stream), method=call.method)  # type: ignore[arg-type]
        try:
            response.begin()
        except _Exhausted:
            raise _TooLarge(f"answer headers over {MAX_HEADERS // 1024} KiB") from None
        # the status is known: the body only adds the host's message (or a listing), so what
        # arrives of it before the deadline or the byte budget is what is read
        stream.allow(call.max_answer + 1024)  # the body, and chunk framing around it
        pieces: list[bytes] = []
        got = 0
        try:
            while call.method != "HEAD" and got < call.max_answer and (piece := response.read1(call.max_answer - got)):
                pieces.append(piece)
                got += len(piece)
        except (TimedOut, _Exhausted, http.client.HTTPException, OSError):
            pass
        return classify(response.status, response.headers, b"".join(pieces))

    def _send_request(self, call: Outgoing) -> None:
        parts = urlsplit(call.url)
        target = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~") + (
            "?" + quote(parts.query, safe="/%:@!$&'()*+,;=-._~?") if parts.query else "")
        headers = {"Host": self.host_header, "User-Agent": USER_AGENT, "Accept-Encoding": "identity", "Connection": "close",
                   **call.headers}
        if call.body or call.method in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(call.body))
        lines = [f"{call.method} {target} HTTP/1.1"]
        for name, value in headers.items():
            if any(c in f"{name}{value}" for c in "\r\n\0"):
                raise http.client.InvalidURL(f"header {name!r} holds a line break")
            lines.append(f"{name}: {value}")
        payload = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "strict") + call.body
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

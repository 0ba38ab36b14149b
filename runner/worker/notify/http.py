"""One HTTP request of a delivery, and its answer sorted into delivered, worth retrying, or refused.

Retried: no answer (connection refused or reset, timeout), 5xx, 408, 425, 429, and a 403 that
says a rate limit was hit (GitHub's `x-ratelimit-remaining: 0` or a Retry-After); a Retry-After
or rate-limit reset time is honoured as the least wait. Anything else below 500 is final:
401 (the token), 404 (no such repository or commit, or the token cannot see it), 422.
Redirects are not followed.

A request has one deadline for all of it, and reads a few KiB of an answer at most; a
callback connects only to addresses its rule allows (runner/worker/notify/connection.py).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from runner.worker.notify.addresses import AddressRule
from runner.worker.notify.connection import Blocked, Clock, Connection, TimedOut, TooLarge

RETRY_STATUSES = {408, 425, 429}
MAX_ANSWER = 4 * 1024  # body bytes read of an answer: enough for a status code's reason
MAX_LISTING = 64 * 1024  # a commit's statuses, listed by the operator's own git host


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


def send(call: Outgoing, timeout: float, deadline: float | None = None, rule: AddressRule | None = None) -> Answer:
    """Make `call` within `timeout` seconds (and before `deadline`, a time.monotonic value,
    if that comes first), connecting only to addresses `rule` allows."""
    now = time.monotonic()
    cut_short = deadline is not None and deadline < now + timeout
    limit = deadline if cut_short and deadline is not None else now + timeout
    connection: Connection | None = None
    try:
        connection = Connection.open(call.url, Clock(limit), rule)
        return classify(*connection.exchange(call.method, call.url, call.headers, call.body, call.max_answer))
    except Blocked as why:
        return Answer(None, str(why), blocked=True)
    except (TimedOut, TimeoutError):
        within = f"within the attempt's time left ({limit - now:.1f}s)" if cut_short else f"within {timeout:g}s"
        return Answer(None, f"no answer {within}", retry=True)
    except ssl.SSLCertVerificationError as exc:
        return Answer(None, f"TLS certificate not accepted: {exc.verify_message or exc.reason}", retry=True)
    except ssl.SSLError as exc:
        return Answer(None, f"TLS failed ({exc.reason or type(exc).__name__})", retry=True)
    except TooLarge as exc:
        return Answer(None, str(exc), retry=True)
    except http.client.HTTPException as exc:
        return Answer(None, f"not an HTTP answer ({type(exc).__name__})", retry=True)
    except ConnectionRefusedError:
        return Answer(None, "could not connect (refused)", retry=True)
    except socket.gaierror as exc:
        return Answer(None, f"could not resolve the host ({exc.strerror})", retry=True)
    except OSError as exc:  # reset, unreachable, a connection dropped while the answer was read
        return Answer(None, f"connection lost ({type(exc).__name__})", retry=True)
    except UnicodeError:  # a host name IDNA cannot encode, a header that is not Latin-1
        return Answer(None, f"{call.shown} cannot be sent as HTTP (characters it may not hold)")
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

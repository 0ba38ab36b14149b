"""One HTTP request of a delivery, and its answer sorted into delivered, worth retrying, or refused.

Retried: no answer (connection refused or reset, timeout), 5xx, 408, 425, 429, and a 403 that
says a rate limit was hit (GitHub's `x-ratelimit-remaining: 0` or a Retry-After); a Retry-After
or rate-limit reset time is honoured as the least wait. Anything else below 500 is final:
401 (the token), 404 (no such repository or commit, or the token cannot see it), 422.
Redirects are not followed. An answer's body is read up to 64 KiB.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

RETRY_STATUSES = {408, 425, 429}
MAX_BODY = 64 * 1024
USER_AGENT = "ci-build-runner"


@dataclass(frozen=True)
class Outgoing:
    """A request to make. Its headers may hold a token: never log them."""

    method: str
    url: str
    shown: str  # the URL to name in logs and errors (no credentials)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class Answer:
    status: int | None  # None: no answer
    reason: str  # short, for logs: "HTTP 503: Service Unavailable", "timed out after 10s"
    retry: bool = False
    retry_after: float | None = None
    data: Any = None  # the JSON body, when there is one

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def send(call: Outgoing, timeout: float) -> Answer:
    import requests  # here: admission reads check_callback_url beside Outgoing, and the entry points need no requests

    try:
        with requests.request(call.method, call.url, data=call.body or None, headers={"User-Agent": USER_AGENT, **call.headers},
                              timeout=timeout, allow_redirects=False, stream=True) as response:
            raw = response.raw.read(MAX_BODY, decode_content=True) or b""
            return classify(response.status_code, response.headers, raw)
    except requests.Timeout:
        return Answer(None, f"no answer within {timeout:g}s", retry=True)
    except requests.ConnectionError:
        return Answer(None, "could not connect", retry=True)
    except requests.RequestException as exc:
        return Answer(None, type(exc).__name__, retry=True)
    except OSError as exc:  # a connection dropped while the body was read
        return Answer(None, f"connection lost ({type(exc).__name__})", retry=True)


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

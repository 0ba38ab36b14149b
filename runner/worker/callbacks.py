"""Completion callbacks: POST the final job record to the job's `callback_url`.

The pipeline calls `on_job_finished` after every job; it returns at once and delivers on a
background thread, retrying with exponential backoff. A callback never changes the job.

Request: `Content-Type: application/json`, body = the JobRecord JSON, and
  X-Runner-Event: job.finished
  X-Runner-Delivery: <uuid, the same on every retry>
  X-Runner-Signature-256: sha256=<hex HMAC-SHA256 of the raw body, key callbacks.secret>
Retried on network errors, 5xx, 408, 425 and 429 (honouring a numeric Retry-After up to
callbacks.max_backoff); any other status below 500 is final.
"""

from __future__ import annotations

import atexit
import fnmatch
import hashlib
import hmac
import logging
import threading
import time
import uuid
from urllib.parse import urlsplit

import requests

from runner.config.sections import CallbacksConfig
from runner.config.settings import Settings
from runner.core.jobs import BuildRequest, JobRecord
from runner.sources.git import mask_url

log = logging.getLogger("runner.callbacks")

SIGNATURE_HEADER = "X-Runner-Signature-256"
RETRY_STATUSES = {408, 425, 429}
_pending: set[threading.Thread] = set()
_lock = threading.Lock()


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def check_callback_url(url: str, cfg: CallbacksConfig) -> str | None:
    """Why `url` may not be called back, or None if it may."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return f"callback_url {mask_url(url)!r} is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"callback_url {mask_url(url)!r} must be an http:// or https:// URL"
    if cfg.allowed_hosts is not None:
        names = [parts.hostname] + ([f"{parts.hostname}:{port}"] if port else [])
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names for pattern in cfg.allowed_hosts):
            return (f"callback host {parts.hostname!r} is not allowed "
                    f"(callbacks.allowed_hosts: {', '.join(cfg.allowed_hosts) or 'none'})")
    return None


def on_job_finished(record: JobRecord, request: BuildRequest, settings: Settings) -> None:
    url = request.callback_url
    if not url:
        return
    body = record.model_dump_json().encode()
    thread = threading.Thread(target=_run, args=(url, body, settings.callbacks, record.id),
                              name=f"callback-{record.id}", daemon=True)
    with _lock:
        _pending.add(thread)
    thread.start()


def _run(url: str, body: bytes, cfg: CallbacksConfig, job_id: str) -> None:
    try:
        deliver(url, body, cfg, job_id)
    except Exception:  # noqa: BLE001 - a callback bug must never reach the worker
        log.exception("callback for job %s crashed", job_id)
    finally:
        with _lock:
            _pending.discard(threading.current_thread())


def deliver(url: str, body: bytes, cfg: CallbacksConfig, job_id: str, sleep=time.sleep) -> bool:
    """POST `body` to `url` until it is accepted or the attempts run out. True if delivered."""
    shown = mask_url(url)
    problem = check_callback_url(url, cfg)
    if problem:
        log.warning("job %s: not calling back: %s", job_id, problem)
        return False
    headers = {"Content-Type": "application/json", "User-Agent": "ci-build-runner",
               "X-Runner-Event": "job.finished", "X-Runner-Delivery": str(uuid.uuid4())}
    try:
        secret = cfg.secret_value("callbacks.secret")
    except ValueError as exc:
        log.warning("job %s: not calling back: %s", job_id, exc)
        return False
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, body)
    else:
        log.warning("job %s: callbacks.secret is not set; the callback to %s is unsigned", job_id, shown)
    delay = cfg.backoff
    for attempt in range(1, cfg.attempts + 1):
        wait = delay
        try:
            response = requests.post(url, data=body, headers=headers, timeout=cfg.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            reason = type(exc).__name__
        else:
            if response.status_code < 300:
                log.info("job %s: callback to %s delivered (HTTP %s, attempt %d)", job_id, shown, response.status_code, attempt)
                return True
            reason = f"HTTP {response.status_code}"
            if response.status_code < 500 and response.status_code not in RETRY_STATUSES:
                log.warning("job %s: callback to %s refused with %s; not retrying", job_id, shown, reason)
                return False
            retry_after = response.headers.get("Retry-After", "")
            if retry_after.isdigit():
                wait = max(delay, float(retry_after))
        if attempt < cfg.attempts:
            wait = min(wait, cfg.max_backoff)
            log.info("job %s: callback to %s failed (%s); retry %d in %.1fs", job_id, shown, reason, attempt, wait)
            sleep(wait)
            delay *= 2
    log.warning("job %s: callback to %s failed %d times (last: %s); giving up", job_id, shown, cfg.attempts, reason)
    return False


def drain(timeout: float = 10.0) -> None:
    """Wait up to `timeout` seconds for callbacks still being delivered (at process exit)."""
    deadline = time.monotonic() + timeout
    with _lock:
        threads = list(_pending)
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


atexit.register(drain)

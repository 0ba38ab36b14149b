"""Process log lines (the worker's and `runner serve`'s own, not a job's build log): the job a
line belongs to, secrets masked, and text or JSON formatting.

The pipeline runs each job inside `job_fields(...)`: every line logged in that job's thread
then carries `job_id`, `executor` and `worker`, and the job's secret values are masked in it.
Handlers get `JobFieldsFilter` and `Redactor` (runner/config/logs.py installs them), so the
masking happens once, before any formatter sees the record."""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime

MASK = "***"
#: shorter values are not masked (masking "a" would garble every line); the worker gives job
#: logs the same list (runner/worker/pipeline.secrets_to_mask)
MIN_SECRET = 3
JOB_KEYS = ("job_id", "executor", "worker")
#: more fields a line may carry (a job's end, a queued job, an HTTP request), written by the JSON
#: formatter when set; nothing else of a record is. Their text values are masked like the message.
EXTRA_KEYS = ("status", "error_kind", "duration_seconds", "attempts", "submitted_by", "queue",
              "http_method", "http_path", "http_status", "http_version", "client")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True)
class JobFields:
    job_id: str
    executor: str
    worker: str
    secrets: tuple[str, ...] = ()


#: the job the current thread is running (set by the pipeline around one job)
CURRENT_JOB: ContextVar[JobFields | None] = ContextVar("runner_current_job", default=None)

#: secrets this process learned while running (registry logins from credential helpers and
#: docker config files): masked in every process log line from then on, and in the job logs of
#: jobs that start later. The newest REMEMBERED are kept (rotated-out tokens have expired).
REMEMBERED = 256
_remembered: deque[str] = deque(maxlen=REMEMBERED)
_remembered_lock = threading.Lock()


def remember_secret(value: str) -> None:
    """Mask `value` in this process's log lines from now on (see REMEMBERED)."""
    if len(value) < MIN_SECRET:
        return
    with _remembered_lock:
        if value not in _remembered:
            _remembered.append(value)


def remembered_secrets() -> tuple[str, ...]:
    with _remembered_lock:
        return tuple(_remembered)


@contextmanager
def job_fields(job_id: str, executor: str, worker: str, secrets: Iterable[str] = ()) -> Iterator[None]:
    """Lines logged inside carry the job's fields, and `secrets` are masked in them."""
    token = CURRENT_JOB.set(JobFields(job_id, executor, worker, tuple(s for s in secrets if len(s) >= MIN_SECRET)))
    try:
        yield
    finally:
        CURRENT_JOB.reset(token)


def mask(text: str, secrets: Iterable[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):  # the longest first: one may contain another
        text = text.replace(secret, MASK)
    return text


class JobFieldsFilter(logging.Filter):
    """Puts the current job's fields on the record (unless it has them already)."""

    def filter(self, record: logging.LogRecord) -> bool:
        job = CURRENT_JOB.get()
        if job is not None and getattr(record, "job_id", None) is None:
            record.job_id, record.executor, record.worker = job.job_id, job.executor, job.worker
        return True


class Redactor(logging.Filter):
    """Masks the configured secrets and the current job's in the message, the exception text
    and the stack of every record. The record keeps only the masked, formatted message, so no
    handler or formatter can reach the raw arguments."""

    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        self.secrets = tuple(sorted({s for s in secrets if len(s) >= MIN_SECRET}, key=len, reverse=True))

    def filter(self, record: logging.LogRecord) -> bool:
        job = CURRENT_JOB.get()
        secrets = self.secrets + remembered_secrets() + (job.secrets if job is not None else ())
        try:
            message = record.getMessage()
        except Exception as exc:  # noqa: BLE001 - a bad format string must not stop the line (or leak its arguments)
            message = f"(a log message that could not be formatted: {type(exc).__name__})"
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if secrets:
            message = mask(message, secrets)
            record.exc_text = mask(record.exc_text, secrets) if record.exc_text else record.exc_text
            record.stack_info = mask(record.stack_info, secrets) if record.stack_info else record.stack_info
        record.msg, record.args = message, None
        if secrets:
            for key in EXTRA_KEYS:
                if isinstance(value := getattr(record, key, None), str):
                    setattr(record, key, mask(value, secrets))
        return True


class AccessFields(logging.Filter):
    """uvicorn's access lines ('%s - "%s %s HTTP/%s" %d') as fields too: client, http_method,
    http_path, http_version, http_status. The message stays as uvicorn wrote it."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            record.client, record.http_method, record.http_path, record.http_version, record.http_status = args
        return True


class TextFormatter(logging.Formatter):
    """The classic line, with `[job ID]` after the logger name on a job's lines."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self.job_style = logging.PercentStyle(TEXT_FORMAT.replace("%(name)s:", "%(name)s [job %(job_id)s]:"))

    def formatMessage(self, record: logging.LogRecord) -> str:
        if getattr(record, "job_id", None):
            return self.job_style.format(record)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message; job_id, executor
    and worker on a job's lines; the EXTRA_KEYS a line has; exception and stack when there are.
    Nothing else of the record (its arguments, other `extra` data) is written."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in JOB_KEYS:
            if value := getattr(record, key, None):
                entry[key] = str(value)
        for key in EXTRA_KEYS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value if isinstance(value, int | float) else str(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False, default=str)

"""Set up a process's own log (the worker's, `runner serve`'s) from `log:` in the settings.

One handler on the root logger, writing to stderr: text lines, or one JSON object per line.
Its filters put the current job's fields on each record (runner.core.process_log) and mask
every secret the settings hold, plus the running job's own. In JSON mode whatever is written
straight to stdout or stderr (a library's print, a notice written to the original streams, a
traceback) becomes a JSON line too, so a log collector never meets a line it cannot parse."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from pydantic import BaseModel, SecretStr

from runner.config.settings import Settings
from runner.core.process_log import AccessFields, JobFieldsFilter, JsonFormatter, Redactor, TextFormatter

STREAM_LOGGER = "runner.stdio"


def settings_secrets(settings: Settings) -> list[str]:
    """Every secret value the settings hold or point to (inline values, `*_file` contents read
    now, the Redis passwords: in redis_url, its password file, the sentinels'): masked in every
    process log line."""
    found = settings.redis_target().secrets()
    found += _secrets(settings)
    return [value for value in found if value]


def _secrets(value: Any) -> Iterator[str]:
    if isinstance(value, SecretStr):
        yield value.get_secret_value()
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secrets(getattr(value, name))
        reader = getattr(value, "secret_value", None) or getattr(value, "secret", None)  # *_file sections, registries
        if callable(reader):
            try:
                yield reader() or ""
            except (ValueError, OSError):  # an unreadable file: nothing to mask from it yet
                pass
    elif isinstance(value, dict):
        for item in value.values():
            yield from _secrets(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _secrets(item)


class LineLogger:
    """A text stream whose every line becomes a log record (JSON mode's stdout and stderr).
    It has no file descriptor, so notices written to one (Celery's "Warm shutdown") are dropped;
    the worker logs its own shutdown line.
    Writes made while a record is being written (a handler reporting its own error) go to the
    real stream, so logging never recurses."""

    def __init__(self, logger: logging.Logger, level: int, fallback: TextIO):
        self.logger, self.level, self.fallback = logger, level, fallback
        self._partial = ""
        self._busy = threading.local()
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        if getattr(self._busy, "on", False):
            return self.fallback.write(text)
        with self._lock:
            lines = (self._partial + text).split("\n")
            self._partial = lines.pop()
        for line in lines:
            self._log(line)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            line, self._partial = self._partial, ""
        if line:
            self._log(line)

    def _log(self, line: str) -> None:
        if not line.strip():
            return
        self._busy.on = True
        try:
            self.logger.log(self.level, "%s", line.rstrip("\r"))
        finally:
            self._busy.on = False

    def isatty(self) -> bool:
        return False

    # No fileno(): what writes to a stream's file descriptor directly (Celery's shutdown
    # notices, through os.write) would bypass the log and break its JSON lines.

    @property
    def encoding(self) -> str:
        return getattr(self.fallback, "encoding", "utf-8")


def configure_logging(settings: Settings, level: str | int = "INFO", stream: TextIO | None = None,
                      fields: Sequence[logging.Filter] = ()) -> logging.Handler:
    """Replace the root logger's handlers with ours; returns the handler. `fields`: filters
    that put more job fields on records (they see the record before it is masked)."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    for adds_fields in (*fields, AccessFields(), JobFieldsFilter()):
        handler.addFilter(adds_fields)
    handler.addFilter(Redactor(settings_secrets(settings)))
    json_lines = settings.log.format == "json"
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
    if json_lines:
        stdio = logging.getLogger(STREAM_LOGGER)
        # Celery writes its shutdown notices to sys.__stdout__, not sys.stdout, so the original
        # streams are replaced too (typeshed: Final, and no LineLogger is a TextIOWrapper)
        sys.stdout = sys.__stdout__ = LineLogger(stdio, logging.INFO, stream)  # type: ignore[misc, assignment]
        sys.stderr = sys.__stderr__ = LineLogger(stdio, logging.WARNING, stream)  # type: ignore[misc, assignment]
    return handler


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if not issubclass(args.exc_type, SystemExit):
        _log_uncaught(args.exc_type, args.exc_value, args.exc_traceback)


def _log_uncaught(kind, value, traceback) -> None:
    """An exception nobody caught: one record (masked, and JSON in JSON mode), not raw stderr."""
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, traceback)
        return
    logging.getLogger("runner").critical("uncaught exception", exc_info=(kind, value, traceback))

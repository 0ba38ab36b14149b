"""Contexts uploaded as a tar (the CLI, the API, or straight into Redis): read from the job
store chunk by chunk and checked by the spool (runner.context.spool)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from runner.context.build_context import BuildContext
from runner.context.limits import ContextLimits
from runner.context.spool import spool_context
from runner.core.cancel import CancelToken
from runner.core.jobs import BuildRequest
from runner.core.log_sink import LogSink


class UploadSource:
    """Contexts uploaded as a tar (CLI, API, or straight into Redis), read chunk by chunk."""

    def __init__(self, chunks: Callable[[str], Iterable[bytes]], limits: ContextLimits):
        self.chunks, self.limits = chunks, limits

    def prepare(self, request: BuildRequest, workspace: Path, log: LogSink, cancel: CancelToken) -> BuildContext:
        context = spool_context(self.chunks(request.id), workspace, request.dockerfile, self.limits, cancel)
        log.line(f"[runner] context: {context.size:,} bytes")
        return context

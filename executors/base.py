"""The executor seam: the one protocol every executor implements, its results and errors.

An executor receives a validated job, a build context (a checked tar on disk), a log sink
and a cancel token. It builds, pushes every tag and returns each ref with the digest the
registry holds. Everything it creates carries `labels(job_id)` so a reaper can find it.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

from runner.jobs import BuildRequest, PushedImage

if TYPE_CHECKING:
    from runner.settings import Settings

LABEL_JOB = "io.runner.job"
LABEL_WORKER = "io.runner.worker"
LABEL_EXECUTOR = "io.runner.executor"
LABEL_NAMESPACE = "io.runner.namespace"


class ExecutorError(Exception):
    """A job failure with a kind the record stores and a message the user reads."""

    kind = "build"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidJob(ExecutorError):
    """The job cannot be built as asked (bad Dockerfile path, unknown secret, ...)."""

    kind = "invalid"


class BuildFailed(ExecutorError):
    kind = "build"


class RegistryAuthFailed(ExecutorError):
    kind = "auth"


class InfrastructureError(ExecutorError):
    """The engine, registry or tool is unreachable or broken; not the job's fault."""

    kind = "infrastructure"


class Cancelled(ExecutorError):
    """Raised when the cancel token fires; kind is 'cancelled' or 'timeout'."""

    def __init__(self, reason: str):
        self.kind = "timeout" if reason == "timeout" else "cancelled"
        super().__init__("the job timed out" if reason == "timeout" else "the job was cancelled")


class LogSink(Protocol):
    def line(self, text: str) -> None:
        """Append one line of build output (no trailing newline needed)."""

    def write(self, chunk: str) -> None:
        """Append raw output that may hold partial lines; lines are split and masked."""


class CancelToken:
    """Set by the pipeline when the job is cancelled or times out.

    Executors either poll `is_set()` between steps or register `on_cancel(callback)` to kill
    their processes / builds at once. Callbacks run once, on the thread that sets the token.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self.reason: str | None = None

    def set(self, reason: str = "cancelled") -> None:
        with self._lock:
            if self._event.is_set():
                return
            self.reason = reason
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # noqa: BLE001 - one failing kill must not stop the others
                pass

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Register a callback; returns a function that unregisters it."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)

                def remove() -> None:
                    with self._lock:
                        if callback in self._callbacks:
                            self._callbacks.remove(callback)

                return remove
        callback()
        return lambda: None

    def raise_if_set(self) -> None:
        if self._event.is_set():
            raise Cancelled(self.reason or "cancelled")


@dataclass
class BuildContext:
    """A build context checked by runner.context: a tar on disk plus a scratch directory."""

    tar_path: Path
    workspace: Path
    dockerfile: str = "Dockerfile"
    size: int = 0

    def open(self):
        return self.tar_path.open("rb")

    def extract_to(self, target: Path, cancel: CancelToken | None = None) -> Path:
        """Unpack into `target`, never writing outside it (runner.extract: no link the tar made
        is ever followed). `target` and the folders from the workspace root down to it are 0700."""
        from runner.extract import extract_tar, make_private
        from runner.tarstream import file_chunks

        make_private(self.workspace.parent, target)
        with closing(file_chunks(self.tar_path)) as chunks:
            extract_tar(chunks, target, cancel)
        return target


@dataclass
class CheckResult:
    ok: bool
    summary: str
    details: dict[str, str] = field(default_factory=dict)


class Executor(ABC):
    """Base class for executors. Subclasses set `name` and implement the three methods."""

    name: ClassVar[str]
    #: one line for `runner doctor` and docs: what enabling this executor means for the host
    risk: ClassVar[str] = ""

    def __init__(self, settings: Settings, worker_id: str = "local"):
        self.settings = settings
        self.worker_id = worker_id

    def labels(self, job_id: str) -> dict[str, str]:
        return {LABEL_JOB: job_id, LABEL_WORKER: self.worker_id, LABEL_EXECUTOR: self.name,
                LABEL_NAMESPACE: self.settings.worker.namespace}

    @abstractmethod
    def check(self) -> CheckResult:
        """Is this executor usable on this host? If not, say why."""

    @abstractmethod
    def run(self, job: BuildRequest, context: BuildContext, log: LogSink, cancel: CancelToken) -> list[PushedImage]:
        """Build and push; return every tag with its registry digest, or raise ExecutorError."""

    @abstractmethod
    def cleanup(self, job_id: str) -> None:
        """Remove everything this executor made for `job_id`. Idempotent; never raises."""

    def leftover_job_ids(self) -> list[str]:
        """Job ids this executor still holds resources for (the reaper calls cleanup on the
        ones whose job is not running). Labelled Docker objects are found without this."""
        return []

    def start(self) -> None:
        """Worker start-up hook (e.g. fill a warm pool). Executors are created per job, so
        long-lived state belongs at module level, keyed by whatever config it depends on."""

    def shutdown(self) -> None:
        """Release long-lived resources (pools); called when the worker stops."""


def job_secrets(settings: Settings, job: BuildRequest) -> dict[str, bytes]:
    """The values of the build secrets the job names; an unknown id is the job's mistake."""
    missing = [s for s in job.secrets if s not in settings.build_secrets]
    if missing:
        known = ", ".join(sorted(settings.build_secrets)) or "none"
        raise InvalidJob(f"the job asks for build secret(s) {', '.join(missing)}, which the runner config does not define "
                         f"(build_secrets has: {known}); add them to build_secrets or drop them from the job")
    return {s: settings.build_secrets[s].get_secret_value().encode() for s in job.secrets}

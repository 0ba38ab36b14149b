"""One job, start to end: claim, workspace, context, executor, record updates, cleanup.

Knows executors only through their protocol. Called by the Celery task (runner.queue) and
directly by tests, so it never imports Celery.
"""

from __future__ import annotations

import importlib
import logging
import shutil
import threading
import time
from collections.abc import Callable

import executors
from executors.base import BuildContext, Cancelled, CancelToken, ExecutorError, InfrastructureError, InvalidJob
from runner.context import spool_context
from runner.joblog import JobLog
from runner.jobs import BuildRequest, JobError, JobRecord, PushedImage, Status, now
from runner.settings import Settings
from runner.store import JobStore

log = logging.getLogger("runner.pipeline")

LEASE_TTL = 30.0
WATCH_INTERVAL = 0.25

#: Context sources other than uploads: type -> "module:function" taking
#: (request, workspace, joblog, cancel, settings) and returning a BuildContext.
CONTEXT_PREPARERS = {"git": "runner.gitsource:prepare_git_context"}
#: Called with (record, request, settings) after a job ends, e.g. completion callbacks. Must not raise.
FINISH_HOOKS = ["runner.callbacks:on_job_finished"]


def load_hook(spec: str) -> Callable:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def effective_timeout(request: BuildRequest, settings: Settings) -> int:
    return min(request.timeout or settings.limits.default_timeout, settings.limits.max_timeout)


class Watcher(threading.Thread):
    """Sets the cancel token on a cancel request or the deadline, and keeps the lease alive."""

    def __init__(self, store: JobStore, job_id: str, worker: str, cancel: CancelToken, deadline: float):
        super().__init__(daemon=True, name=f"watch-{job_id}")
        self.store, self.job_id, self.worker, self.cancel, self.deadline = store, job_id, worker, cancel, deadline
        self.stopped = threading.Event()
        self.lease_lost = False

    def run(self) -> None:
        last_renew = time.monotonic()
        while not self.stopped.wait(WATCH_INTERVAL):
            try:
                if self.store.cancel_requested(self.job_id):
                    self.cancel.set("cancelled")
                if time.monotonic() - last_renew > LEASE_TTL / 3:
                    if not self.store.renew_lease(self.job_id, self.worker, LEASE_TTL):
                        # The lease expired (e.g. Redis was down) and was re-taken; re-acquire if free.
                        if not self.store.acquire_lease(self.job_id, self.worker, LEASE_TTL):
                            self.lease_lost = True
                    last_renew = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - Redis outages are survived, not fatal
                log.warning("watcher for %s: %s", self.job_id, exc)
            if time.monotonic() >= self.deadline:
                self.cancel.set("timeout")

    def stop(self) -> None:
        self.stopped.set()


def failure(exc: ExecutorError, timeout: int, joblog: JobLog) -> tuple[Status, JobError]:
    """The final status and stored error for an executor error (messages masked)."""
    if isinstance(exc, Cancelled):
        if exc.kind == "timeout":
            return Status.timed_out, JobError(kind="timeout", message=f"{exc.message} after {timeout}s")
        return Status.cancelled, JobError(kind="cancelled", message=exc.message)
    return Status.failed, JobError(kind=exc.kind, message=joblog.mask(exc.message))


class Pipeline:
    def __init__(self, settings: Settings, store: JobStore, worker_id: str):
        self.settings, self.store, self.worker_id = settings, store, worker_id

    def ensure_record(self, request: BuildRequest) -> JobRecord:
        """A job posted straight to the queue has no record yet: create it (first write wins)."""
        record = self.store.get(request.id)
        if record is None:
            executor = request.executor or self.settings.default_executor
            self.store.create(JobRecord(id=request.id, request=request.redacted(), executor=executor,
                                        queue=self.settings.queue_for(executor)))
            record = self.store.get(request.id)
        assert record is not None
        return record

    def run(self, request: BuildRequest) -> JobRecord:
        record = self.ensure_record(request)
        if record.finished:
            log.info("job %s already %s; duplicate delivery ignored", request.id, record.status.value)
            return record
        if self.store.cancel_requested(request.id):
            return self._finish_unstarted(request.id, Status.cancelled, JobError(kind="cancelled", message="cancelled before it started"))
        if not self.store.acquire_lease(request.id, self.worker_id, LEASE_TTL):
            log.info("job %s is held by %s; duplicate delivery ignored", request.id, self.store.lease_holder(request.id))
            return record
        try:
            return self._run_claimed(request)
        finally:
            self.store.release_lease(request.id, self.worker_id)

    def _finish_unstarted(self, job_id: str, status: Status, error: JobError) -> JobRecord:
        def change(r: JobRecord) -> JobRecord | None:
            if r.finished:
                return None
            return r.model_copy(update={"status": status, "error": error, "finished_at": now()})

        record = self.store.update(job_id, change)
        JobLog(self.store, job_id).line(f"[runner] {error.message}")
        self.store.end_log(job_id, status)
        self.store.delete_context(job_id)
        assert record is not None
        return record

    def _run_claimed(self, request: BuildRequest) -> JobRecord:
        max_attempts = self.settings.limits.max_attempts

        def start(r: JobRecord) -> JobRecord | None:
            if r.finished:
                return None
            return r.model_copy(update={"status": Status.running, "worker": self.worker_id,
                                        "attempts": r.attempts + 1, "started_at": now(), "error": None})

        record = self.store.update(request.id, start)
        if record is None or record.finished:  # cancelled while we claimed it
            return record or self.ensure_record(request)
        joblog = JobLog(self.store, request.id, request.secret_values(),
                        self.settings.limits.max_log_bytes, self.settings.limits.max_log_lines)
        if record.attempts > max_attempts:
            message = f"gave up after {max_attempts} attempts: each attempt lost its worker (limits.max_attempts)"
            return self._finish(request, joblog, Status.failed, [], JobError(kind="worker_lost", message=message))
        if record.attempts > 1:
            joblog.line(f"[runner] attempt {record.attempts} (the previous attempt lost its worker)")
        joblog.line(f"[runner] job {request.id} running on {self.worker_id} with executor {record.executor}")

        cancel = CancelToken()
        timeout = effective_timeout(request, self.settings)
        watcher = Watcher(self.store, request.id, self.worker_id, cancel, time.monotonic() + timeout)
        watcher.start()
        workspace = self.settings.worker.workspace / request.id
        executor = None
        try:
            executor = self._executor(record.executor)
            context = self._context(request, workspace, joblog, cancel)
            cancel.raise_if_set()
            images = executor.run(request, context, joblog, cancel)
            cancel.raise_if_set()
            status, error = Status.succeeded, None
        except ExecutorError as exc:
            if cancel.is_set() and not isinstance(exc, Cancelled):
                exc = Cancelled(cancel.reason or "cancelled")
            images, (status, error) = [], failure(exc, timeout, joblog)
        except Exception as exc:  # noqa: BLE001 - a bug must fail the job, never the worker
            log.exception("job %s crashed", request.id)
            images, status = [], Status.failed
            error = JobError(kind="infrastructure", message=joblog.mask(f"internal error: {type(exc).__name__}: {exc}"))
        finally:
            watcher.stop()
            if executor is not None:
                executor.cleanup(request.id)
            shutil.rmtree(workspace, ignore_errors=True)
        return self._finish(request, joblog, status, images, error)

    def _finish(self, request: BuildRequest, joblog: JobLog, status: Status,
                images: list[PushedImage], error: JobError | None) -> JobRecord:
        joblog.flush()
        if error:
            joblog.line(f"[runner] {status.value}: {error.message}")
        else:
            joblog.line(f"[runner] {status.value}: " + ", ".join(f"{i.ref}@{i.digest}" for i in images))

        def change(r: JobRecord) -> JobRecord:
            return r.model_copy(update={"status": status, "images": images, "error": error, "finished_at": now()})

        record = self.store.update(request.id, change)
        self.store.end_log(request.id, status)
        self.store.delete_context(request.id)
        assert record is not None
        self._run_finish_hooks(record, request)
        return record

    def _run_finish_hooks(self, record: JobRecord, request: BuildRequest) -> None:
        for spec in FINISH_HOOKS:
            try:
                load_hook(spec)(record, request, self.settings)
            except (ImportError, AttributeError):
                continue
            except Exception:  # noqa: BLE001 - a hook never changes the job's result
                log.exception("finish hook %s failed for %s", spec, record.id)

    def _executor(self, name: str):
        if not executors.is_enabled(self.settings, name):
            raise InvalidJob(f"executor {name!r} is not enabled on this worker")
        try:
            return executors.create(self.settings, name, self.worker_id)
        except executors.UnknownExecutor as exc:
            raise InvalidJob(str(exc)) from None

    def _context(self, request: BuildRequest, workspace, joblog: JobLog, cancel: CancelToken) -> BuildContext:
        kind = request.context.type
        if kind == "upload":
            context = spool_context(self.store.context_chunks(request.id), workspace, request.dockerfile,
                                    self.settings.limits.max_context_bytes)
            joblog.line(f"[runner] context: {context.size:,} bytes")
            return context
        spec = CONTEXT_PREPARERS.get(kind)
        try:
            preparer = load_hook(spec) if spec else None
        except (ImportError, AttributeError):
            preparer = None
        if preparer is None:
            raise InfrastructureError(f"this worker cannot prepare {kind!r} contexts")
        return preparer(request, workspace, joblog, cancel, self.settings)

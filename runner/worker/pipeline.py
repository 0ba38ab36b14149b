"""One job, start to end: claim, workspace, context, executor, record updates, cleanup.

Knows executors only through their protocol, and takes them (and the context sources and
finish hooks) from the Worker that owns them. Called by the Celery task (runner.worker.queue)
and directly by tests, so it never imports Celery.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pydantic import ValidationError

from runner.config.settings import Settings
from runner.core.cancel import CancelToken
from runner.core.errors import Cancelled, ExecutorError
from runner.core.executor_metrics import Phase, PhaseClock
from runner.core.jobs import BuildRequest, JobError, JobRecord, PushedImage, RequeueReason, Status, now
from runner.core.process_log import MIN_SECRET, job_fields
from runner.store.joblog import JobLog
from runner.store.jobstore import JobStore
from runner.worker.admission import QUEUE, Rejected, admit, readable_request, rejection

if TYPE_CHECKING:
    from runner.worker.worker import Worker

log = logging.getLogger(__name__)

WATCH_INTERVAL = 0.25
MAINTENANCE_PREFIX = "maint:"  # lease holders that are a reaper or recovery, never a build
SUPERSEDED = "superseded"  # cancel reason: our lease lapsed and another worker took the job

#: Sends a job's message again after `delay` seconds (given by the Celery task).
Requeue = Callable[[BuildRequest, float], None]
#: the phase (runner_job_phase_seconds) that preparing each kind of context counts as
CONTEXT_PHASES: dict[str, Phase] = {"upload": "context", "git": "clone"}


def effective_timeout(request: BuildRequest, settings: Settings) -> int:
    return min(request.timeout or settings.limits.default_timeout, settings.limits.max_timeout)


def secrets_to_mask(request: BuildRequest, settings: Settings) -> list[str]:
    values = [*request.secret_values(), *(v.get_secret_value() for v in settings.build_secrets.values())]
    for registry in settings.registries:
        try:
            values.append(registry.secret() or "")
        except ValueError:
            pass
    return [v for v in values if len(v) >= MIN_SECRET]


def count_requeue(store: JobStore, executor: str, reason: RequeueReason) -> None:
    """Count a requeue in Redis, where it outlives this worker (runner serve exports it). A
    failure costs the count, never the requeue."""
    try:
        store.count_requeue(executor, reason)
    except Exception as exc:  # noqa: BLE001 - a metric never changes what happens to the job
        log.warning("could not count the requeue: %s", exc)


class Watcher(threading.Thread):
    """Sets the cancel token on a cancel request or the deadline, and keeps the lease alive.
    Its first look is at once: a cancel that raced the job's start is seen off the pickup path."""

    def __init__(self, store: JobStore, job_id: str, worker: str, cancel: CancelToken, deadline: float, lease_ttl: float):
        super().__init__(daemon=True, name=f"watch-{job_id}")
        self.store, self.job_id, self.worker, self.cancel, self.deadline = store, job_id, worker, cancel, deadline
        self.lease_ttl = lease_ttl
        self.stopped = threading.Event()

    def run(self) -> None:
        last_renew = time.monotonic()
        while True:
            try:
                if self.store.cancel_requested(self.job_id):
                    self.cancel.set("cancelled")
                if time.monotonic() - last_renew > self.lease_ttl / 4:
                    if not self.store.renew_lease(self.job_id, self.worker, self.lease_ttl):
                        # expired while Redis was away: take it back unless someone else holds it;
                        # if they do, the job was recovered elsewhere and this attempt must stop
                        if not self.store.acquire_lease(self.job_id, self.worker, self.lease_ttl):
                            self.cancel.set(SUPERSEDED)
                    last_renew = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - Redis outages are survived, not fatal
                log.warning("watcher for %s: %s", self.job_id, exc)
            if time.monotonic() >= self.deadline:
                self.cancel.set("timeout")
            if self.stopped.wait(WATCH_INTERVAL):
                return

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
    def __init__(self, worker: Worker, requeue: Requeue | None = None):
        self.worker, self.requeue = worker, requeue
        self.settings, self.store, self.worker_id = worker.settings, worker.store, worker.id
        self.lease_ttl = worker.settings.worker.lease_ttl

    def ensure_record(self, message: BuildRequest) -> tuple[JobRecord, bool]:
        """The job's record, and whether this message came straight to the queue (raw).

        A message from our entry points has a record already (admitted there). A raw one has
        none: it is admitted here, exactly as the entry points would, refused with a failed
        record if it must be, and its secret values moved to the store so requeues never
        carry them. The first record write wins."""
        record = self.store.get(message.id)
        if record is not None:
            return record, False
        executor = message.executor or self.settings.default_executor
        new = JobRecord(id=message.id, request=message.redacted(), executor=executor, queue=self.settings.queue_for(executor),
                        submitted_by="queue")
        try:
            admit(message, self.settings, QUEUE)
        except Rejected as exc:
            return self._refuse(new, exc), True
        if not self.store.create(new):
            return self.ensure_record(message)
        self.store.save_secrets(message.id, message.secret_arg_values())
        return self.store.get(message.id) or new, True

    def _refuse(self, record: JobRecord, exc: Rejected, message: str | None = None) -> JobRecord:
        """A raw queue message that admission refuses: a failed record, its context gone, and
        the message (`message`, or the redacted request) set aside in `<queue>.invalid`, as the
        transport does with garbage. A job that has the id already is left alone."""
        error = JobError(kind="invalid", message=f"refused: {exc}")
        refused = record.model_copy(update={"status": Status.failed, "error": error, "finished_at": now()})
        # set aside first: whoever reads the refused record finds the message there already
        self.store.set_aside(record.queue, message or record.request.model_dump_json(), str(exc))
        if not self.store.create(refused):
            return self.store.get(record.id) or refused
        log.warning("job %s: raw queue message refused: %s", record.id, exc)
        JobLog(self.store, record.id).line(f"[runner] {error.message}")
        self.store.end_job(record.id, Status.failed)
        return refused

    def refuse_payload(self, payload: object, queue: str, exc: ValidationError) -> None:
        """A queue message that is not a valid job is set aside in `<queue>.invalid` with the
        reason (build-arg values blanked). Where it names a valid job id, that job gets a failed
        record (kind invalid, naming the field; what could be read of the request) and its
        context is deleted, as for a message admission refuses; without one, nothing in it can
        be trusted to name a job."""
        refused = rejection(exc, "message")
        reason = str(refused)
        shown = dict(payload) if isinstance(payload, dict) else {"message": repr(payload)[:1000]}
        if isinstance(shown.get("build_args"), dict):
            shown["build_args"] = dict.fromkeys(shown["build_args"], "***")
        message = json.dumps({**shown, "refused": reason}, default=str)
        readable = readable_request(payload)
        if readable is None:
            log.error("queue %s: refused a job message: %s", queue, reason)
            self.store.set_aside(queue, message, reason)
            return
        prefix = f"{self.settings.worker.namespace}."
        executor = queue.removeprefix(prefix) if queue.startswith(prefix) else self.settings.default_executor
        record = JobRecord(id=readable.id, request=readable.redacted(), executor=executor, queue=queue, submitted_by="queue")
        self._refuse(record, refused, message)

    def run(self, message: BuildRequest) -> JobRecord:
        record, raw = self.ensure_record(message)
        if record.finished:
            log.info("job %s already %s; duplicate delivery ignored", message.id, record.status.value)
            return record
        if record.cancel_requested:  # cancelled while it ran on a worker that died (a queued one is finished)
            return self._finish_unstarted(message.id, Status.cancelled, JobError(kind="cancelled", message="cancelled before it started"))
        request = message
        if message.secret_build_args and not raw:
            try:
                request = message.with_secret_values(self.store.load_secrets(message.id))
            except ValueError as exc:
                return self._finish_unstarted(message.id, Status.failed, JobError(kind="invalid", message=str(exc)))
        if not self._acquire_lease(request.id):
            log.info("job %s is held by %s; duplicate delivery ignored", request.id, self.store.lease_holder(request.id))
            return record
        try:
            # the worker's own log lines about this job carry its fields, its secrets masked
            secrets = secrets_to_mask(request, self.settings)  # reads the registries' password files: once a job
            with job_fields(request.id, record.executor, self.worker_id, secrets):
                return self._run_claimed(request, secrets)
        finally:
            self.store.release_lease(request.id, self.worker_id)

    def _acquire_lease(self, job_id: str) -> bool:
        """Take the job's lease; wait out a reaper or recovery that holds it for a moment."""
        for _ in range(100):
            if self.store.acquire_lease(job_id, self.worker_id, self.lease_ttl):
                return True
            holder = self.store.lease_holder(job_id)
            if holder is not None and not holder.startswith(MAINTENANCE_PREFIX):
                return False
            time.sleep(0.1)
        return False

    def _finish_unstarted(self, job_id: str, status: Status, error: JobError) -> JobRecord:
        def change(r: JobRecord) -> JobRecord | None:
            if r.status is not Status.queued:  # finished, or running elsewhere (a duplicate delivery)
                return None
            return r.model_copy(update={"status": status, "error": error, "finished_at": now()})

        record = self.store.update(job_id, change)
        assert record is not None
        if record.status is status and record.error == error:
            JobLog(self.store, job_id).line(f"[runner] {error.message}")
            self.store.end_job(job_id, status)
            self.worker.tell("job_finished", record, record.request)
        return record

    def _run_claimed(self, request: BuildRequest, secrets: list[str]) -> JobRecord:
        max_attempts = self.settings.limits.max_attempts

        def start(r: JobRecord) -> JobRecord | None:
            if r.finished:
                return None
            return r.model_copy(update={"status": Status.running, "worker": self.worker_id,
                                        "attempts": r.attempts + 1, "started_at": now(), "error": None})

        record = self.store.update(request.id, start)
        if record is None or record.finished:  # cancelled while we claimed it
            return record or self.ensure_record(request)[0]
        joblog = JobLog(self.store, request.id, secrets, self.settings.limits.max_log_bytes, self.settings.limits.max_log_lines)
        if record.attempts > max_attempts:
            message = f"gave up after {max_attempts} attempts: each attempt lost its worker (limits.max_attempts)"
            return self._finish(request, joblog, Status.failed, [], JobError(kind="worker_lost", message=message))
        self.worker.tell("job_started", record, request)
        if record.attempts > 1:
            joblog.line(f"[runner] attempt {record.attempts} of at most {max_attempts}")
        joblog.line(f"[runner] job {request.id} running on {self.worker_id} with executor {record.executor}")

        cancel = CancelToken()
        timeout = effective_timeout(request, self.settings)
        watcher = Watcher(self.store, request.id, self.worker_id, cancel, time.monotonic() + timeout, self.lease_ttl)
        watcher.start()
        workspace = self.worker.env.job_dir(request.id)
        shutil.rmtree(workspace, ignore_errors=True)  # a dead attempt's leftovers
        executor, images, error, requeue_why = None, [], None, None
        try:
            with self.worker.running(request.id, cancel):
                executor = self.worker.executor(record.executor)
                with PhaseClock(self.worker.env.metrics, record.executor) as phases, phases(CONTEXT_PHASES[request.context.type]):
                    context = self.worker.source(request.context.type).prepare(request, workspace, joblog, cancel)
                cancel.raise_if_set()
                images = executor.run(request, context, joblog, cancel)
                cancel.raise_if_set()
                status = Status.succeeded
        except ExecutorError as exc:
            if cancel.is_set() and not isinstance(exc, Cancelled):
                exc = Cancelled(cancel.reason or "cancelled")
            status, error = failure(exc, timeout, joblog)
            requeue_why = self._requeue_reason(exc, cancel, record)
        except Exception as exc:  # noqa: BLE001 - a bug must fail the job, never the worker
            log.exception("job %s crashed", request.id)
            status = Status.failed
            error = JobError(kind="infrastructure", message=joblog.mask(f"internal error: {type(exc).__name__}: {exc}"))
        finally:
            watcher.stop()
        if cancel.reason == SUPERSEDED:
            # Another worker recovered the job while our lease had lapsed (e.g. a long Redis
            # outage): its attempt owns the record and the job's resources now.
            joblog.line(f"[runner] attempt on {self.worker_id} stopped: its lease lapsed and another worker took the job over")
            joblog.close()
            return self.store.get(request.id) or record
        if error is not None and requeue_why:
            self._cleanup(executor, request.id, workspace)  # before a new attempt can start
            return self._requeue(request, joblog, requeue_why, shutdown=cancel.reason == "shutdown")
        # Record the result first, then clean up: the user gets the answer without waiting
        # for image deletion or sidecar removal. The lease stays ours until cleanup is done,
        # so neither the reaper nor a redelivery can touch the job meanwhile.
        try:
            return self._finish(request, joblog, status, images, error)
        finally:
            self._cleanup(executor, request.id, workspace)

    @staticmethod
    def _cleanup(executor, job_id: str, workspace) -> None:
        if executor is not None:
            executor.cleanup(job_id)
        shutil.rmtree(workspace, ignore_errors=True)

    def _requeue_reason(self, exc: ExecutorError, cancel: CancelToken, record: JobRecord) -> str | None:
        if self.requeue is None:
            return None
        if cancel.reason == "shutdown":
            return "the worker is shutting down"
        if (exc.kind == "infrastructure" and self.settings.worker.engine_down_policy == "requeue"
                and record.attempts < self.settings.limits.max_attempts):
            return f"infrastructure error ({exc.message}); engine_down_policy is requeue"
        return None

    def _requeue(self, request: BuildRequest, joblog: JobLog, why: str, shutdown: bool) -> JobRecord:
        """Put the job back in its queue. A shutdown does not use up one of the job's attempts."""

        def change(r: JobRecord) -> JobRecord | None:
            if not self._ours(r):
                return None
            return r.model_copy(update={"status": Status.queued, "worker": None, "started_at": None, "queued_at": now(),
                                        "attempts": r.attempts - 1 if shutdown else r.attempts})

        record = self.store.update(request.id, change)
        assert self.requeue is not None and record is not None
        if record.status is not Status.queued:
            return record
        joblog.line(f"[runner] requeued: {why}")
        joblog.close()
        self.requeue(record.request, 0 if shutdown else 2.0)  # redacted: the values stay in the store
        count_requeue(self.store, record.executor, "shutdown" if shutdown else "engine_down")
        self.worker.tell("job_requeued", record, request)
        return record

    def _finish(self, request: BuildRequest, joblog: JobLog, status: Status,
                images: list[PushedImage], error: JobError | None) -> JobRecord:
        joblog.close()
        if error:
            joblog.line(f"[runner] {status.value}: {error.message}")
        else:
            joblog.line(f"[runner] {status.value}: " + ", ".join(f"{i.ref}@{i.digest}" for i in images))

        def change(r: JobRecord) -> JobRecord | None:
            if not self._ours(r):
                return None
            return r.model_copy(update={"status": status, "images": images, "error": error, "finished_at": now()})

        record = self.store.update(request.id, change)
        assert record is not None
        if record.status is not status:  # superseded: another attempt owns the record
            return record
        self.store.end_job(request.id, status)
        self.worker.tell("job_finished", record, request)
        return record

    def _ours(self, record: JobRecord) -> bool:
        """Does this attempt still own the record (running, on this worker)?"""
        return record.status is Status.running and record.worker == self.worker_id

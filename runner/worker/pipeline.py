"""One job on a worker: claim → context → run → end, and the clean-up after it.

Orchestration only: each change of the job's status is a move of runner/store/jobstate.py,
and every end goes through `end_job` (JobStore.end: the final record, the closing log line,
the end marker and the deliveries owed, in one transaction; then one "finished" event for the
listeners). Knows executors only through their protocol, and takes them (and the context
sources and listeners) from the Worker that owns them. Called by the Celery task
(runner.worker.queue) and directly by tests, so it never imports Celery.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from runner.config.settings import Settings
from runner.core.cancel import CancelToken
from runner.core.errors import Cancelled, ExecutorError
from runner.core.executor_metrics import Phase, PhaseClock
from runner.core.jobs import BuildRequest, JobError, JobRecord, PushedImage, Status
from runner.core.process_log import MIN_SECRET, job_fields, remembered_secrets
from runner.store import jobstate
from runner.store.joblog import JobLog
from runner.store.jobstate import Change
from runner.store.jobstore import JobStore
from runner.worker import faults
from runner.worker.admission import QUEUE, Rejected, admit, readable_request, rejection

if TYPE_CHECKING:
    from executors.base import Executor
    from runner.core.status import RequeueReason
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
    """The job's secret values, the config's, and the registry logins this process has learned
    (credential helpers, docker config files: runner.core.process_log.remembered_secrets)."""
    values = [*request.secret_values(), *(v.get_secret_value() for v in settings.build_secrets.values()),
              *remembered_secrets()]
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


def end_job(worker: Worker, job_id: str, change: Change, closing: str | None,
            request: BuildRequest | None = None) -> JobRecord | None:
    """End a job on this worker by `change` (a move of runner/store/jobstate.py): JobStore.end,
    then, if this call ended it, the listeners' one "finished" event. Returns the record."""
    record, ended = worker.store.end(job_id, change, closing)
    if ended:
        assert record is not None
        told_finished(worker, record, request)
    return record


def told_finished(worker: Worker, record: JobRecord, request: BuildRequest | None = None) -> None:
    """The job ended here (its end committed): tell the listeners, once."""
    faults.after("end")
    worker.tell("job_finished", record, request or record.request)
    faults.after("told")


@dataclass
class Outcome:
    """What an attempt came to: the job's final status, or `requeue` (why it goes back to its
    queue), or `superseded` (another worker took the job over while our lease had lapsed)."""

    status: Status
    images: list[PushedImage] = field(default_factory=list)
    error: JobError | None = None
    requeue: str | None = None
    shutdown: bool = False
    superseded: bool = False

    def closing(self) -> str:
        """The log's last line for this outcome."""
        if self.error:
            return f"[runner] {self.status.value}: {self.error.message}"
        return f"[runner] {self.status.value}: " + ", ".join(f"{i.ref}@{i.digest}" for i in self.images)


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

    # -- admission ----------------------------------------------------------------------------
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
        try:
            admission = admit(message, self.settings, QUEUE)
        except Rejected as exc:
            draft = jobstate.admitted(message.redacted(), executor, self.settings.queue_for(executor), statuses=False,
                                     submitted_by="queue")
            return self._refuse(draft, exc), True
        new = jobstate.admitted(message.redacted(), admission.executor, self.settings.queue_for(admission.executor),
                                admission.statuses, submitted_by="queue")
        if not self.store.create(new):
            return self.ensure_record(message)
        self.store.save_secrets(message.id, message.secret_arg_values())
        return self.store.get(message.id) or new, True

    def _refuse(self, record: JobRecord, exc: Rejected, message: str | None = None) -> JobRecord:
        """A raw queue message that admission refuses: a record born failed (jobstate.refuse),
        its context gone, and the message (`message`, or the redacted request) set aside in
        `<queue>.invalid`, as the transport does with garbage. A job that has the id already
        is left alone."""
        refused = jobstate.refuse(record, str(exc))
        assert refused is not None and refused.error is not None
        # set aside first: whoever reads the refused record finds the message there already
        self.store.set_aside(record.queue, message or record.request.model_dump_json(), str(exc))
        stored, ended = self.store.end_new(refused, f"[runner] {refused.error.message}")
        if ended:
            log.warning("job %s: raw queue message refused: %s", record.id, exc)
            told_finished(self.worker, stored)
        return stored

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
        self._refuse(jobstate.admitted(readable.redacted(), executor, queue, statuses=False, submitted_by="queue"),
                     refused, message)

    # -- one job: claim → context → run → end ---------------------------------------------------
    def run(self, message: BuildRequest) -> JobRecord:
        record, raw = self.ensure_record(message)
        if record.finished:
            log.info("job %s already %s; duplicate delivery ignored", message.id, record.status.value)
            return record
        if record.cancel_requested:  # cancelled while it ran on a worker that died (a queued one is finished)
            return self._end_unstarted(message.id, Status.cancelled,
                                       JobError(kind="cancelled", message=jobstate.CANCELLED_BEFORE_START))
        request = message
        if message.secret_build_args and not raw:
            try:
                request = message.with_secret_values(self.store.load_secrets(message.id))
            except ValueError as exc:
                return self._end_unstarted(message.id, Status.failed, JobError(kind="invalid", message=str(exc)))
        if not self._acquire_lease(request.id):
            log.info("job %s is held by %s; duplicate delivery ignored", request.id, self.store.lease_holder(request.id))
            return record
        try:
            # the worker's own log lines about this job carry its fields, its secrets masked
            secrets = secrets_to_mask(request, self.settings)  # reads the registries' password files: once a job
            with job_fields(request.id, record.executor, self.worker_id, secrets):
                return self._attempt(request, secrets)
        finally:
            self.store.release_lease(request.id, self.worker_id)
            faults.after("release")

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

    def _attempt(self, request: BuildRequest, secrets: list[str]) -> JobRecord:
        """One attempt, the lease held: claim the job, build it, and end it (or requeue it)."""
        record, claimed = self.store.move(request.id, partial(jobstate.claim, worker=self.worker_id))
        if not claimed:  # ended (cancelled) while we took the lease
            return record or self.ensure_record(request)[0]
        assert record is not None
        joblog = JobLog(self.store, request.id, secrets, self.settings.limits.max_log_bytes, self.settings.limits.max_log_lines)
        max_attempts = self.settings.limits.max_attempts
        if record.attempts > max_attempts:
            message = f"gave up after {max_attempts} attempts: each attempt lost its worker (limits.max_attempts)"
            return self._end(request, joblog, Outcome(Status.failed, error=JobError(kind="worker_lost", message=message)))
        self.worker.tell("job_started", record, request)
        if record.attempts > 1:
            joblog.line(f"[runner] attempt {record.attempts} of at most {max_attempts}")
        joblog.line(f"[runner] job {request.id} running on {self.worker_id} with executor {record.executor}")

        workspace = self.worker.env.job_dir(request.id)
        shutil.rmtree(workspace, ignore_errors=True)  # a dead attempt's leftovers
        outcome, executor = self._build(request, record, joblog, workspace)
        faults.after("result")
        if outcome.superseded:
            # Another worker recovered the job while our lease had lapsed (e.g. a long Redis
            # outage): its attempt owns the record and the job's resources now.
            joblog.line(f"[runner] attempt on {self.worker_id} stopped: its lease lapsed and another worker took the job over")
            joblog.close()
            return self.store.get(request.id) or record
        if outcome.requeue:
            self._cleanup(executor, request.id, workspace)  # before a new attempt can start
            return self._requeue(request, joblog, outcome.requeue, outcome.shutdown)
        # The end first, then clean up: the user gets the answer without waiting for image
        # deletion or sidecar removal. The lease stays ours until clean-up is done, so neither
        # the reaper nor a redelivery can touch the job meanwhile.
        try:
            return self._end(request, joblog, outcome)
        finally:
            self._cleanup(executor, request.id, workspace)
            faults.after("cleanup")

    def _build(self, request: BuildRequest, record: JobRecord, joblog: JobLog,
               workspace: Path) -> tuple[Outcome, Executor | None]:
        """Prepare the context and run the executor, under the watcher (cancel, deadline,
        lease). Returns the outcome and the executor that ran (for its clean-up)."""
        cancel = CancelToken()
        timeout = effective_timeout(request, self.settings)
        watcher = Watcher(self.store, request.id, self.worker_id, cancel, time.monotonic() + timeout, self.lease_ttl)
        watcher.start()
        executor = None
        try:
            with self.worker.running(request.id, cancel):
                executor = self.worker.executor(record.executor)
                with PhaseClock(self.worker.env.metrics, record.executor) as phases, phases(CONTEXT_PHASES[request.context.type]):
                    context = self.worker.source(request.context.type).prepare(request, workspace, joblog, cancel)
                cancel.raise_if_set()
                images = self.worker.supply.build(executor, request, context, joblog, cancel)
                cancel.raise_if_set()
                outcome = Outcome(Status.succeeded, images)
        except ExecutorError as exc:
            if cancel.is_set() and not isinstance(exc, Cancelled):
                exc = Cancelled(cancel.reason or "cancelled")
            status, error = failure(exc, timeout, joblog)
            outcome = Outcome(status, error=error, requeue=self._requeue_reason(exc, cancel, record),
                              shutdown=cancel.reason == "shutdown")
        except Exception as exc:  # noqa: BLE001 - a bug must fail the job, never the worker
            log.exception("job %s crashed", request.id)
            outcome = Outcome(Status.failed, error=JobError(
                kind="infrastructure", message=joblog.mask(f"internal error: {type(exc).__name__}: {exc}")))
        finally:
            watcher.stop()
        outcome.superseded = cancel.reason == SUPERSEDED
        return outcome, executor

    @staticmethod
    def _cleanup(executor: Executor | None, job_id: str, workspace: Path) -> None:
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

    # -- the moves after an attempt -------------------------------------------------------------
    def _requeue(self, request: BuildRequest, joblog: JobLog, why: str, shutdown: bool) -> JobRecord:
        """Put the job back in its queue (jobstate.requeue). A shutdown does not use up one of
        the job's attempts."""
        record, moved = self.store.move(request.id, partial(jobstate.requeue, worker=self.worker_id, shutdown=shutdown))
        assert self.requeue is not None and record is not None
        if not moved:
            return record
        joblog.line(f"[runner] requeued: {why}")
        joblog.close()
        # the job is free before its message goes: a worker that takes the message at once must
        # find the lease free, not drop the message as a duplicate of our attempt
        self.store.release_lease(request.id, self.worker_id)
        self.requeue(record.request, 0 if shutdown else 2.0)  # redacted: the values stay in the store
        count_requeue(self.store, record.executor, "shutdown" if shutdown else "engine_down")
        self.worker.tell("job_requeued", record, request)
        return record

    def _end(self, request: BuildRequest, joblog: JobLog, outcome: Outcome) -> JobRecord:
        """This attempt ends the job (jobstate.finish); superseded, it leaves the record alone."""
        change = partial(jobstate.finish, worker=self.worker_id, status=outcome.status, images=outcome.images,
                         error=outcome.error)
        record = end_job(self.worker, request.id, change, joblog.closing(outcome.closing()), request)
        assert record is not None
        return record

    def _end_unstarted(self, job_id: str, status: Status, error: JobError) -> JobRecord:
        """The job ends before an attempt begins (jobstate.finish_unstarted)."""
        change = partial(jobstate.finish_unstarted, status=status, error=error)
        record = end_job(self.worker, job_id, change, f"[runner] {error.message}")
        assert record is not None
        return record

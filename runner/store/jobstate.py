"""A job's life as a state machine. Each change of a job's status is one named, pure function
of its record: it returns the new record, or None when its guard says no (the record stays as
it is). JobStore.move applies one atomically; JobStore.end applies one that ends the job,
together with everything an end writes. Nothing else writes a job's status.

    admitted → queued;  claim: queued → running;  requeue, lost: running → queued;
    finish: running → succeeded | failed | cancelled | timed_out;  give_up: running → failed;
    cancel, finish_unstarted: queued → cancelled | failed;  refuse: (new) → failed;
    request_cancel: flags a running job (its watcher stops the attempt, which ends cancelled).

Who may make each (docs/architecture.md draws it): admission at the entry points
(runner/entry/submission.py) and on the worker for a raw message; claim, requeue, finish,
finish_unstarted and refuse the pipeline (runner/worker/pipeline.py); lost and give_up the
reaper (runner/worker/reaper.py); cancel and request_cancel runner/entry/control.py.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from runner.core.jobs import BuildRequest, JobError, JobRecord, PushedImage, Status, now

#: a move: the new record, or None to leave the record as it is
Change = Callable[[JobRecord], JobRecord | None]


def admitted(request: BuildRequest, executor: str, queue: str, statuses: bool,
             submitted_by: str | None = None) -> JobRecord:
    """A new job's record, queued: `request` as stored (redacted), and admission's answer to
    "does it get commit statuses?" kept with it, so nothing later decides it again;
    `submitted_by`: who handed it in (JobRecord.submitted_by)."""
    return JobRecord(id=request.id, request=request, executor=executor, queue=queue, statuses=statuses,
                     submitted_by=submitted_by)


def claim(record: JobRecord, worker: str, at: datetime | None = None) -> JobRecord | None:
    """An attempt begins on `worker` (which holds the job's lease): queued, or running on a
    worker whose lease lapsed (a redelivery after it died), becomes running here."""
    if record.finished:
        return None
    return record.model_copy(update={"status": Status.running, "worker": worker, "attempts": record.attempts + 1,
                                     "started_at": at or now(), "error": None})


def requeue(record: JobRecord, worker: str, shutdown: bool, at: datetime | None = None) -> JobRecord | None:
    """`worker`'s attempt stops and the job goes back to its queue. A shutdown does not use up
    one of the job's attempts."""
    if not owned(record, worker):
        return None
    return record.model_copy(update={"status": Status.queued, "worker": None, "started_at": None,
                                     "queued_at": at or now(),
                                     "attempts": record.attempts - 1 if shutdown else record.attempts})


def lost(record: JobRecord, max_attempts: int, at: datetime | None = None) -> JobRecord | None:
    """The job's worker stopped renewing its lease, and the job has attempts left (fewer than
    `max_attempts` made): back to its queue."""
    if record.status is not Status.running or gives_up(record, max_attempts):
        return None
    return record.model_copy(update={"status": Status.queued, "worker": None, "started_at": None,
                                     "queued_at": at or now()})


def give_up(record: JobRecord, max_attempts: int, at: datetime | None = None) -> JobRecord | None:
    """The job's worker stopped renewing its lease, and the job has had its `max_attempts`
    attempts: it fails (worker_lost)."""
    if record.status is not Status.running or not gives_up(record, max_attempts):
        return None
    message = f"gave up after {record.attempts} attempts: each attempt lost its worker (limits.max_attempts={max_attempts})"
    return record.model_copy(update={"status": Status.failed, "finished_at": at or now(),
                                     "error": JobError(kind="worker_lost", message=message)})


def gives_up(record: JobRecord, max_attempts: int) -> bool:
    """Has a job whose worker was lost had all its attempts (so give_up, not lost, applies)?"""
    return record.attempts >= max_attempts


CANCELLED_BEFORE_START = "cancelled before it started"


def cancel(record: JobRecord, at: datetime | None = None) -> JobRecord | None:
    """A queued job is cancelled: it ends here and never starts."""
    if record.status is not Status.queued:
        return None
    return record.model_copy(update={"status": Status.cancelled, "cancel_requested": True, "finished_at": at or now(),
                                     "error": JobError(kind="cancelled", message=CANCELLED_BEFORE_START)})


def request_cancel(record: JobRecord) -> JobRecord | None:
    """A running job is asked to stop: its worker's watcher sees the flag and finishes it cancelled."""
    if record.finished or record.cancel_requested:
        return None
    return record.model_copy(update={"cancel_requested": True})


def refuse(record: JobRecord, reason: str, at: datetime | None = None) -> JobRecord | None:
    """A raw queue message that admission refuses: the new record it would have had is born
    failed (kind invalid), never queued, so it owes no commit status and no callback."""
    if record.status is not Status.queued or record.attempts:
        return None
    return record.model_copy(update={"status": Status.failed, "statuses": False, "finished_at": at or now(),
                                     "error": JobError(kind="invalid", message=f"refused: {reason}")})


def finish(record: JobRecord, worker: str, status: Status, images: list[PushedImage], error: JobError | None,
           at: datetime | None = None) -> JobRecord | None:
    """`worker`'s attempt ends the job with `status` (a final one)."""
    if not status.finished:
        raise ValueError(f"finish needs a final status, not {status.value}")
    if not owned(record, worker):  # superseded: another attempt owns the record
        return None
    return record.model_copy(update={"status": status, "images": images, "error": error, "finished_at": at or now()})


def finish_unstarted(record: JobRecord, status: Status, error: JobError, at: datetime | None = None) -> JobRecord | None:
    """A queued job ends before any attempt begins (cancelled while it ran on a worker that
    died; its secret values gone)."""
    if not status.finished:
        raise ValueError(f"finish_unstarted needs a final status, not {status.value}")
    if record.status is not Status.queued:  # finished, or running elsewhere (a duplicate delivery)
        return None
    return record.model_copy(update={"status": status, "error": error, "finished_at": at or now()})


def owned(record: JobRecord, worker: str) -> bool:
    """Does `worker`'s attempt still own the record (running, on that worker)?"""
    return record.status is Status.running and record.worker == worker


def owes(record: JobRecord) -> tuple[bool, bool]:
    """What a job's end owes: (its final commit status, its completion callback). The status
    is admission's stored answer (`JobRecord.statuses`); the callback, whether it asked for one."""
    return record.statuses, bool(record.request.callback_url)

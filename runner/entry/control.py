"""Operations on existing jobs shared by the CLI and the API: cancel."""

from __future__ import annotations

from runner.core.jobs import JobError, JobRecord, Status, now
from runner.store.joblog import JobLog
from runner.store.jobstore import JobStore
from runner.store.outbox import Outbox


def cancel_job(store: JobStore, job_id: str, recover_after: float = 30.0) -> JobRecord | None:
    """Flag the job cancelled. A queued job is finished here and never starts; a running one
    is stopped by its worker's watcher (within a second) which then records `cancelled`.
    `recover_after`: deliveries.recover_after, for the final status and callback it owes."""
    if store.get(job_id) is None:
        return None
    store.request_cancel(job_id)

    def change(record: JobRecord) -> JobRecord | None:
        if record.finished:
            return None
        if record.status is Status.queued:
            return record.model_copy(update={
                "status": Status.cancelled, "cancel_requested": True, "finished_at": now(),
                "error": JobError(kind="cancelled", message="cancelled before it started")})
        return record.model_copy(update={"cancel_requested": True})

    record = store.update(job_id, change)
    if record is not None and record.status is Status.cancelled and record.worker is None:
        JobLog(store, job_id).line("[runner] cancelled before it started")
        store.end_job(job_id, Status.cancelled)  # a queued job's context and secret values never outlive it
        # its final commit status and callback (the worker skips a status its host has no config for)
        Outbox.for_store(store, recover_after).add_finished(job_id, record.request.source is not None, bool(record.request.callback_url))
    return record

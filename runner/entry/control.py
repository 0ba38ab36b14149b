"""Operations on existing jobs shared by the CLI and the API: cancel."""

from __future__ import annotations

from runner.core.jobs import JobRecord
from runner.store import jobstate
from runner.store.jobstore import JobStore


def cancel_job(store: JobStore, job_id: str) -> JobRecord | None:
    """Cancel the job. A queued job ends here (jobstate.cancel, in one JobStore.end with the
    final status and callback it owes) and never starts; a running one is flagged
    (jobstate.request_cancel) and its worker's watcher stops it within a second and ends it
    cancelled. None: no such job."""
    if store.get(job_id) is None:
        return None
    store.request_cancel(job_id)  # the flag the running job's watcher looks for
    record, ended = store.end(job_id, jobstate.cancel, f"[runner] {jobstate.CANCELLED_BEFORE_START}")
    if ended or record is None:
        return record
    return store.move(job_id, jobstate.request_cancel)[0]

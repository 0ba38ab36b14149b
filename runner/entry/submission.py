"""Hand-off, shared by every entry point (CLI, HTTP API, webhooks): record the job as
queued, owe its "queued" commit status, and send its message, in one transaction
(JobStore.submit); and the upload of a directory context before it (`ContextUpload`: `runner
submit` through Redis and the API's upload endpoint). Builds nothing, and never imports Celery:
the messages are written straight to their queues (runner.store.buildqueue, runner.store.outbox);
the worker makes the HTTP requests."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # imported when a job is submitted: the CLI's light path uploads with ContextUpload alone
    from runner.config.settings import Settings
    from runner.core.jobs import BuildRequest, JobRecord
    from runner.store.jobstore import ContextWriter, JobStore
    from runner.worker.admission import Admission, Origin

log = logging.getLogger(__name__)


def submit(request: BuildRequest, settings: Settings, store: JobStore, origin: Origin,
           admitted: Admission | None = None, submitted_by: str | None = None) -> tuple[JobRecord, bool]:
    """Record the job as queued and send it. Returns (record, created); a repeat id sends nothing.

    `origin`: the door the job came in by (it decides whether its source gets statuses);
    `admitted`: what `admit` returned, when the caller already ran it (admission runs once);
    `submitted_by`: who handed it in, kept in the record (JobRecord.submitted_by) and logged.
    Secret build-arg values go to the store, by job id, never into the queue message: the
    message (and the record) carry the redacted request, and the worker reads the values back.
    """
    from runner.store import jobstate
    from runner.worker.admission import admit

    admitted = admitted or admit(request, settings, origin)
    executor = admitted.executor
    record = jobstate.admitted(request.redacted(), executor, settings.queue_for(executor), admitted.statuses,
                               submitted_by)
    # the record, the secret values, the "queued" status owed and the message: all or nothing,
    # so a retry with the same id after a failure here sends it
    stored, created = store.submit(record, request.secret_arg_values())
    if not created:
        return stored, False
    log.info("job %s queued on %s by %s", request.id, record.queue, submitted_by or "an unnamed submitter",
             extra={"job_id": request.id, "executor": executor, "submitted_by": submitted_by})
    if request.context.type == "upload":
        # after the send, off the pickup path: if the job is done and its context gone already,
        # this is a no-op; until now the upload's own expiry (an hour) kept it
        store.keep_context(request.id)
    return record, True


class UploadRefused(Exception):
    """No upload began: a job has the id ("exists"), another client is uploading its context
    ("busy"), or the owner has as many unsubmitted uploads as it may ("quota")."""

    def __init__(self, reason: Literal["exists", "busy", "quota"]):
        super().__init__(reason)
        self.reason = reason


class ContextUpload:
    """The context of a job not yet submitted, written to Redis by one owner ("cli:HOST:PID",
    "token:NAME"): the id is reserved before the first byte (a used id never gets a new context,
    nor is another client's upload replaced), the upload is counted against the owner's pending
    ones when a quota is given, and the tar goes through a ContextWriter (capped at `max_bytes`:
    ContextTooLarge). `abandon` undoes all of it; `submit` hands the job on, undoing it if that fails.

    Every method is a blocking Redis call: the API calls them off its event loop."""

    def __init__(self, store: JobStore, job_id: str, owner: str, writer: ContextWriter, tracked: bool):
        self.store, self.job_id, self.owner, self.writer, self.tracked = store, job_id, owner, writer, tracked

    @classmethod
    def begin(cls, store: JobStore, job_id: str, owner: str, max_bytes: int, quota: int | None = None) -> ContextUpload:
        """Reserve `job_id` for `owner` and open its context; raises UploadRefused."""
        claim = store.reserve(job_id, owner)
        if claim != "ok":
            raise UploadRefused("exists" if claim == "exists" else "busy")
        if quota is not None and not store.track_upload(owner, job_id, quota):
            store.release(job_id, owner)
            raise UploadRefused("quota")
        return cls(store, job_id, owner, store.context_writer(job_id, max_bytes), tracked=quota is not None)

    @property
    def size(self) -> int:
        return self.writer.size

    def write(self, data: bytes) -> int:
        return self.writer.write(data)

    def finish(self) -> None:
        """All of the context is written (the upload's own expiry keeps it until it is submitted)."""
        self.writer.close()

    def abandon(self) -> None:
        """Delete what was written, free the id, and stop counting the upload."""
        self.writer.abort()
        self.store.release(self.job_id, self.owner)
        if self.tracked:
            self.store.untrack_upload(self.owner, self.job_id)

    def submit(self, request: BuildRequest, settings: Settings, origin: Origin,
               admitted: Admission | None = None, submitted_by: str | None = None) -> tuple[JobRecord, bool]:
        """Record and queue the job whose context this is (runner.entry.submission.submit); if
        that fails, the upload is abandoned and the error raised."""
        try:
            submitted = submit(request, settings, self.store, origin, admitted, submitted_by)
        except Exception:
            self.abandon()
            raise
        if self.tracked:
            self.store.untrack_upload(self.owner, self.job_id)
        return submitted

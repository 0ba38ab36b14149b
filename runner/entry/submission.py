"""Hand-off, shared by every entry point (CLI, HTTP API, webhooks): record the job as
queued, owe its "queued" commit status, and send its message. Builds nothing, and never
imports Celery: the messages are written straight to their queues (runner.store.buildqueue,
runner.store.outbox); the worker makes the HTTP requests."""

from __future__ import annotations

from runner.config.settings import Settings
from runner.core.jobs import BuildRequest, JobRecord
from runner.store.buildqueue import send_build
from runner.store.jobstore import JobStore
from runner.store.outbox import Outbox
from runner.worker.admission import Admission, Origin, admit


def submit(request: BuildRequest, settings: Settings, store: JobStore, origin: Origin,
           admitted: Admission | None = None) -> tuple[JobRecord, bool]:
    """Record the job as queued and send it. Returns (record, created); a repeat id sends nothing.

    `origin`: the door the job came in by (it decides whether its source gets statuses);
    `admitted`: what `admit` returned, when the caller already ran it (admission runs once).
    Secret build-arg values go to the store, by job id, never into the queue message: the
    message (and the record) carry the redacted request, and the worker reads the values back.
    """
    admitted = admitted or admit(request, settings, origin)
    executor = admitted.executor
    record = JobRecord(id=request.id, request=request.redacted(), executor=executor,
                       queue=settings.queue_for(executor))
    if not store.create(record):
        existing = store.get(request.id)
        assert existing is not None
        return existing, False
    store.save_secrets(request.id, request.secret_arg_values())
    outbox = Outbox.for_store(store, settings.deliveries.recover_after) if admitted.statuses else None
    try:
        if outbox is not None:  # before the job's message: "queued" goes first (runner/store/outbox.py)
            outbox.add(request.id, "status", "queued", "queued")
        send_build(store.r, record.request.model_dump(mode="json"), record.queue)
    except BaseException:
        store.forget(request.id)  # not queued: a retry with the same id must be able to send it
        if outbox is not None:
            outbox.forget(request.id)
        raise
    if request.context.type == "upload":
        # after the send, off the pickup path: if the job is done and its context gone already,
        # this is a no-op; until now the upload's own expiry (an hour) kept it
        store.keep_context(request.id)
    return record, True

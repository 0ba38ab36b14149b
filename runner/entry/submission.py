"""Hand-off, shared by every entry point (CLI, HTTP API, webhooks): record the job as
queued and send its message. Builds nothing."""

from __future__ import annotations

from runner.config.settings import Settings
from runner.core.jobs import BuildRequest, JobRecord
from runner.store.jobstore import JobStore
from runner.worker.admission import admit


def submit(request: BuildRequest, settings: Settings, store: JobStore, app=None,
           executor: str | None = None) -> tuple[JobRecord, bool]:
    """Record the job as queued and send it. Returns (record, created); a repeat id sends nothing.

    `executor`: what `admit` returned, when the caller already ran it (admission runs once).
    Secret build-arg values go to the store, by job id, never into the queue message: the
    message (and the record) carry the redacted request, and the worker reads the values back.
    """
    executor = executor or admit(request, settings)
    record = JobRecord(id=request.id, request=request.redacted(), executor=executor,
                       queue=settings.queue_for(executor))
    if not store.create(record):
        existing = store.get(request.id)
        assert existing is not None
        return existing, False
    store.save_secrets(request.id, request.secret_arg_values())
    if request.context.type == "upload":
        store.keep_context(request.id)
    from runner.worker.queue import enqueue, make_app

    try:
        enqueue(app or make_app(settings), record.request, record.queue)
    except BaseException:
        store.forget(request.id)  # not queued: a retry with the same id must be able to send it
        raise
    return record, True

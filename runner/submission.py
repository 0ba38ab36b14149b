"""Admission and hand-off, shared by every entry point (CLI, HTTP API, webhooks).

`admit` checks a request against the config (the model checks its own shape), `submit`
records the job as queued and sends its message. Neither builds anything.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

import executors
from runner.jobs import BuildRequest, JobRecord
from runner.settings import Settings
from runner.store import JobStore


class Rejected(ValueError):
    """Invalid input; `field` names what was wrong. Nothing was queued."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def parse_request(data: Any) -> BuildRequest:
    try:
        return BuildRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in first["loc"]) or "request"
        raise Rejected(field, first["msg"].removeprefix("Value error, ")) from None


def admit(request: BuildRequest, settings: Settings) -> str:
    """Check `request` against the config; return the executor name it will run on."""
    limits = settings.limits
    if len(request.tags) > limits.max_tags:
        raise Rejected("tags", f"{len(request.tags)} tags is over the limit of {limits.max_tags} (limits.max_tags)")
    allowed = [r.host for r in settings.registries]
    for index, ref in enumerate(request.image_refs()):
        if ref.registry not in allowed:
            raise Rejected(f"tags.{index}", f"registry {ref.registry!r} is not allowed; configured registries: "
                           f"{', '.join(allowed) or 'none (add one under registries:)'}")
    executor = request.executor or settings.default_executor
    if executor not in executors.known_names():
        raise Rejected("executor", f"unknown executor {executor!r}; known: {', '.join(executors.known_names())}")
    if not executors.is_enabled(settings, executor):
        enabled = executors.enabled_names(settings)
        raise Rejected("executor", f"executor {executor!r} is not enabled; enabled: {', '.join(enabled) or 'none'}")
    if request.timeout is not None and request.timeout > limits.max_timeout:
        raise Rejected("timeout", f"{request.timeout}s is over the maximum of {limits.max_timeout}s (limits.max_timeout)")
    unknown = [s for s in request.secrets if s not in settings.build_secrets]
    if unknown:
        raise Rejected("secrets", f"unknown build secret(s) {unknown}; configured: {sorted(settings.build_secrets)}")
    check_sources(request, settings)
    return executor


def check_sources(request: BuildRequest, settings: Settings) -> None:
    """Where the job reads from and reports to: a git URL we may fetch, a callback we may call."""
    from executors.base import InvalidJob
    from runner.callbacks import check_callback_url
    from runner.gitsource import check_url, split_credentials

    if request.context.type == "git":
        try:
            check_url(request.context.url, settings)
        except InvalidJob as exc:
            raise Rejected("context.url", exc.message) from None
        if split_credentials(request.context.url)[2] is not None:
            raise Rejected("context.url", "the URL holds a password or token, which the job record would keep; "
                           "configure it for the worker under git.credentials instead")
    if request.callback_url:
        problem = check_callback_url(request.callback_url, settings.callbacks)
        if problem:
            raise Rejected("callback_url", problem)


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
    from runner.queue import enqueue, make_app

    try:
        enqueue(app or make_app(settings), record.request, record.queue)
    except BaseException:
        store.forget(request.id)  # not queued: a retry with the same id must be able to send it
        raise
    return record, True

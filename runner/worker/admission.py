"""Admission: a request checked against the config (the model checks its own shape).

Runs once per job: at the entry point that takes it (CLI, HTTP API, webhooks), or on the
worker for a message posted straight to the queue. Builds nothing."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from executors.registry import ExecutorRegistry
from runner.config.settings import Settings
from runner.core.jobs import BuildRequest


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
    config = settings.executors.get(executor)
    if config is None:
        registry = ExecutorRegistry()
        if not registry.is_known(executor):
            raise Rejected("executor", f"unknown executor {executor!r}; known: {', '.join(registry.names())}")
    if config is None or not config.enabled:
        enabled = settings.enabled_executors()
        raise Rejected("executor", f"executor {executor!r} is not enabled; enabled: {', '.join(enabled) or 'none'}")
    if request.timeout is not None and request.timeout > limits.max_timeout:
        raise Rejected("timeout", f"{request.timeout}s is over the maximum of {limits.max_timeout}s (limits.max_timeout)")
    unknown = [s for s in request.secrets if s not in settings.build_secrets]
    if unknown:
        raise Rejected("secrets", f"unknown build secret(s) {unknown}; configured: {sorted(settings.build_secrets)}")
    check_sources(request, settings)
    return executor


def check_sources(request: BuildRequest, settings: Settings) -> None:
    """Where the job reads from and reports to: a git URL we may fetch, a callback we may call.
    (Imported here, when needed: an upload without callback, the common case, needs neither.)"""
    if request.context.type == "git":
        from runner.core.errors import InvalidJob
        from runner.sources.git import check_url, split_credentials

        try:
            check_url(request.context.url, settings)
        except InvalidJob as exc:
            raise Rejected("context.url", exc.message) from None
        if split_credentials(request.context.url)[2] is not None:
            raise Rejected("context.url", "the URL holds a password or token, which the job record would keep; "
                           "configure it for the worker under git.credentials instead")
    if request.callback_url:
        from runner.worker.notify.callbacks import check_callback_url

        problem = check_callback_url(request.callback_url, settings.callbacks)
        if problem:
            raise Rejected("callback_url", problem)

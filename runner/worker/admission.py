"""Admission: a request checked against the config (the model checks its own shape).

Runs once per job: at the entry point that takes it (CLI, HTTP API, webhooks), or on the
worker for a message posted straight to the queue. Builds nothing.

It also makes the one decision "does this job get commit statuses?" (`statuses_for`). A job's
`source` names a commit that the host's token will mark pending, success or failure, so a
source must be *bound* to the door the job came in by: a verified webhook (the host said so);
a git context that clones that repository at exactly that commit (the job builds what it
reports on); or an API token holding the `status` right or naming the repository in its
`status_repositories`. A message posted straight to the queue (and `runner submit` without
--api, which writes to Redis with the same access) is bound by the git rule only, unless
`statuses.trust_queue_sources` says the queue is trusted. An unbound source is refused as
invalid, naming the repository: the submitter asked for a status, so it is never dropped
silently. The answer is kept on the job's record (`JobRecord.statuses`, set when the record is
made: runner/store/jobstate.py, admitted), and everything later reads it from there: the
worker's interim statuses, a job's end (JobStore.end), a cancel while queued."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import ValidationError

from executors.plugins import ExecutorRegistry
from runner.config.sections import ApiToken
from runner.config.settings import Settings
from runner.core.admission_rules import Rejected, check_admission
from runner.core.jobs import BuildRequest, JobSource
from runner.core.request_rules import JOB_ID, MAX_JOB_ID
from runner.core.validation import field_errors, first_error


def parse_request(data: Any) -> BuildRequest:
    try:
        return BuildRequest.model_validate(data)
    except ValidationError as exc:
        raise rejection(exc) from None


def rejection(exc: ValidationError, whole: str = "request") -> Rejected:
    """The first thing wrong with a request, naming its field."""
    first = first_error(exc)
    return Rejected(first.field(whole), first.message)


#: the tags a failed record shows when the message's own cannot be read (`.invalid` is reserved: nothing goes there)
UNREADABLE_TAGS = ["refused.invalid/unreadable/tags:none"]


def readable_request(data: Any) -> BuildRequest | None:
    """What can be read of a queue message that is not a valid job, for its failed record: None
    without a valid `id`; else its fields that are valid on their own, the others left out
    (tags that cannot be read become UNREADABLE_TAGS), every build-arg value blanked (which of
    them are secret may be what was wrong)."""
    if not isinstance(data, dict):
        return None
    job_id = data.get("id")
    if not isinstance(job_id, str) or len(job_id) > MAX_JOB_ID or not JOB_ID.match(job_id):
        return None
    kept = {name: value for name, value in data.items() if name in BuildRequest.model_fields}
    if isinstance(kept.get("build_args"), dict):
        kept["build_args"] = dict.fromkeys(kept["build_args"], "***")
    for _ in range(len(BuildRequest.model_fields)):
        try:
            return BuildRequest.model_validate(kept)
        except ValidationError as exc:
            # a model-wide error is the size of build args and labels together
            wrong = {error.path[0] for error in field_errors(exc) if error.path} or {"build_args", "labels"}
            for name in wrong:
                kept.pop(name, None)
            if "tags" in wrong or "tags" not in kept:
                kept["tags"] = UNREADABLE_TAGS
    return None


@dataclass(frozen=True)
class Origin:
    """The door a job came in by: it decides whether the job's `source` may get statuses."""

    door: Literal["webhook", "api", "queue"]
    token: ApiToken | None = None  # the API's bearer token

    @classmethod
    def api(cls, token: ApiToken) -> Origin:
        return cls("api", token)


WEBHOOK = Origin("webhook")  # a verified push: the host itself names the commit
QUEUE = Origin("queue")  # a message posted straight to Redis, or `runner submit` without --api


@dataclass(frozen=True)
class Admission:
    executor: str  # what the job runs on
    statuses: bool  # the job gets commit statuses (statuses_for)


def admit(request: BuildRequest, settings: Settings, origin: Origin) -> Admission:
    """Check `request`, which came in by `origin`, against the config."""
    executor = check_admission(settings.admission_policy(), request.tags, request.platforms, request.executor,
                               request.timeout, request.secrets, unknown_executor)
    check_sources(request, settings)
    return Admission(executor, statuses_for(request, settings, origin))


def unknown_executor(name: str) -> None:
    """Refuse an executor no package provides; one that is known but has no config is not enabled."""
    registry = ExecutorRegistry()
    if not registry.is_known(name):
        raise Rejected("executor", f"unknown executor {name!r}; known: {', '.join(registry.names())}")


def statuses_for(request: BuildRequest, settings: Settings, origin: Origin) -> bool:
    """Does this job get commit statuses? The one place that decides: its source must be bound
    to `origin` (else Rejected, naming the repository and why), and its host configured for
    statuses (else no status, and the job still builds)."""
    source = request.source
    if source is None:
        return False
    why = unbound(request, source, settings, origin)
    if why is not None:
        raise Rejected("source", f"no commit statuses on {source.host} repository {source.repository}: {why}")
    return not isinstance(settings.statuses.target(source), str)


def unbound(request: BuildRequest, source: JobSource, settings: Settings, origin: Origin) -> str | None:
    """Why the job may not report on `source`'s commit, or None when it may."""
    if origin.door == "webhook" or builds_commit_of(request, source, settings):
        return None
    rule = (f"the job does not clone {source.repository} from the configured {source.host} host at commit "
            f"{source.sha} (a git context with that URL and commit)")
    if origin.door == "api":
        if origin.token is not None and origin.token.may_report_to(source):
            return None
        name = origin.token.name if origin.token is not None else "?"
        return (f"{rule}, and API token {name!r} has neither the status right nor this repository in its "
                "status_repositories")
    if settings.statuses.trust_queue_sources:
        return None
    return (f"{rule}, and a job written straight to Redis (a raw queue message, or runner submit without --api) names "
            "another commit only where statuses.trust_queue_sources is true")


def builds_commit_of(request: BuildRequest, source: JobSource, settings: Settings) -> bool:
    """Does the job build exactly `source`'s commit of that repository? A git context whose
    pinned commit is the source's and whose clone URL names the repository on the host the
    statuses go to (its name; any scheme or port: https, ssh and git:// clones are the same)."""
    context = request.context
    if context.type != "git" or context.commit != source.sha:
        return False
    api_url = getattr(settings.statuses, source.host).api_url
    cloned = clone_location(context.url)
    if not api_url or cloned is None:
        return False
    host, prefix = web_location(source.host, api_url)
    wanted = f"{prefix}/{source.repository}" if prefix else source.repository
    return cloned[0] == host and cloned[1].casefold() == wanted.casefold()


def web_location(host_kind: str, api_url: str) -> tuple[str, str]:
    """(host name, path prefix) where the repositories of the host whose API is `api_url` are
    cloned from: github.com for api.github.com, HOST for GitHub Enterprise's HOST/api/v3, and
    the instance's own root URL for GitLab and Gitea."""
    parts = urlsplit(api_url)
    host, path = (parts.hostname or "").lower(), parts.path.strip("/")
    if host_kind == "github":
        return ("github.com", "") if host == "api.github.com" else (host, path.removesuffix("api/v3").strip("/"))
    return host, path


def clone_location(url: str) -> tuple[str, str] | None:
    """(host name, repository path without .git) a clone URL names; None for a local path or
    git's <transport>::<address> form."""
    from runner.sources.git import url_scheme

    scheme = url_scheme(url)
    if scheme not in ("https", "http", "ssh", "git") or "::" in url.partition("://")[0]:
        return None
    if "://" in url:
        try:
            parts = urlsplit(url)
            host, path = parts.hostname or "", parts.path
        except ValueError:
            return None
    else:  # scp-like: [user@]host:path
        address, _, path = url.partition(":")
        host = address.rpartition("@")[2]
    path = path.strip("/")
    return host.lower(), path.removesuffix(".git").rstrip("/")


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

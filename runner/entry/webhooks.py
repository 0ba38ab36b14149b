"""Git-push webhooks from GitHub, GitLab and Gitea: check the signature, read the push,
and turn it into one BuildRequest (a git context at the pushed commit) handed to submission.

Signatures, exactly as each host makes them, for both content types (`application/json`, or
a form whose `payload` field holds the JSON): GitHub `X-Hub-Signature-256: sha256=<hex
HMAC-SHA256 of the raw body>` (the form body itself, when it sends a form); Gitea and Forgejo
`X-Gitea-Signature: <hex HMAC-SHA256 of the JSON payload>` (the `payload` field's value, not
the form body); GitLab `X-Gitlab-Token: <the secret itself>`. All compared in constant time.

The commit built: `after`, except for a tag, where `after` is the tag OBJECT when the tag is
annotated: GitHub and Gitea name the commit it points to in `head_commit.id`, GitLab in
`checkout_sha`. A redelivery (same delivery id) maps to the same job id, so it builds once.
A replay (the same push under another delivery id, which the signature does not cover) is
caught by what the push is: host, repository, ref, `before` and `after` (signed by GitHub and
Gitea), held for webhooks.replay_window; it is answered as a duplicate, so the host does not
retry it.
The job keeps where it came from (its `source`: host, API URL, repository, commit, ref,
delivery) for its commit statuses. Nothing here waits for a build.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes

from runner.config.sections import RepositoryHook
from runner.config.settings import Settings
from runner.core.errors import InvalidJob
from runner.core.jobs import BuildRequest, GitContext
from runner.core.models import base_url
from runner.entry.submission import submit
from runner.sources.git import check_url, mask_url
from runner.store.jobstore import JobStore
from runner.worker.admission import WEBHOOK, Rejected, parse_request

log = logging.getLogger(__name__)
PROVIDERS = ("github", "gitlab", "gitea")
ZERO_SHA = re.compile(r"^0+$")
SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
SIGNATURE_HEADERS = {"github": "x-hub-signature-256", "gitea": "x-gitea-signature", "gitlab": "x-gitlab-token"}
DELIVERY_HEADERS = {"github": ("x-github-delivery",), "gitea": ("x-gitea-delivery",),
                    "gitlab": ("idempotency-key", "x-gitlab-event-uuid")}
FORM = "application/x-www-form-urlencoded"


class WebhookError(Exception):
    """The request is refused with `status` (401 bad signature, 400 unreadable, 422 unbuildable)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Outcome:
    status: int
    body: dict[str, Any] = field(default_factory=dict)


@dataclass
class Push:
    provider: str
    full_name: str
    owner: str
    name: str
    ref: str
    sha: str
    clone_url: str | None
    default_branch: str | None
    deleted: bool
    api_url: str | None = None  # GitHub: the API root; GitLab, Gitea: the instance's root URL
    project_id: int | None = None  # GitLab
    before: str | None = None  # what the ref pointed to before the push
    after: str = ""  # what it points to now (for an annotated tag, the tag object; `sha` is its commit)

    @property
    def branch(self) -> str | None:
        return self.ref.removeprefix("refs/heads/") if self.ref.startswith("refs/heads/") else None

    @property
    def tag(self) -> str | None:
        return self.ref.removeprefix("refs/tags/") if self.ref.startswith("refs/tags/") else None


def verify(provider: str, headers: Mapping[str, str], body: bytes, settings: Settings) -> None:
    """Raise WebhookError(401) unless `body` (the bytes this provider signs) carries its valid signature."""
    header = SIGNATURE_HEADERS[provider]
    try:
        secret = getattr(settings.webhooks, provider).secret_value(f"webhooks.{provider}.secret")
    except ValueError as exc:
        raise WebhookError(401, str(exc)) from None
    if not secret:
        raise WebhookError(401, f"webhooks.{provider}.secret is not configured; unsigned webhooks are refused")
    given = headers.get(header)
    if not given:
        raise WebhookError(401, f"missing {header} header: set the webhook's secret in {provider}")
    if provider == "gitlab":
        expected = secret
    else:
        digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        expected = f"sha256={digest}" if provider == "github" else digest
    if not hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode()):
        raise WebhookError(401, f"{header} does not match: the webhook secret differs from webhooks.{provider}.secret")


def event_name(provider: str, headers: Mapping[str, str]) -> str:
    """push, ping, or the provider's own name for anything else."""
    if provider == "gitlab":
        event = headers.get("x-gitlab-event", "")
        return "push" if event in ("Push Hook", "Tag Push Hook") else event
    return headers.get("x-github-event" if provider == "github" else "x-gitea-event", "")


def form_payload(body: bytes) -> bytes:
    """The `payload` field of a form body, byte for byte as its sender encoded it."""
    found = []
    for pair in body.split(b"&"):
        key, _, value = pair.partition(b"=")
        if unquote_to_bytes(key.replace(b"+", b" ")) == b"payload":
            found.append(unquote_to_bytes(value.replace(b"+", b" ")))
    if len(found) != 1:
        raise WebhookError(400, f"the form body has {'no' if not found else 'more than one'} `payload` field")
    return found[0]


def verified_payload(provider: str, headers: Mapping[str, str], body: bytes, settings: Settings) -> bytes:
    """The delivery's JSON payload, once its signature is checked over what this provider signs:
    Gitea the JSON payload (a form's `payload` field), GitHub the raw body, GitLab nothing (a token)."""
    form = headers.get("content-type", "").split(";")[0].strip().lower() == FORM
    if provider == "gitea":
        payload = form_payload(body) if form else body
        verify(provider, headers, payload, settings)
        return payload
    verify(provider, headers, body, settings)
    return form_payload(body) if form else body


def load_payload(payload: bytes) -> dict[str, Any]:
    try:
        data = json.loads(payload)
    except ValueError:
        raise WebhookError(400, "the payload is not JSON") from None
    except RecursionError:
        raise WebhookError(400, "the payload nests arrays or objects too deeply to read") from None
    if not isinstance(data, dict):
        raise WebhookError(400, "the payload is not a JSON object")
    return data


def _optional(data: dict, path: str) -> str | None:
    """The string at dotted `path`, None if missing or null; any other type is refused, naming the field."""
    value: Any = data
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    if value is not None and not isinstance(value, str):
        kind = {bool: "a boolean", int: "a number", float: "a number", list: "an array"}.get(type(value), "an object")
        raise WebhookError(400, f"the push payload's {path!r} is {kind}, not a string")
    return value


def _required(data: dict, path: str) -> str:
    value = _optional(data, path)
    if value is None:
        raise WebhookError(400, f"the push payload has no {path!r}")
    return value


def pushed_commit(provider: str, data: dict[str, Any], ref: str, after: str) -> tuple[str, str]:
    """(field, commit id) of the commit a push builds. For an annotated tag `after` is the tag
    object; the hosts name the commit it points to (without one, `after` is built: git peels
    the tag, but {sha} names the tag object)."""
    if provider == "gitlab":
        checkout = _optional(data, "checkout_sha")
        return ("checkout_sha", checkout) if checkout else ("after", after)
    head = _optional(data, "head_commit.id") if ref.startswith("refs/tags/") else None
    return ("head_commit.id", head) if head else ("after", after)


def parse_push(provider: str, data: dict[str, Any]) -> Push:
    ref, after = _required(data, "ref"), _required(data, "after")
    if provider == "gitlab":
        full_name = _required(data, "project.path_with_namespace")
        owner, _, name = full_name.rpartition("/")
        clone_url = _optional(data, "project.git_http_url") or _optional(data, "repository.git_http_url")
        default_branch = _optional(data, "project.default_branch")
        deleted = bool(ZERO_SHA.match(after)) or data.get("checkout_sha", "") is None
    else:
        full_name, name = _required(data, "repository.full_name"), _required(data, "repository.name")
        owner = _optional(data, "repository.owner.login") or _optional(data, "repository.owner.username") \
            or full_name.partition("/")[0]
        clone_url = _optional(data, "repository.clone_url")
        default_branch = _optional(data, "repository.default_branch")
        deleted = data.get("deleted") is True or bool(ZERO_SHA.match(after))
    field, sha = ("after", after) if deleted else pushed_commit(provider, data, ref, after)
    if not deleted and not SHA.match(sha):
        raise WebhookError(400, f"the push payload's {field!r} ({sha[:80]!r}) is not a commit id")
    project_id = data.get("project_id") if provider == "gitlab" else None
    api_url = api_base(provider, data, full_name)
    try:
        api_url = base_url(api_url)
    except ValueError:
        api_url = None  # an odd one: the configured API
    return Push(provider, full_name, owner, name, ref, sha, clone_url, default_branch, deleted, api_url,
                project_id if isinstance(project_id, int) and not isinstance(project_id, bool) and project_id > 0 else None,
                _optional(data, "before"), after)


def api_base(provider: str, data: dict[str, Any], full_name: str) -> str | None:
    """The host's API base as the payload tells it (None if it does not): GitHub from
    `repository.statuses_url` (or the web URL: github.com's API is api.github.com, an
    Enterprise server's HOST/api/v3); GitLab and Gitea: the project's web URL without its path."""
    if provider == "github":
        statuses = _optional(data, "repository.statuses_url") or ""
        if match := re.match(r"^(https?://.+?)/repos/[^/]+/[^/]+/statuses/\{sha\}$", statuses):
            return match[1]
        web = _optional(data, "repository.html_url") or ""
        if match := re.match(r"^(https?://)([^/]+)/", web):
            return "https://api.github.com" if match[2].lower() == "github.com" else f"{match[1]}{match[2]}/api/v3"
        return None
    web = _optional(data, "project.web_url" if provider == "gitlab" else "repository.html_url") or ""
    suffix = "/" + full_name
    return web[: -len(suffix)] if web.lower().endswith(suffix.lower()) and web.startswith(("http://", "https://")) else None


def repository_config(push: Push, settings: Settings) -> RepositoryHook | None:
    repos = settings.webhooks.repositories
    if push.full_name in repos:
        return repos[push.full_name]
    folded = push.full_name.casefold()
    return next((cfg for key, cfg in repos.items() if key.casefold() == folded), None)


def tag_safe(value: str) -> str:
    """A git branch or tag name as a valid image tag: `feature/x` -> `feature-x`."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", value).lstrip(".-")[:128]


def render_images(templates: list[str], push: Push) -> list[str]:
    """Fill the templates; one naming a value this push lacks (like {tag} on a branch) is skipped."""
    values = {"repo": push.name.lower(), "owner": push.owner.lower(), "branch": tag_safe(push.branch or ""),
              "tag": tag_safe(push.tag or ""), "sha": push.sha, "short_sha": push.sha[:7]}
    images = []
    for template in templates:
        try:
            image = template.format(**{k: v or _Missing() for k, v in values.items()})
        except _MissingValue:
            continue
        if image not in images:
            images.append(image)
    return images


class _MissingValue(Exception):
    pass


class _Missing:
    def __format__(self, spec: str) -> str:
        raise _MissingValue


def why_not(push: Push, repo: RepositoryHook) -> str | None:
    """The reason this push builds nothing, or None if it builds."""
    if push.deleted:
        return f"{push.ref} was deleted"
    if push.branch is not None:
        patterns = repo.branches if repo.branches is not None else [push.default_branch or "main"]
        if not any(fnmatch.fnmatchcase(push.branch, p) for p in patterns):
            return f"branch {push.branch!r} does not build (branches: {', '.join(patterns) or 'none'})"
        return None
    if push.tag is not None:
        if not any(fnmatch.fnmatchcase(push.tag, p) for p in repo.tags):
            return f"tag {push.tag!r} does not build (tags: {', '.join(repo.tags) or 'none'})"
        return None
    return f"{push.ref} is neither a branch nor a tag"


def delivery_id(provider: str, headers: Mapping[str, str], push: Push) -> str:
    for header in DELIVERY_HEADERS[provider]:
        if headers.get(header):
            return headers[header]
    return f"{push.full_name}@{push.ref}@{push.sha}"


def job_id(provider: str, delivery: str) -> str:
    return f"{provider}-" + hashlib.sha256(f"{provider}:{delivery}".encode()).hexdigest()[:32]


def push_key(push: Push) -> str:
    """The push itself, whatever delivery carries it: host, repository, ref, and the commits
    before and after (a ref moved from the same commit to the same commit again is the same push)."""
    what = "\n".join((push.provider, push.full_name.casefold(), push.ref, push.before or "", push.after, push.sha))
    return hashlib.sha256(what.encode()).hexdigest()


def summary(push: Push) -> str:
    moved = f"{push.before[:7]}..{push.after[:7]}" if push.before else push.after[:7]
    return f"{push.provider} {push.full_name} {push.ref} {moved}"


def build_request(push: Push, repo: RepositoryHook, delivery: str, settings: Settings) -> BuildRequest | str:
    """The job for this push, or the reason it builds nothing. Raises WebhookError(422)."""
    tags = render_images(repo.images, push)
    if not tags:
        return "no image template applies to this push (each names a value it lacks)"
    url = repo.clone_url or push.clone_url
    if not url:
        raise WebhookError(422, f"the payload has no clone URL; set webhooks.repositories[{push.full_name!r}].clone_url")
    try:
        check_url(url, settings)
    except InvalidJob as exc:
        raise WebhookError(422, exc.message) from None
    payload = {
        "id": job_id(push.provider, delivery),
        "context": {"type": "git", "url": url, "ref": push.ref, "commit": push.sha, "subdir": repo.context,
                    "submodules": repo.submodules, "keep_git_dir": repo.keep_git_dir},
        "dockerfile": repo.dockerfile, "tags": tags, "build_args": repo.build_args, "executor": repo.executor,
        "platforms": repo.platforms, "timeout": repo.timeout, "callback_url": repo.callback_url,
        # the commit, not the ref: a tag pushed on a built commit is the same image (runner.worker.reuse);
        # the ref is in the job's source and the provenance
        "labels": {"org.opencontainers.image.revision": push.sha},
        "source": {"host": push.provider, "api_url": push.api_url, "repository": push.full_name, "project_id": push.project_id,
                   "sha": push.sha, "ref": push.ref, "delivery": delivery[:256]},
    }
    try:
        try:
            return parse_request(payload)
        except Rejected as exc:
            if not exc.field.startswith("source"):
                raise
            log.warning("webhook for %s: no commit statuses for this push: %s", push.full_name, exc)
            return parse_request({**payload, "source": None})  # statuses are a courtesy: the push still builds
    except Rejected as exc:
        raise WebhookError(422, f"webhooks.repositories[{push.full_name!r}] makes an invalid job: {exc}") from None


def handle(provider: str, headers: Mapping[str, str], body: bytes, settings: Settings, store: JobStore) -> Outcome:
    """One delivery, start to answer. `headers` must have lower-case names."""
    payload = verified_payload(provider, headers, body, settings)
    event = event_name(provider, headers)
    if event == "ping":
        return Outcome(200, {"result": "pong"})
    if event != "push":
        return Outcome(200, {"result": "ignored", "reason": f"event {event or '(none)'!r} is not a push"})
    push = parse_push(provider, load_payload(payload))
    repo = repository_config(push, settings)
    if repo is None:
        return Outcome(200, {"result": "ignored", "reason": f"repository {push.full_name!r} is not configured "
                                                             "(webhooks.repositories)"})
    reason = why_not(push, repo)
    if reason:
        return Outcome(200, {"result": "ignored", "reason": reason})
    request = build_request(push, repo, delivery_id(provider, headers, push), settings)
    if isinstance(request, str):
        return Outcome(200, {"result": "ignored", "reason": request})
    key, window = push_key(push), settings.webhooks.replay_window
    first = store.claim_push(key, request.id, window)
    if first is not None and first != request.id:  # the same push in another delivery: a replay
        earlier = store.get(first)
        log.warning("webhook %s: %s was already received (job %s); not built again", provider, summary(push), first)
        return Outcome(200, {"result": "duplicate", "job": first, "status": earlier.status.value if earlier else "queued",
                             "reason": f"this push ({summary(push)}) was already received in another delivery "
                                       f"within webhooks.replay_window ({window} s)"})
    try:
        delivery = request.source.delivery if request.source else None
        record, created = submit(request, settings, store, WEBHOOK, submitted_by=f"webhook:{provider}:{delivery or 'unnamed'}")
    except BaseException as exc:
        store.release_push(key, request.id)  # not queued: a retry of this push must be able to build
        if isinstance(exc, Rejected):
            raise WebhookError(422, f"webhooks.repositories[{push.full_name!r}] makes an invalid job: {exc}") from None
        raise
    if not created:
        return Outcome(200, {"result": "duplicate", "job": record.id, "status": record.status.value,
                             "reason": "this delivery was already received"})
    assert isinstance(request.context, GitContext)  # a push builds its commit (build_request)
    return Outcome(202, {"result": "queued", "job": record.id, "tags": request.tags, "commit": push.sha,
                         "url": mask_url(request.context.url)})

"""Settings for the HTTP API, webhooks, git sources, completion callbacks, commit statuses
and how both are delivered.

Imported by runner.config.settings (the `api`, `webhooks`, `git`, `callbacks`, `statuses` and
`deliveries` sections).
Every secret can be given inline or as a `*_file` path read at use time (rotation needs
no restart); inline secrets are SecretStr, so `runner config show` redacts them.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from string import Formatter
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, IPvAnyNetwork, SecretStr, field_validator, model_validator

from runner.config.client import ClientApi, ClientDeliveries
from runner.core.jobs import GitHost, JobSource
from runner.core.models import BaseUrl, Strict, read_secret
from runner.core.platforms import canonical

Right = Literal["submit", "read", "cancel", "status"]
#: a token's rights when it names none
_READ_ONLY: list[Right] = ["read"]
PLACEHOLDERS = ("repo", "owner", "branch", "tag", "sha", "short_sha")
#: what a commit status's context (name) and target_url templates may name
CONTEXT_PLACEHOLDERS = ("executor", "repository")
TARGET_PLACEHOLDERS = ("public_url", "job_id", "executor", "repository", "sha", "short_sha", "ref")


def template_names(template: str, what: str) -> set[str]:
    """The {placeholders} a str.format template names; ValueError naming `what` if it is malformed."""
    try:
        return {name for _, name, _, _ in Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ValueError(f"{what} {template!r}: {exc}") from None


def check_template(template: str | None, known: Iterable[str], what: str) -> str | None:
    if template is not None:
        unknown = template_names(template, what) - set(known)
        if unknown:
            raise ValueError(f"{what} {template!r} uses {sorted(unknown)}; known: {', '.join(known)}")
    return template


class _OneSource(Strict):
    """A secret given inline or by file, not both."""

    inline_field: ClassVar[str] = "secret"
    file_field: ClassVar[str] = "secret_file"

    @model_validator(mode="after")
    def _one_source(self):
        if getattr(self, self.inline_field) is not None and getattr(self, self.file_field) is not None:
            raise ValueError(f"give {self.inline_field} or {self.file_field}, not both")
        return self

    def secret_value(self, what: str = "secret") -> str | None:
        return read_secret(getattr(self, self.inline_field), getattr(self, self.file_field), what)


class ApiToken(_OneSource):
    """A bearer token for the job endpoints and what it may do."""

    inline_field: ClassVar[str] = "token"
    file_field: ClassVar[str] = "token_file"
    name: str = Field(description="shown in the server log, never the token itself")
    token: SecretStr | None = None
    token_file: Path | None = None
    rights: list[Right] = Field(default_factory=lambda: _READ_ONLY.copy(), description="submit, read, cancel; status: its jobs "
                                "may name any commit (`source`) to get commit statuses")
    status_repositories: list[str] = Field(default_factory=list, description="without the status right: the repositories "
                                           "whose commits this token's jobs may name in `source` (owner/repo, GitLab "
                                           "group/project; `github:owner/repo` for one host only); case-insensitive")

    @field_validator("status_repositories")
    @classmethod
    def _repository_names(cls, names: list[str]) -> list[str]:
        for name in names:
            host, _, repository = name.rpartition(":")
            if host and host not in ("github", "gitlab", "gitea"):
                raise ValueError(f"{name!r}: the host before ':' must be github, gitlab or gitea")
            if not repository or repository.startswith("/") or repository.endswith("/"):
                raise ValueError(f"{name!r} is not a repository: expected owner/repo or host:owner/repo")
        return names

    def may_report_to(self, source: JobSource) -> bool:
        """May this token's jobs put commit statuses on `source`'s commit, whatever they build?"""
        if "status" in self.rights:
            return True
        wanted = source.repository.casefold()
        for name in self.status_repositories:
            host, _, repository = name.rpartition(":")
            if repository.casefold() == wanted and host in ("", source.host):
                return True
        return False


class ApiConfig(ClientApi):
    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="127.0.0.1", description="`runner serve` listen address")
    port: int = Field(default=8080, ge=0, le=65535)
    tokens: list[ApiToken] = Field(default_factory=list, description="no tokens: every job endpoint answers 401")
    max_body_bytes: int = Field(default=4 * 1024**2, gt=0, description="JSON bodies (jobs, webhooks); "
                                "context uploads use limits.max_context_bytes")
    max_pending_uploads_per_token: int = Field(default=16, gt=0, description="uploaded contexts one token may hold "
                                               "before submitting their jobs; past it uploads get 429")
    max_followers_per_token: int = Field(default=500, gt=0, description="open `logs?follow=true` streams one token "
                                         "may hold at once; past it the API answers 429")
    public_url: BaseUrl = Field(default=None, description="where people reach `runner serve` (e.g. https://ci.example.com): "
                                   "commit statuses link to {public_url}/jobs/ID, the job's page and log")



class WebhookSecret(_OneSource):
    """GitHub and Gitea: the HMAC key; GitLab: the value of X-Gitlab-Token."""

    secret: SecretStr | None = None
    secret_file: Path | None = None


class RepositoryHook(Strict):
    """What a push to one repository (full name, e.g. team/app) builds."""

    images: list[str] = Field(min_length=1, description="templates: {repo} {owner} {branch} {tag} {sha} {short_sha}; "
                              "a template naming a value the push lacks (e.g. {tag} on a branch push) is skipped")
    dockerfile: str = "Dockerfile"
    context: str = Field(default="", description="subdirectory of the repository to build")
    branches: list[str] | None = Field(default=None, description="glob patterns; default: the repository's default branch")
    tags: list[str] = Field(default_factory=list, description="glob patterns of git tags that build; default none")
    executor: str | None = None
    build_args: dict[str, str] = Field(default_factory=dict)
    platforms: list[str] = Field(default_factory=list, description="target platforms, e.g. [linux/amd64, linux/arm64]: "
                                 "one image per platform and an image index under every tag; default: the worker's own")
    clone_url: str | None = Field(default=None, description="clone from here instead of the URL in the payload")
    submodules: bool = False
    keep_git_dir: bool = Field(default=False, description="keep .git in the build context, as BuildKit does with "
                               "BUILDKIT_CONTEXT_KEEP_GIT_DIR=1 (a shallow clone at the pushed commit); default: left out")
    timeout: int | None = Field(default=None, gt=0)
    callback_url: str | None = None
    reuse: bool = Field(default=True, description="jobs for this repository (their source) may reuse an image built "
                        "from the same inputs; false: always build")
    reuse_with_secrets: bool = Field(default=False, description="a job with secret build args or build secrets may "
                                     "reuse too (the key holds their names, never their values): only when the "
                                     "image cannot depend on which value was given")

    @field_validator("clone_url")
    @classmethod
    def _no_password_in_url(cls, url: str | None) -> str | None:
        if url and re.search(r"://[^/@]*:[^/@]*@", url):
            raise ValueError("clone_url holds a password or token, which job records would keep; "
                             "put it under git.credentials instead")
        return url

    @field_validator("platforms")
    @classmethod
    def _platforms(cls, values: list[str]) -> list[str]:
        return canonical(values)

    @field_validator("images")
    @classmethod
    def _known_placeholders(cls, images: list[str]) -> list[str]:
        for template in images:
            check_template(template, PLACEHOLDERS, "image template")
        return images


class WebhooksConfig(Strict):
    github: WebhookSecret = Field(default_factory=WebhookSecret)
    gitlab: WebhookSecret = Field(default_factory=WebhookSecret)
    gitea: WebhookSecret = Field(default_factory=WebhookSecret)
    repositories: dict[str, RepositoryHook] = Field(default_factory=dict, description="by full name, owner/repo")
    replay_window: int = Field(default=3600, ge=1, description="seconds during which a second delivery of the same push "
                               "(host, repository, ref, before and after commits), whatever its delivery id, is "
                               "answered as a duplicate instead of building again: a captured delivery replayed "
                               "builds at most once per window")


class GitCredential(_OneSource):
    """How to authenticate to one git host: a token (HTTPS) and/or an SSH key."""

    inline_field: ClassVar[str] = "token"
    file_field: ClassVar[str] = "token_file"
    host: str = Field(description="host or host:port as it appears in clone URLs")
    username: str = "git"
    token: SecretStr | None = None
    token_file: Path | None = None
    ssh_key_file: Path | None = Field(default=None, description="private key; copied to a 0600 file per job")
    known_hosts_file: Path | None = Field(default=None, description="without it, unknown SSH host keys are refused")


class GitConfig(Strict):
    binary: str = "git"
    allowed_schemes: list[str] = Field(default_factory=lambda: ["https", "ssh"],
                                       description="clone URL schemes jobs may use: https, ssh, http, git, file")
    shallow: bool = Field(default=True, description="fetch only the wanted commit (depth 1; submodules too); false: its "
                          "whole history, still no other branch or tag")
    credentials: list[GitCredential] = Field(default_factory=list)

    def credential_for(self, host: str) -> GitCredential | None:
        return next((c for c in self.credentials if c.host == host), None)


class DeliveryPolicy(Strict):
    """How a delivery (a completion callback, a commit status) is tried: a Celery task on the
    `<namespace>.deliveries` queue, retried with exponential backoff and jitter until it is
    accepted, refused for good, out of attempts or past its deadline."""

    timeout: float = Field(default=10.0, gt=0, description="seconds one HTTP request may take, all of it: name lookup, "
                           "connect, TLS, sending and the whole answer (the connection is closed at it)")
    attempts: int = Field(default=5, ge=1, description="requests at most for an interim state, the first included "
                          "(a final state is tried until final_deadline)")
    backoff: float = Field(default=1.0, ge=0, description="first retry delay in seconds; doubles each time (a random "
                           "half of each delay is jitter)")
    max_backoff: float = Field(default=60.0, ge=0, description="longest delay between two requests")
    deadline: float = Field(default=3600.0, gt=0, description="seconds after the job's moment past which a delivery "
                            "of an interim state (queued, started, requeued) gives up (logged and counted), attempts "
                            "left or not")
    final_deadline: float = Field(default=86400.0, gt=0, description="seconds a final state (a job's last commit status, "
                                  "its completion callback) is kept and tried again, with no limit of attempts, until it "
                                  "is delivered or refused; bounded by retention.finished_seconds")


class CallbacksConfig(DeliveryPolicy, _OneSource):
    """Completion callbacks: POST of the final job record, signed the Standard Webhooks way
    (webhook-id, webhook-timestamp, webhook-signature) with `secret`. A callback is a final
    state: it is tried until `final_deadline` (`attempts` and `deadline` bound interim commit
    statuses, which callbacks have none of)."""

    attempts: int = Field(default=5, ge=1, description="not used by callbacks (a callback is a final state, tried "
                          "until final_deadline)")
    deadline: float = Field(default=3600.0, gt=0, description="not used by callbacks (a callback is a final state, "
                            "tried until final_deadline)")
    secret: SecretStr | None = Field(default=None, description="signing key: `whsec_<base64>` (the Standard Webhooks "
                                     "form: the key is the decoded bytes) or any other string (the key is its UTF-8 bytes)")
    secret_file: Path | None = None
    allowed_hosts: list[str] | None = Field(default=None, description="glob patterns of callback hosts (name or "
                                            "name:port); null: any. A host named exactly (no wildcard) may be on any "
                                            "address; others only on public ones")
    allowed_networks: list[IPvAnyNetwork] = Field(default_factory=list, description="address ranges callbacks may "
                                                  "reach beyond public addresses (e.g. 10.20.0.0/16); loopback, "
                                                  "link-local, private, unique-local and multicast are refused otherwise")

    @field_validator("secret")
    @classmethod
    def _standard_form(cls, secret: SecretStr | None) -> SecretStr | None:
        value = secret.get_secret_value() if secret else ""
        if value.startswith("whsec_"):
            try:
                if not base64.b64decode(value.removeprefix("whsec_"), validate=True):
                    raise ValueError
            except (ValueError, binascii.Error):
                raise ValueError("a secret starting with whsec_ must go on with the key in base64") from None
        return secret


class StatusRepository(_OneSource):
    """Overrides for one repository; what it leaves out comes from its host's section."""

    inline_field: ClassVar[str] = "token"
    file_field: ClassVar[str] = "token_file"
    enabled: bool | None = Field(default=None, description="false: no statuses for this repository")
    token: SecretStr | None = None
    token_file: Path | None = None
    context: str | None = None
    target_url: str | None = None

    @field_validator("context")
    @classmethod
    def _context(cls, value: str | None) -> str | None:
        return check_template(value, CONTEXT_PLACEHOLDERS, "context")

    @field_validator("target_url")
    @classmethod
    def _target(cls, value: str | None) -> str | None:
        return check_template(value, TARGET_PLACEHOLDERS, "target_url")


API_URL_HELP = ("GitHub: the API root (GitHub Enterprise: https://HOST/api/v3); GitLab and Gitea: the instance's root URL. "
                "The token is sent only here: a job whose source names another API URL gets no status")


class StatusHost(StatusRepository):
    """Commit statuses on one kind of git host: a host posts them once it has a token."""

    enabled: bool | None = Field(default=True, description="false: no statuses on this host")
    api_url: BaseUrl = Field(default=None, description=API_URL_HELP)
    context: str | None = Field(default="ci-build-runner/{executor}", description="the status's context (GitLab: its "
                                "name); placeholders {executor} {repository}")
    target_url: str | None = Field(default=None, description="the status's link; placeholders {public_url} {job_id} "
                                   "{executor} {repository} {sha} {short_sha} {ref}; default: {public_url}/jobs/{job_id} "
                                   "(the job's page and log) when api.public_url is set, else no link")
    repositories: dict[str, StatusRepository] = Field(default_factory=dict, description="overrides by repository "
                                                      "(owner/repo; GitLab: group/project)")



class GitHubStatuses(StatusHost):
    api_url: BaseUrl = Field(default="https://api.github.com", description=API_URL_HELP)


class GitLabStatuses(StatusHost):
    api_url: BaseUrl = Field(default="https://gitlab.com", description=API_URL_HELP)


@dataclass(frozen=True)
class StatusTarget:
    """Where and how one job's statuses are posted (resolved from the config for its source)."""

    host: GitHost
    api_url: str
    token_from: StatusRepository  # the repository's override when it names a token, else the host section
    context: str  # template
    target_url: str | None  # template; None: {public_url}/jobs/{job_id} when api.public_url is set

    def token(self) -> str | None:
        """Read at use (a token file's rotation needs no restart); ValueError if a file is unreadable."""
        return self.token_from.secret_value(f"statuses.{self.host} token")


class StatusesConfig(DeliveryPolicy):
    """Commit statuses on the commit a job came from (its `source`): pending, running and the result."""

    attempts: int = Field(default=10, ge=1, description="requests at most for an interim state, the first included "
                          "(a final state is tried until final_deadline)")
    max_backoff: float = Field(default=300.0, ge=0, description="longest delay between two requests")
    github: GitHubStatuses = Field(default_factory=GitHubStatuses)
    gitlab: GitLabStatuses = Field(default_factory=GitLabStatuses)
    gitea: StatusHost = Field(default_factory=StatusHost, description="Gitea and Forgejo; api_url has no default")
    trust_queue_sources: bool = Field(default=False, description="true: a message posted straight to the queue (and "
                                      "`runner submit` without --api, which writes to Redis) may name any commit in "
                                      "`source`; false: only the commit its git context clones from that repository")

    def target(self, source: JobSource) -> StatusTarget | str:
        """Where `source`'s statuses go, or why they are not posted."""
        host: StatusHost = getattr(self, source.host)
        repo = host.repositories.get(source.repository) or next(
            (cfg for name, cfg in host.repositories.items() if name.casefold() == source.repository.casefold()), None)
        if host.enabled is False or (repo is not None and repo.enabled is False):
            return f"statuses are off for {source.host} repository {source.repository}"
        if not host.api_url:
            return f"statuses.{source.host}.api_url is not set"
        if source.api_url and not same_url(source.api_url, host.api_url):
            return f"the job's source names the API {source.api_url}, not statuses.{source.host}.api_url ({host.api_url})"
        chosen = repo if repo is not None and (repo.token is not None or repo.token_file is not None) else host
        if chosen.token is None and chosen.token_file is None:
            return f"statuses.{source.host} has no token"
        context = (repo and repo.context) or host.context or "ci-build-runner/{executor}"
        return StatusTarget(source.host, host.api_url, chosen, context, (repo and repo.target_url) or host.target_url)


def same_url(a: str, b: str) -> bool:
    """Equal http(s) URLs, up to the case of scheme and host and a trailing slash."""
    def norm(url: str) -> tuple[str, str]:
        scheme, _, rest = url.partition("://")
        netloc, _, path = rest.partition("/")
        return f"{scheme.lower()}://{netloc.lower()}", path.rstrip("/")

    return norm(a) == norm(b)


class DeliveriesConfig(ClientDeliveries):
    """The worker side of callbacks and commit statuses: every worker also takes the
    `<namespace>.deliveries` queue, on threads of its own, so deliveries never wait for a build slot."""

    model_config = ConfigDict(extra="forbid")

    concurrency: int = Field(default=2, ge=1, description="deliveries one worker runs at once, beside its builds")
    circuit_failures: int = Field(default=5, ge=0, description="failed requests in a row (no answer, 5xx, 429) after "
                                  "which a host's circuit opens: its deliveries wait, and one probe per backoff step "
                                  "asks whether it is back (shared by every worker); 0: no circuits")
    circuit_backoff: float = Field(default=1.0, gt=0, description="seconds before the first probe of an open circuit; "
                                   "doubles with each failed probe (a random half is jitter)")
    circuit_max_backoff: float = Field(default=30.0, gt=0, description="longest wait between two probes (a Retry-After "
                                       "or rate-limit reset is waited for even if longer): a host that comes back is "
                                       "noticed within it")

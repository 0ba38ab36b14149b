"""Job models: what a build request is, and what we record about a job. Pure: no I/O."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from runner.core import request_rules as rules
from runner.core.attestations import Attestation
from runner.core.build_inputs import BuildInputs
from runner.core.errors import ErrorKind
from runner.core.models import BaseUrl
from runner.core.status import REQUEUE_REASONS, Status, new_job_id  # noqa: F401 - re-exported


class ImageRef(BaseModel):
    """A parsed, full image reference: registry host, repository path and tag."""

    registry: str
    repository: str
    tag: str

    @classmethod
    def parse(cls, ref: str) -> ImageRef:
        registry, repository, tag = rules.parse_image_ref(ref)
        return cls(registry=registry, repository=repository, tag=tag)

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}:{self.tag}"


class UploadedContext(BaseModel):
    """A tar stored in Redis in chunks by `runner submit` (or by any client, see README)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["upload"] = "upload"


class GitContext(BaseModel):
    """A git repository cloned by the worker at exactly `commit` (or the tip of `ref`)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["git"] = "git"
    url: str = Field(min_length=1, max_length=2048)
    ref: str | None = Field(default=None, max_length=255)
    commit: str | None = Field(default=None, pattern=r"^[0-9a-f]{7,64}$")
    subdir: str = Field(default="", max_length=1024)
    submodules: bool = False
    keep_git_dir: bool = Field(default=False, description="keep the repository's .git in the context (BuildKit's "
                               "BUILDKIT_CONTEXT_KEEP_GIT_DIR); the build arg of that name turns it on too")

    @field_validator("subdir")
    @classmethod
    def _subdir_inside(cls, value: str) -> str:
        return rules.inside_context(value, allow_empty=True)

    @model_validator(mode="after")
    def _ref_or_commit(self) -> GitContext:
        if not self.ref and not self.commit:
            raise ValueError("a git context needs `ref` or `commit`")
        return self


ContextSource = Annotated[UploadedContext | GitContext, Field(discriminator="type")]

#: A repository path on a git host: owner/repo, or a GitLab group path (group/sub/project)
_REPOSITORY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(?:/[A-Za-z0-9_][A-Za-z0-9_.-]*)+$")
#: the git hosts a job's commit statuses can go to (Forgejo speaks Gitea's API)
GitHost = Literal["github", "gitlab", "gitea"]


class JobSource(BaseModel):
    """Where a job came from: a commit on a git host, which gets the job's commit statuses.

    Webhooks fill it; queue messages, the API and `runner submit` may set it. The statuses'
    token is only ever sent to the API URL configured for the host (statuses.<host>.api_url):
    a job whose `api_url` names another gets no status."""

    model_config = ConfigDict(extra="forbid")
    host: GitHost = Field(description="the kind of git host (Forgejo is gitea)")
    api_url: BaseUrl = Field(default=None, description="GitHub: the API root (https://api.github.com, or "
                                "https://HOST/api/v3 for GitHub Enterprise); GitLab and Gitea: the instance's root URL. "
                                "Default: statuses.<host>.api_url")
    repository: str = Field(min_length=1, max_length=512, description="owner/repo; GitLab: the project's path with "
                            "namespace (group/sub/project) or its numeric id")
    project_id: int | None = Field(default=None, ge=1, description="GitLab: the numeric project id (used in API calls when given)")
    sha: str = Field(pattern=r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$", description="the full commit id the statuses are for")
    ref: str | None = Field(default=None, max_length=255, description="the pushed ref (refs/heads/main, refs/tags/v1, or a branch name)")
    delivery: str | None = Field(default=None, max_length=256, description="the webhook delivery id, when a webhook made the job")

    @field_validator("repository")
    @classmethod
    def _repository_path(cls, value: str) -> str:
        if value.isdigit() or (_REPOSITORY.match(value) and not any(part in (".", "..") for part in value.split("/"))):
            return value
        raise ValueError(f"{value[:100]!r} is not a repository: expected owner/repo (GitLab: group/project or a project id)")

    @model_validator(mode="after")
    def _owner_and_name(self) -> JobSource:
        if self.host != "gitlab" and self.repository.count("/") != 1:
            raise ValueError(f"repository {self.repository[:100]!r}: {self.host} names a repository owner/repo")
        return self

    @property
    def branch_or_tag(self) -> str | None:
        """The ref without refs/heads/ or refs/tags/ (what GitLab's `ref` takes)."""
        if self.ref is None:
            return None
        return self.ref.removeprefix("refs/heads/").removeprefix("refs/tags/")


class BuildRequest(BaseModel):
    """What a client asks for. The same schema arrives by queue, CLI, HTTP and webhook."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=new_job_id, description="lower-case letters and digits, separated by `.`, `_`, `__` or "
                    "dashes; at most 128 characters (the config default is a random one)")
    context: ContextSource = Field(default_factory=UploadedContext)
    dockerfile: str = "Dockerfile"
    tags: list[str] = Field(min_length=1)
    build_args: dict[str, str] = Field(default_factory=dict)
    secret_build_args: list[str] = Field(
        default_factory=list, description="Names of build args whose values are masked everywhere."
    )
    secrets: list[str] = Field(default_factory=list, description="Ids of build secrets from config.")
    target: str | None = Field(default=None, max_length=rules.MAX_TARGET)
    labels: dict[str, str] = Field(default_factory=dict)
    platform: str | None = Field(default=None, max_length=rules.MAX_PLATFORM, description="One target platform (OS/ARCH[/VARIANT]); "
                                 "kept for older clients: `platforms` holds it too.")
    platforms: list[str] = Field(default_factory=list, max_length=rules.MAX_PLATFORMS_FIELD, description="Target platforms, "
                                 "e.g. [linux/amd64, linux/arm64]: two or more build one image per platform and push an "
                                 "image index under every tag; none: the worker's own platform.")
    no_cache: bool = Field(default=False, description="build every step again; also never reuses an earlier image")
    reuse: bool = Field(default=True, description="false: always build, even when an image built from the same inputs "
                        "is in the registry (README: reusing images)")
    executor: str | None = Field(default=None, description="Executor name; the config default if omitted.")
    builder: Literal["auto", "buildkit", "classic"] | None = None
    timeout: int | None = Field(default=None, gt=0, description="Seconds; the config default if omitted.")
    push: bool = True
    cache_key: str | None = Field(default=None, pattern=rules.CACHE_KEY)
    callback_url: str | None = Field(default=None, max_length=2048)
    source: JobSource | None = Field(default=None, description="Where the job came from (a commit on a git host): "
                                     "the job's commit statuses are posted there.")

    @field_validator("id")
    @classmethod
    def _id_rule(cls, value: str) -> str:
        return rules.check_job_id(value)

    @field_validator("dockerfile")
    @classmethod
    def _dockerfile_inside(cls, value: str) -> str:
        return rules.inside_context(value)

    @field_validator("tags")
    @classmethod
    def _tags_are_refs(cls, tags: list[str]) -> list[str]:
        return rules.check_tags(tags)

    @field_validator("build_args", "labels")
    @classmethod
    def _bounded_pairs(cls, pairs: dict[str, str]) -> dict[str, str]:
        return rules.check_pairs(pairs)

    @field_validator("platform")
    @classmethod
    def _one_platform(cls, value: str | None) -> str | None:
        return None if value is None else rules.one_platform(value)

    @field_validator("platforms")
    @classmethod
    def _platforms(cls, values: list[str]) -> list[str]:
        return rules.canonical_platforms(values)

    @model_validator(mode="after")
    def _platform_and_platforms(self) -> BuildRequest:
        """`platform` (one) and `platforms` say the same thing: a request may give either, and
        the stored one has both (`platform` set only for a single-platform job)."""
        self.platform, self.platforms = rules.platform_and_platforms(self.platform, self.platforms)
        return self

    @property
    def multi_platform(self) -> bool:
        """Two or more platforms: one image each, and an index under every tag."""
        return len(self.platforms) > 1

    @field_validator("secret_build_args")
    @classmethod
    def _secret_args_exist(cls, names: list[str], info: ValidationInfo) -> list[str]:
        return rules.check_secret_args(names, info.data.get("build_args", {}))

    @model_validator(mode="after")
    def _bounded_total(self) -> BuildRequest:
        rules.check_pairs_total(self.build_args, self.labels)
        return self

    def image_refs(self) -> list[ImageRef]:
        return [ImageRef.parse(ref) for ref in self.tags]

    def secret_values(self) -> list[str]:
        return [self.build_args[name] for name in self.secret_build_args if self.build_args[name]]

    def secret_arg_values(self) -> dict[str, str]:
        return {name: self.build_args[name] for name in self.secret_build_args}

    def with_secret_values(self, values: dict[str, str]) -> BuildRequest:
        """The request with its secret build args' values put back (from the store)."""
        missing = [name for name in self.secret_build_args if name not in values]
        if missing:
            raise ValueError(f"the values of secret build arg(s) {', '.join(missing)} are gone: the job was cancelled, "
                             "or waited longer than retention.queued_seconds")
        return self.model_copy(update={"build_args": {**self.build_args, **{n: values[n] for n in self.secret_build_args}}})

    def redacted(self) -> BuildRequest:
        """A copy safe to store and show: secret build-arg values replaced."""
        update: dict = {"build_args": rules.redacted_args(self.build_args, self.secret_build_args)}
        if isinstance(self.context, GitContext):
            update["context"] = self.context.model_copy(update={"url": re.sub(r"(://)[^/@]*@", r"\1***@", self.context.url)})
        return self.model_copy(update=update)


class PlatformImage(BaseModel):
    """One platform's image of a multi-platform job: the manifest the index lists for it."""

    platform: str
    digest: str


class PushedImage(BaseModel):
    """A tag and what it points to now: an image, or for a multi-platform job the index, whose
    manifests (one per platform) are in `platforms`."""

    ref: str
    digest: str
    platforms: list[PlatformImage] = Field(default_factory=list)


class JobError(BaseModel):
    kind: ErrorKind
    message: str


def now() -> datetime:
    return datetime.now(UTC)


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    """How long from `start` to `end` (never negative: clocks of two hosts), None without both."""
    if start is None or end is None:
        return None
    return max((end - start).total_seconds(), 0.0)


class JobRecord(BaseModel):
    """Everything we know about one job; stored as JSON in Redis."""

    id: str
    request: BuildRequest
    status: Status = Status.queued
    executor: str
    queue: str
    worker: str | None = None
    images: list[PushedImage] = Field(default_factory=list)
    error: JobError | None = None
    attempts: int = 0
    created_at: datetime = Field(default_factory=now)
    #: when the job last went back to its queue (a requeue, or its worker lost); None: waiting
    #: since created_at. Queue wait is measured per attempt from here.
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    cancel_requested: bool = False
    #: what the build is made from, computed before it (never a secret); None before that
    inputs: BuildInputs | None = None
    #: the provenance and signatures attached to the pushed images; None: nothing attached
    attestation: Attestation | None = None
    #: the job whose image was put under this job's tags instead of a build (same inputs); None: built
    reused_from: str | None = None
    #: who handed the job in: "token:NAME" (the API, the dashboard), "webhook:HOST:DELIVERY",
    #: "cli:USER@HOST" (`runner submit` through Redis), "queue" (a message posted to the queue);
    #: None on records older than the field. Never a secret.
    submitted_by: str | None = None
    #: does the job get commit statuses? Admission's answer (runner/worker/admission.py,
    #: statuses_for), kept from when the record was made so nothing decides it again. A record
    #: written before the field: whether its request names a source (the old rule; the worker
    #: skips a status whose host has no config).
    statuses: bool = False

    @model_validator(mode="before")
    @classmethod
    def _statuses_of_older_records(cls, data: object) -> object:
        if isinstance(data, dict) and "statuses" not in data:
            request = data.get("request")
            source = request.get("source") if isinstance(request, dict) else getattr(request, "source", None)
            return {**data, "statuses": source is not None}
        return data

    @property
    def finished(self) -> bool:
        return self.status.finished

    @property
    def waiting_since(self) -> datetime:
        """When the current (or last) wait in the queue began."""
        return self.queued_at or self.created_at

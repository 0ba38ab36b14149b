"""Settings for the HTTP API, webhooks, git sources and completion callbacks.

Imported by runner.config.settings (the `api`, `webhooks`, `git` and `callbacks` sections).
Every secret can be given inline or as a `*_file` path read at use time (rotation needs
no restart); inline secrets are SecretStr, so `runner config show` redacts them.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Formatter
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from runner.config.client import ClientApi
from runner.core.models import Strict, read_secret

Right = Literal["submit", "read", "cancel"]
PLACEHOLDERS = ("repo", "owner", "branch", "tag", "sha", "short_sha")


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
    rights: list[Right] = Field(default_factory=lambda: ["read"], description="submit, read, cancel")


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
    clone_url: str | None = Field(default=None, description="clone from here instead of the URL in the payload")
    submodules: bool = False
    timeout: int | None = Field(default=None, gt=0)
    callback_url: str | None = None

    @field_validator("clone_url")
    @classmethod
    def _no_password_in_url(cls, url: str | None) -> str | None:
        if url and re.search(r"://[^/@]*:[^/@]*@", url):
            raise ValueError("clone_url holds a password or token, which job records would keep; "
                             "put it under git.credentials instead")
        return url

    @field_validator("images")
    @classmethod
    def _known_placeholders(cls, images: list[str]) -> list[str]:
        for template in images:
            try:
                names = {name for _, name, _, _ in Formatter().parse(template) if name is not None}
            except ValueError as exc:
                raise ValueError(f"image template {template!r}: {exc}") from None
            unknown = names - set(PLACEHOLDERS)
            if unknown:
                raise ValueError(f"image template {template!r} uses {sorted(unknown)}; known: {', '.join(PLACEHOLDERS)}")
        return images


class WebhooksConfig(Strict):
    github: WebhookSecret = Field(default_factory=WebhookSecret)
    gitlab: WebhookSecret = Field(default_factory=WebhookSecret)
    gitea: WebhookSecret = Field(default_factory=WebhookSecret)
    repositories: dict[str, RepositoryHook] = Field(default_factory=dict, description="by full name, owner/repo")


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
    shallow: bool = Field(default=True, description="fetch only the wanted commit when the server allows it")
    credentials: list[GitCredential] = Field(default_factory=list)

    def credential_for(self, host: str) -> GitCredential | None:
        return next((c for c in self.credentials if c.host == host), None)


class CallbacksConfig(_OneSource):
    """Completion callbacks: POST of the final job record, signed with `secret`."""

    secret: SecretStr | None = Field(default=None, description="HMAC-SHA256 key for X-Runner-Signature-256")
    secret_file: Path | None = None
    timeout: float = Field(default=10.0, gt=0)
    attempts: int = Field(default=5, ge=1)
    backoff: float = Field(default=1.0, ge=0, description="first retry delay in seconds; doubles each time")
    max_backoff: float = Field(default=60.0, ge=0)
    allowed_hosts: list[str] | None = Field(default=None, description="glob patterns of callback hosts; None: any")

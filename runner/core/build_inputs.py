"""What a build is made from: one definition, computed once per job before the build
(runner.supply.inputs), kept in the job's record, and the only source of a provenance's
`externalParameters` and `resolvedDependencies` (runner.supply.provenance). A build whose
inputs are equal is the same build: the key a reuse of an earlier image would use.

Never a secret: secret build args appear by name only, build secrets by id only, a git URL
without its credentials. Pure: no I/O."""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

#: the userinfo of a URL (user:password@), which never leaves the worker
_USERINFO = re.compile(r"(?<=://)[^/@]*@")


def without_credentials(url: str) -> str:
    """`url` without any user:password@ part."""
    return _USERINFO.sub("", url, count=1)


class SourceInputs(BaseModel):
    """Where the context came from: a git checkout (url, ref and the commit checked out), or
    the commit a job names as its source (a webhook's push, `--source-*`)."""

    url: str | None = Field(default=None, description="the git URL cloned, without credentials")
    host: str | None = Field(default=None, description="github, gitlab or gitea, when the job names its source")
    repository: str | None = Field(default=None, description="owner/repo on that host")
    ref: str | None = None
    commit: str | None = Field(default=None, description="the full commit id the context was checked out at (or named)")
    path: str = Field(default="", description="the folder of the repository that is the context")
    checked_out: bool = Field(default=False, description="the worker checked out `commit` itself (a git context); "
                              "False: the commit is what the job says it is for")


class BaseImage(BaseModel):
    """An image the build pulls (a FROM, a COPY --from), resolved at the time of the job."""

    ref: str = Field(description="as the Dockerfile names it, build args substituted")
    name: str = Field(description="normalised: docker.io/library/busybox:latest")
    digest: str | None = Field(default=None, description="what the registry held under the tag (an index for a "
                               "multi-platform image), or the digest the Dockerfile pins")
    platforms: dict[str, str] = Field(default_factory=dict, description="when `digest` is an index: the manifest each "
                                      "platform of the build takes from it")
    error: str | None = Field(default=None, description="why it has no digest (unreachable registry, unknown tag)")


class BuildInputs(BaseModel):
    """Everything a build's result depends on that the runner can name."""

    context_digest: str | None = Field(default=None, description="sha256 of the canonical context tar every executor gets")
    source: SourceInputs | None = None
    dockerfile: str
    target: str | None = None
    platforms: list[str] = Field(default_factory=list, description="target platforms; empty: the worker's own")
    build_args: dict[str, str] = Field(default_factory=dict, description="names and values of the build args that are not secret")
    secret_build_args: list[str] = Field(default_factory=list, description="names only")
    secrets: list[str] = Field(default_factory=list, description="ids of the build secrets mounted (never their values)")
    labels: dict[str, str] = Field(default_factory=dict)
    no_cache: bool = False
    executor: str
    builder: str = Field(description="auto, buildkit or classic (the job's, else the config's)")
    base_images: list[BaseImage] = Field(default_factory=list)

    @property
    def resolved(self) -> bool:
        """Every base image has a digest (a reuse can only trust inputs that are all pinned)."""
        return all(image.digest for image in self.base_images)

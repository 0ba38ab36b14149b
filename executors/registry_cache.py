"""The build cache kept in a registry and shared by every worker (`cache_repo`), for each
executor that can have one: BuildKit through an engine (socket, dind, sysbox: the inline cache),
buildah and img (`--cache-from` / `--cache-to`).

`cache_repo` names a repository, or a template of one, filled from the job:

- `{registry}` and `{repo}`: the registry and repository of the job's first tag, so
  `{registry}/cache/{repo}` gives each image repository a cache of its own, next to it;
- `{cache_key}`: the job's `cache_key` (lower-cased, made a valid path component). A job
  without one builds without the registry cache: jobs never share a cache by accident.

A name without placeholders is shared as given, or per job `cache_key` as
`<cache_repo>/<cache_key>` when the job has one (how `cache_repo` always worked).
"""

from __future__ import annotations

import re
import string
from typing import Annotated

from pydantic import AfterValidator, Field

from runner.core.jobs import BuildRequest, ImageRef
from runner.core.platforms import Platform

PLACEHOLDERS = ("registry", "repo", "cache_key")
#: the tag the engine executors give their inline-cache image in the cache repository
INLINE_CACHE_TAG = "buildcache"
_SAMPLE = {"registry": "registry.example.com:5000", "repo": "team/app", "cache_key": "main"}


def _fields(template: str) -> list[str]:
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ValueError(f"cache_repo {template!r} is not a valid template: {exc}") from None


def check_template(value: str | None) -> str | None:
    """Refuse a template with unknown placeholders, or one that cannot name a repository."""
    if value is None:
        return None
    unknown = [name for name in _fields(value) if name not in PLACEHOLDERS]
    if unknown:
        raise ValueError(f"cache_repo {value!r}: unknown placeholder(s) {', '.join('{' + n + '}' for n in unknown)}; "
                         f"use {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
    rendered = value.format(**_SAMPLE)
    try:
        ref = ImageRef.parse(rendered)
    except ValueError:
        raise ValueError(f"cache_repo {value!r} does not name a repository (REGISTRY/PATH, e.g. "
                         "{registry}/cache/{repo})") from None
    if rendered.endswith(f":{ref.tag}"):
        raise ValueError(f"cache_repo {value!r}: give a repository without a tag")
    return value


#: the `cache_repo` field every executor with a registry cache has
CacheRepo = Annotated[str | None, AfterValidator(check_template)]


def cache_repo_field():
    return Field(default=None, description="registry repository for a build cache shared by all workers; a template may "
                 "use {registry} and {repo} (of the job's first tag) and {cache_key}, e.g. {registry}/cache/{repo}")


def path_component(text: str) -> str:
    """`text` as one repository path component: lower-case, runs of separators made one."""
    text = re.sub(r"[^a-z0-9._-]+", "-", text.lower())
    text = re.sub(r"[._-]{2,}", lambda m: "__" if set(m[0]) == {"_"} else "-", text)
    return text.strip("._-") or "x"


def cache_repository(template: str | None, job: BuildRequest) -> str | None:
    """The registry cache repository for `job` (REGISTRY/PATH), or None: no cache configured,
    or the template needs a cache_key the job does not have."""
    if not template:
        return None
    fields = _fields(template)
    if not fields:
        return f"{template}/{path_component(job.cache_key)}" if job.cache_key else template
    if "cache_key" in fields and not job.cache_key:
        return None
    first = job.image_refs()[0]
    rendered = template.format(registry=first.registry, repo=first.repository,
                               cache_key=path_component(job.cache_key or ""))
    try:
        ImageRef.parse(rendered)
    except ValueError:
        return None
    return rendered


def inline_cache_ref(repository: str, platform: Platform | None = None) -> ImageRef:
    """Where an engine's BuildKit keeps its inline cache in the cache repository: one image per
    platform of a multi-platform job (`buildcache-linux-arm64`), as each build reads its own."""
    return ImageRef.parse(f"{repository}:{INLINE_CACHE_TAG}" + (f"-{platform.slug}" if platform else ""))

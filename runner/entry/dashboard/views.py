"""What a job looks like on the dashboard: status badges, repository, commit and branch,
times; and the one Jinja2 environment (autoescaped) that renders pages and fragments.

Pure: records in, strings out. Everything a template shows passes through Jinja2's escaping,
so a tag, label or error message holding markup renders as text."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from runner.core.attestations import AttestedImage
from runner.core.jobs import GitContext, ImageRef, JobRecord, PushedImage, Status, now, seconds_between

TEMPLATES = Path(__file__).with_name("templates")


@dataclass(frozen=True)
class Badge:
    """A status as colour (css class), a glyph and a word: it reads without colour too."""

    status: str
    icon: str
    label: str


BADGES = {
    Status.queued: Badge("queued", "◷", "queued"),
    Status.running: Badge("running", "▶", "running"),
    Status.succeeded: Badge("succeeded", "✓", "succeeded"),
    Status.failed: Badge("failed", "✗", "failed"),
    Status.cancelled: Badge("cancelled", "⊘", "cancelled"),
    Status.timed_out: Badge("timed_out", "⧗", "timed out"),
}


def badge(status: Status) -> Badge:
    return BADGES[status]


def git_repository(url: str) -> str:
    """`owner/repo` (the path without `.git`) of a clone URL, without scheme, host or credentials."""
    path = re.sub(r"^[a-z][a-z0-9+.-]*://[^/]*", "", url)  # scheme://[user@]host[:port]
    if path == url and ":" in url.split("/", 1)[0]:  # scp-like git@host:owner/repo
        path = url.split(":", 1)[1]
    path = path.strip("/").removesuffix(".git")
    parts = [p for p in path.split("/") if p]
    return "/".join(parts[-2:]) if parts else url


def image_repository(tag: str) -> str:
    try:
        return ImageRef.parse(tag).repository
    except ValueError:  # stored records hold validated tags; never fail a page on one
        return tag


def repository(record: JobRecord) -> str:
    """What the job builds from: the git repository, or (uploaded contexts) its first tag's image repository."""
    context = record.request.context
    if isinstance(context, GitContext):
        return git_repository(context.url)
    return image_repository(record.request.tags[0])


def matches_repository(record: JobRecord, text: str) -> bool:
    """The repository filter: a case-insensitive substring of one of the job's tags or of its git URL."""
    needle = text.lower()
    context = record.request.context
    return any(needle in value.lower() for value in (*record.request.tags, context.url if isinstance(context, GitContext) else ""))


def commit(record: JobRecord) -> str | None:
    context = record.request.context
    sha = context.commit if isinstance(context, GitContext) else None
    return sha or record.request.labels.get("org.opencontainers.image.revision") or None


def branch(record: JobRecord) -> str | None:
    """`main`, `tag v1.2`, or the ref as given; None for uploaded contexts without a ref label."""
    context = record.request.context
    ref = context.ref if isinstance(context, GitContext) else None
    ref = ref or record.request.labels.get("org.opencontainers.image.ref.name")
    if not ref:
        return None
    if ref.startswith("refs/heads/"):
        return ref.removeprefix("refs/heads/")
    if ref.startswith("refs/tags/"):
        return "tag " + ref.removeprefix("refs/tags/")
    return ref


def attested(record: JobRecord, image: PushedImage, digest: str | None = None) -> AttestedImage | None:
    """What the job attached to one of its pushed tags' digest (its signature, its provenance),
    or to `digest` in that tag's repository (a platform's manifest under a multi-platform index)."""
    if record.attestation is None:
        return None
    try:
        ref = ImageRef.parse(image.ref)
    except ValueError:
        return None
    repository = f"{ref.registry}/{ref.repository}"
    return next((a for a in record.attestation.images if a.repository == repository and a.digest == (digest or image.digest)), None)


def since(start: datetime | None) -> float | None:
    return seconds_between(start, now())


def duration(value: float | None) -> str:
    """1.2s, 3m 04s, 2h 05m; an em dash when unknown."""
    if value is None:
        return "—"
    if value < 60:
        return f"{value:.1f}s"
    whole = int(value)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


def clock(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


def iso(value: datetime | None) -> str:
    return value.isoformat() if value else ""


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True, default_for_string=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.globals.update(badge=badge, repository=repository, commit=commit, branch=branch, seconds=seconds_between,
                       duration=duration, since=since, clock=clock, iso=iso, Status=Status, attested=attested)
    return env


def render(template: str, **values) -> str:
    return environment().get_template(template).render(**values)

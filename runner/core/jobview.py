"""A job record as the CLI reads it: the stored JSON (or the API's), wrapped for the few fields
the commands print. Standard library only (and runner.core.frozen, not dataclasses), so `runner
status`, `list`, `logs`, `cancel` and `submit --wait` never load the pydantic models (runner.core.jobs.JobRecord is what writes
this JSON; a test keeps the two readings equal)."""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from datetime import datetime

from runner.core.frozen import Frozen
from runner.core.status import Status

TYPE_CHECKING = False  # not typing's: the light path leaves typing out (see runner.entry.cli)
if TYPE_CHECKING:
    from typing import Any, Protocol


class PlatformView(Frozen):
    """One platform's manifest in a multi-platform job's index (runner.core.jobs.PlatformImage)."""

    platform: str
    digest: str


class ImageView(Frozen):
    """A pushed tag (runner.core.jobs.PushedImage)."""

    ref: str
    digest: str
    platforms: list[PlatformView]

    @property
    def repository(self) -> str:
        """REGISTRY/NAME: the tag without its :TAG (as an attestation names it), read as
        runner.core.request_rules.parse_image_ref reads the ref, without loading its rules."""
        name, colon, tag = self.ref.rpartition(":")
        return name if colon and "/" not in tag else self.ref


class AttestedView(Frozen):
    """One digest the job pushed and what it got (runner.core.attestations.AttestedImage)."""

    repository: str
    digest: str
    signature: str | None


class AttestationView(Frozen):
    """The provenance and signatures of the job's images (runner.core.attestations.Attestation)."""

    signed: bool
    key_id: str | None
    unsigned_reason: str | None
    images: list[AttestedView]


class JobView(Frozen):
    data: dict[str, Any]  # the record as JSON (JobRecord.model_dump(mode="json"))

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def status(self) -> Status:
        return Status(self.data.get("status", "queued"))

    @property
    def finished(self) -> bool:
        return self.status.finished

    @property
    def executor(self) -> str:
        return self.data.get("executor", "")

    @property
    def queue(self) -> str:
        return self.data.get("queue", "")

    @property
    def attempts(self) -> int:
        return self.data.get("attempts", 0)

    @property
    def reused_from(self) -> str | None:
        """The job whose image was put under this job's tags instead of a build, or None."""
        return self.data.get("reused_from")

    @property
    def submitted_by(self) -> str | None:
        return self.data.get("submitted_by")

    @property
    def images(self) -> list[ImageView]:
        """Each pushed tag and what it points to (for a multi-platform job, an index)."""
        return [ImageView(image["ref"], image["digest"],
                          [PlatformView(p["platform"], p["digest"]) for p in image.get("platforms") or []])
                for image in self.data.get("images") or []]

    @property
    def attestation(self) -> AttestationView | None:
        """What was attached to the pushed images (provenance, signatures), or None."""
        found = self.data.get("attestation")
        if not found:
            return None
        return AttestationView(found["signed"], found.get("key_id"), found.get("unsigned_reason"),
                               [AttestedView(i["repository"], i["digest"], i.get("signature"))
                                for i in found.get("images") or []])

    @property
    def error(self) -> tuple[str, str] | None:
        """(kind, message), or None."""
        error = self.data.get("error")
        return (error["kind"], error["message"]) if error else None

    @property
    def tags(self) -> list[str]:
        return list((self.data.get("request") or {}).get("tags") or [])

    @property
    def created_at(self) -> datetime:
        return datetime.fromisoformat(self.data["created_at"])


if TYPE_CHECKING:  # a protocol for the checker; nothing inherits it at run time
    class JobReader(Protocol):
        """Reading jobs and their logs: the Redis store and the HTTP API client both do it, so the
        CLI's read commands take either."""

        def view(self, job_id: str) -> JobView | None: ...

        def views(self, status: Status | None = None, limit: int = 50) -> builtins.list[JobView]: ...

        def read_log(self, job_id: str, follow: bool = False) -> Iterator[str]: ...

        def log_of(self, job_id: str, follow: bool = False) -> Iterator[str] | None: ...

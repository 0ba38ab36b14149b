"""What a job attached to the images it pushed, as its record keeps it: for every digest, its
cosign signature (`sha256-<hex>.sig`) and its provenance attestation (`sha256-<hex>.att`) in
the image's own repository. Pure: the signing itself is runner.supply."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

#: the SLSA provenance predicate every attestation carries
SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"


def tag_for(digest: str, suffix: str) -> str:
    """The tag cosign keeps an attachment under: sha256:abc… -> sha256-abc….sig"""
    return digest.replace(":", "-", 1) + "." + suffix


class AttestedImage(BaseModel):
    """One digest the job pushed and what it got."""

    repository: str = Field(description="registry/path the digest was pushed to")
    digest: str
    platform: str | None = Field(default=None, description="the platform of one manifest of a multi-platform image")
    signature: str | None = Field(default=None, description="registry/path:sha256-<hex>.sig; None: not signed")
    attestation: str = Field(description="registry/path:sha256-<hex>.att, the provenance")
    statement_digest: str = Field(description="sha256 of the in-toto statement (the DSSE payload)")

    @property
    def ref(self) -> str:
        return f"{self.repository}@{self.digest}"


class Attestation(BaseModel):
    """The provenance and signatures of one job's images."""

    signed: bool
    key_id: str | None = Field(default=None, description="sha256 of the signing key's public half (DER)")
    unsigned_reason: str | None = Field(default=None, description="why the images are not signed")
    predicate_type: str = SLSA_PROVENANCE_V1
    builder_id: str
    builder_version: str
    build_started: datetime
    build_finished: datetime
    images: list[AttestedImage] = Field(default_factory=list)

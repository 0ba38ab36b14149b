"""A job's provenance: `GET /v1/jobs/{id}/provenance` gives, for every digest the job pushed,
the in-toto statement attached to it (made again from the record, which holds everything it
was made from, and checked against the statement digest the record kept) and where its
signature and attestation are in the registry."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from runner.core.attestations import AttestedImage
from runner.core.jobs import JobRecord
from runner.entry.deps import Api, Require
from runner.entry.errors import ApiError, JobId
from runner.entry.routes.jobs import get_job
from runner.supply.provenance import RunDetails, Subject, statement, statement_digest

router = APIRouter(tags=["jobs"])


class ProvenanceImage(AttestedImage):
    statement: dict
    #: the statement made again from the record has the digest recorded when it was attached
    #: (False: made by a runner whose statements differ from this one's; the registry's copy counts)
    statement_matches: bool


class Provenance(BaseModel):
    job: str
    signed: bool
    key_id: str | None
    unsigned_reason: str | None
    predicate_type: str
    images: list[ProvenanceImage]


def provenance_of(record: JobRecord) -> Provenance | None:
    """The provenance of the job of `record`, None when nothing was attached."""
    attestation, inputs = record.attestation, record.inputs
    if attestation is None or inputs is None:
        return None
    run = RunDetails.of(record)
    images = []
    for image in attestation.images:
        body = statement(Subject(image.repository, image.digest, image.platform), inputs, run)
        images.append(ProvenanceImage(**image.model_dump(), statement=json.loads(body),
                                      statement_matches=statement_digest(body) == image.statement_digest))
    return Provenance(job=record.id, signed=attestation.signed, key_id=attestation.key_id,
                      unsigned_reason=attestation.unsigned_reason, predicate_type=attestation.predicate_type, images=images)


@router.get("/v1/jobs/{job_id}/provenance", dependencies=[Depends(Require("read"))],
            responses={404: {"description": "no such job, or it attached no provenance (yet)"}})
def get_provenance(job_id: JobId, api: Api) -> Provenance:
    """The SLSA provenance of every digest the job pushed, and where its signature is."""
    found = provenance_of(get_job(job_id, api))
    if found is None:
        raise ApiError(404, "not_found", f"job {job_id!r} has no provenance (it pushed nothing, or has not yet)")
    return found

"""A build's provenance: an in-toto Statement (v1) whose predicate is SLSA provenance v1,
made with the in-toto-attestation library from the job's BuildInputs and how the job ran.

`buildDefinition.externalParameters` and `resolvedDependencies` are the BuildInputs and
nothing else (so never a secret: they hold none), `internalParameters` the executor and
builder, `runDetails` the builder (id, the runner's version), the job id as invocation id,
and when the build started and finished. The statement's bytes are canonical JSON (sorted
keys, no blanks): the same record always gives the same statement, and its sha256 is kept in
the record (runner.core.attestations)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime

from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.v1.statement import Statement

from runner.core.attestations import SLSA_PROVENANCE_V1
from runner.core.build_inputs import BaseImage, BuildInputs, SourceInputs
from runner.core.jobs import JobRecord

#: what kind of build this is: the meaning of externalParameters and internalParameters
#: (docs/signing.md describes them)
BUILD_TYPE = "urn:ci-build-runner:build-type:container-image:v1"
BUILDER_NAME = "ci-build-runner"


@dataclass(frozen=True)
class RunDetails:
    builder_id: str
    builder_version: str
    invocation_id: str
    worker: str
    started: datetime
    finished: datetime

    @classmethod
    def of(cls, record: JobRecord) -> RunDetails:
        """How the job of `record` ran, as its attestation recorded it."""
        attestation = record.attestation
        assert attestation is not None
        return cls(attestation.builder_id, attestation.builder_version, record.id, record.worker or "",
                   attestation.build_started, attestation.build_finished)


@dataclass(frozen=True)
class Subject:
    """A digest the job pushed: its repository (registry/path), digest, and platform."""

    repository: str
    digest: str
    platform: str | None = None


def _present(values: dict) -> dict:
    return {k: v for k, v in values.items() if v not in (None, "", [], {})}


def _source(source: SourceInputs) -> dict:
    return _present({"url": source.url, "host": source.host, "repository": source.repository, "ref": source.ref,
                     "commit": source.commit, "path": source.path})


def external_parameters(inputs: BuildInputs) -> dict:
    """What the job asked for (the BuildInputs less what was resolved)."""
    return _present({
        "source": _source(inputs.source) if inputs.source else None,
        "context": _present({"digest": inputs.context_digest, "path": inputs.source.path if inputs.source else None}),
        "dockerfile": inputs.dockerfile, "target": inputs.target, "platforms": list(inputs.platforms),
        "buildArgs": dict(inputs.build_args), "secretBuildArgs": list(inputs.secret_build_args),
        "secrets": list(inputs.secrets), "labels": dict(inputs.labels), "noCache": inputs.no_cache or None,
    })


def _digest_set(digest: str) -> dict[str, str]:
    algorithm, _, value = digest.partition(":")
    return {algorithm: value}


def _base(image: BaseImage) -> ResourceDescriptor:
    annotations: dict = _present({"ref": image.ref, "platforms": dict(image.platforms), "error": image.error})
    return ResourceDescriptor(name=image.name, uri=f"docker-image://{image.name}",
                              digest=_digest_set(image.digest) if image.digest else None, annotations=annotations or None)


def resolved_dependencies(inputs: BuildInputs) -> list[ResourceDescriptor]:
    """The commit (when known), the context tar, and every base image by digest."""
    found = []
    source = inputs.source
    if source is not None and source.commit:
        where = source.url or source.repository or ""
        uri = f"git+{where}" + (f"@{source.ref}" if source.ref else "")
        found.append(ResourceDescriptor(name="source", uri=uri, digest={"gitCommit": source.commit},
                                        annotations={"checkedOut": source.checked_out}))
    if inputs.context_digest:
        found.append(ResourceDescriptor(name="context", digest=_digest_set(inputs.context_digest), media_type="application/x-tar"))
    found += [_base(image) for image in inputs.base_images]
    return found


def predicate(inputs: BuildInputs, run: RunDetails) -> dict:
    provenance = provenance_pb2.Provenance()
    definition = provenance.build_definition
    definition.build_type = BUILD_TYPE
    definition.external_parameters.update(external_parameters(inputs))
    definition.internal_parameters.update({"executor": inputs.executor, "builder": inputs.builder, "worker": run.worker})
    definition.resolved_dependencies.extend([d.pb for d in resolved_dependencies(inputs)])
    details = provenance.run_details
    details.builder.id = run.builder_id
    details.builder.version[BUILDER_NAME] = run.builder_version
    details.metadata.invocation_id = run.invocation_id
    details.metadata.started_on.FromDatetime(run.started)
    details.metadata.finished_on.FromDatetime(run.finished)
    return json_format.MessageToDict(provenance)


def statement(subject: Subject, inputs: BuildInputs, run: RunDetails) -> bytes:
    """The in-toto statement for one pushed digest, as canonical JSON bytes."""
    made = Statement([ResourceDescriptor(name=subject.repository, digest=_digest_set(subject.digest)).pb],
                     SLSA_PROVENANCE_V1, predicate(inputs, run))
    made.validate()
    return json.dumps(json_format.MessageToDict(made.pb), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def statement_digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()

"""After a push: every manifest digest the job pushed gets its provenance (an in-toto SLSA
statement in a DSSE envelope, `.att`) and, with a key, its cosign signature (`.sig`), in the
repository it was pushed to. What was attached is returned for the job's record.

`pushed_digests` is the one place that says which digests a job pushed."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext

from runner.core.attestations import SLSA_PROVENANCE_V1, Attestation, AttestedImage
from runner.core.build_inputs import BuildInputs
from runner.core.errors import ExecutorError, InfrastructureError
from runner.core.jobs import ImageRef, PushedImage
from runner.core.log_sink import LogSink
from runner.core.registry_client import Registries
from runner.supply.cosign import (
    DSSE_ENVELOPE,
    MAX_ATTESTATIONS,
    PREDICATE_ANNOTATION,
    SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING,
    Layer,
    attach,
    envelope,
    simple_signing_payload,
)
from runner.supply.keys import KeyHolder, SigningKey, SigningKeyError
from runner.supply.provenance import RunDetails, Subject, statement, statement_digest
from runner.supply.verify import signature_verifies

SIGNED_AT_ONCE = 4
#: a lock across the fleet by name (a digest's repository@digest): jobs that pushed the same
#: digest take turns extending its `.sig` and `.att` tags
Lock = Callable[[str], AbstractContextManager]


def pushed_digests(images: list[PushedImage]) -> list[Subject]:
    """Every manifest digest the job pushed, once per repository: each tag's digest (an
    image, or a multi-platform job's index) and, under an index, each platform's manifest."""
    found: dict[tuple[str, str], Subject] = {}
    for image in images:
        ref = ImageRef.parse(image.ref)
        repository = f"{ref.registry}/{ref.repository}"
        found.setdefault((repository, image.digest), Subject(repository, image.digest))
        for child in image.platforms:
            found.setdefault((repository, child.digest), Subject(repository, child.digest, child.platform))
    return list(found.values())


class SigningFailed(InfrastructureError):
    """A signature or attestation could not be stored: the job fails rather than leave an
    unsigned image behind (signing.required)."""


class Attester:
    """Made once per worker: the registries, the signing key (None: provenance unsigned), and
    whether a failure fails the job."""

    def __init__(self, registries: Registries, keys: KeyHolder | None, required: bool, builder_id: str,
                 lock: Lock | None = None):
        self.registries, self.keys, self.required, self.builder_id = registries, keys, required, builder_id
        self.lock: Lock = lock or (lambda name: nullcontext())

    def attest(self, images: list[PushedImage], inputs: BuildInputs, run: RunDetails, log: LogSink) -> Attestation:
        """Attach provenance (and signatures) to every digest of `images`. Raises SigningFailed
        when signing is required and anything could not be done."""
        key, reason = self._key()
        subjects = pushed_digests(images)
        with ThreadPoolExecutor(max(1, min(len(subjects), SIGNED_AT_ONCE))) as pool:
            outcomes = list(pool.map(lambda subject: self._one(subject, inputs, run, key), subjects))
        attested, failures = [], []
        for subject, (image, failure) in zip(subjects, outcomes, strict=True):
            if failure:
                failures.append(f"{subject.repository}@{subject.digest}: {failure}")
                log.line(f"[runner] provenance: {subject.repository}@{subject.digest}: {failure}")
            if image is not None:
                attested.append(image)
                log.line(f"[runner] {'signed' if image.signature else 'provenance attached (unsigned)'}: "
                         f"{image.ref} ({image.signature or image.attestation})")
        if failures and self.required:
            raise SigningFailed(f"could not sign {len(failures)} of {len(subjects)} pushed digest(s) "
                                f"(signing.required): {failures[0]}")
        signed = key is not None and not failures and all(image.signature for image in attested)
        if key is not None and failures:
            reason = f"signing failed for {len(failures)} digest(s): {failures[0]}"
        return Attestation(signed=signed, key_id=key.key_id if key else None, unsigned_reason=None if signed else reason,
                           predicate_type=SLSA_PROVENANCE_V1, builder_id=run.builder_id, builder_version=run.builder_version,
                           build_started=run.started, build_finished=run.finished, images=attested)

    def _key(self) -> tuple[SigningKey | None, str | None]:
        if self.keys is None:
            return None, "no signing key is configured (signing.key_file)"
        try:
            return self.keys.current(), None
        except SigningKeyError as exc:
            if self.required:
                raise SigningFailed(f"the signing key cannot be used: {exc}") from None
            return None, f"the signing key cannot be used: {exc}"

    def _one(self, subject: Subject, inputs: BuildInputs, run: RunDetails,
             key: SigningKey | None) -> tuple[AttestedImage | None, str | None]:
        """Attach to one digest: (what was attached, or None; what failed, or None)."""
        with self.lock(f"{subject.repository}@{subject.digest}"):
            return self._attach(subject, inputs, run, key)

    def _attach(self, subject: Subject, inputs: BuildInputs, run: RunDetails,
                key: SigningKey | None) -> tuple[AttestedImage | None, str | None]:
        registry, _, path = subject.repository.partition("/")
        client = self.registries.client(registry)
        body = statement(subject, inputs, run)
        try:
            wrapped = Layer(envelope(body, key.signer if key else None), DSSE_ENVELOPE, {PREDICATE_ANNOTATION: SLSA_PROVENANCE_V1})
            att = attach(client, path, subject.digest, "att", wrapped, keep=MAX_ATTESTATIONS)
        except ExecutorError as exc:
            return None, f"the attestation could not be stored: {exc.message}"
        image = AttestedImage(repository=subject.repository, digest=subject.digest, platform=subject.platform,
                              attestation=att, statement_digest=statement_digest(body))
        if key is None:
            return image, None
        payload = simple_signing_payload(subject.repository, subject.digest)
        layer = Layer(payload, SIMPLE_SIGNING, {SIGNATURE_ANNOTATION: key.sign(payload)})

        def same_signature(other: Layer) -> bool:  # cosign's dupe detection: this payload, this key
            return other.data == payload and signature_verifies(other, subject.digest, key.public) is None

        try:
            sig = attach(client, path, subject.digest, "sig", layer, already_there=same_signature)
        except ExecutorError as exc:
            return image, f"the signature could not be stored: {exc.message}"
        return image.model_copy(update={"signature": sig}), None

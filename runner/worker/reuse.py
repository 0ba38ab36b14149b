"""Never build the same thing twice: a job whose inputs (its BuildInputs' key) equal those of a
job that pushed an image gets that image under its own tags, a manifest PUT per tag (blobs
mounted across repositories, runner.core.registry_client), instead of a build.

- A pushed build is remembered by its key in Redis (JobStore: `built`), as long as a finished
  job's record is kept, so `reused_from` always names a job one can still look up.
- Before a build, the key is looked up; the remembered digest must still be in the registry
  (a HEAD of the manifest): a deleted one is forgotten and the job builds.
- Jobs with one key take turns (JobStore: `building`): the second waits for the first to end,
  then reuses what it pushed. A holder whose worker died (its job's lease lapsed) is passed over.
- Never shared: an image of a build that reads secrets (build secrets, secret build args),
  unless its repository says it may be (webhooks.repositories.<repo>.reuse_with_secrets); one
  whose inputs are not all pinned (a base image without a digest). Never reused for a job that
  asks for a build: `reuse: false` (job, repository, config) or `no_cache`.

Signatures and provenance: the `.sig` and `.att` tags are per digest, in the digest's
repository. Where the building job's are still there for every digest the reuse put (same
repositories), made with the key signing now, they are the reusing job's too (its record says
so, naming the build's times): nothing is signed again. Otherwise (another repository, another
key, an attachment gone) the SupplyChain attaches them as after a push.

Executor-independent: the pipeline's SupplyChain asks here before it calls the executor."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ValidationError

from runner.config.sections import RepositoryHook
from runner.config.settings import Settings
from runner.core.attestations import Attestation
from runner.core.build_inputs import BuildInputs
from runner.core.cancel import CancelToken
from runner.core.errors import ExecutorError, InfrastructureError
from runner.core.jobs import BuildRequest, ImageRef, PushedImage, now
from runner.core.log_sink import LogSink
from runner.core.registry_client import Copies, Registries
from runner.store.jobstore import JobStore
from runner.supply.attester import pushed_digests

#: how often a job waiting for another with the same key looks again
WAIT_POLL = 0.1


class Built(BaseModel):
    """What `NS:built:KEY` holds: the job that pushed an image from those inputs."""

    job: str
    images: list[PushedImage]
    at: datetime


@dataclass(frozen=True)
class Plan:
    """A job's part in reuse: its key, and why it must build anyway (None: it may reuse)."""

    key: str
    must_build: str | None


def repository_hook(request: BuildRequest, settings: Settings) -> RepositoryHook | None:
    """The config of the repository the job names as its source (webhooks.repositories), if any."""
    return settings.webhooks.repositories.get(request.source.repository) if request.source else None


def not_shared(request: BuildRequest, inputs: BuildInputs, settings: Settings, publishes: bool) -> str | None:
    """Why the image of this job can neither be reused nor offered for reuse, or None."""
    if not request.push or not publishes:
        return "nothing is pushed"
    if inputs.context_files is None:
        return "the context's files are not known"
    if not inputs.resolved:
        return "a base image has no digest"
    hook = repository_hook(request, settings)
    if inputs.has_secrets and not (hook and hook.reuse_with_secrets):
        return "it reads secrets (webhooks.repositories.<repo>.reuse_with_secrets is not set)"
    return None


def build_asked(request: BuildRequest, settings: Settings) -> str | None:
    """Why this job asks for a build even if the image exists, or None."""
    hook = repository_hook(request, settings)
    if not settings.reuse:
        return "reuse is off in the config (reuse: false)"
    if hook is not None and request.source is not None and not hook.reuse:
        return f"reuse is off for {request.source.repository} (webhooks.repositories)"
    if not request.reuse:
        return "the job asks for a build (reuse: false)"
    if request.no_cache:
        return "the job asks for a build without cache (no_cache)"
    return None


def plan_for(request: BuildRequest, inputs: BuildInputs, settings: Settings, publishes: bool) -> Plan | None:
    """The job's reuse plan; None when its image is never shared."""
    key = inputs.key()
    if key is None or not_shared(request, inputs, settings, publishes):
        return None
    return Plan(key=key, must_build=build_asked(request, settings))


class Reuse:
    """Made once per worker (with its store and registry clients)."""

    def __init__(self, settings: Settings, registries: Registries, store: JobStore):
        self.settings, self.registries, self.store = settings, registries, store

    @contextmanager
    def turn(self, plan: Plan | None, job_id: str, cancel: CancelToken, log: LogSink) -> Iterator[None]:
        """Hold the key's turn while the job reuses or builds: another job with the key waits
        (a cancel or the deadline stops the wait). No plan, or one that builds whatever is
        there: no turn (its image is still remembered)."""
        if plan is None or plan.must_build:
            yield
            return
        ttl = self.settings.limits.max_timeout + self.settings.worker.lease_ttl
        told = False
        while (holder := self.store.start_building(plan.key, job_id, ttl)) not in (None, job_id):
            if not told:
                log.line(f"[runner] waiting for job {holder}, which builds from the same inputs")
                told = True
            if self.store.lease_holder(holder) is None:  # its worker is gone: its turn lapses now
                self.store.stop_building(plan.key, holder)
                continue
            cancel.raise_if_set()
            time.sleep(WAIT_POLL)
        try:
            yield
        finally:
            self.store.stop_building(plan.key, job_id)

    def lookup(self, plan: Plan) -> tuple[Built, str] | None:
        """What was built for the plan's key: (the entry, as stored), or None."""
        raw = self.store.remembered_build(plan.key)
        if raw is None:
            return None
        try:
            return Built.model_validate_json(raw), raw
        except ValidationError:
            self.store.forget_build(plan.key, raw)
            return None

    def take(self, plan: Plan, found: tuple[Built, str], request: BuildRequest, log: LogSink) -> list[PushedImage] | None:
        """Put the image `found` (lookup) under the job's tags: the images, or None when the
        job must build (logged why; a digest gone from its registry is forgotten)."""
        built, raw = found
        try:
            images = self._put(built, request.image_refs(), log)
        except ExecutorError as exc:  # a registry declining, or a login that may read the tag's repository only
            log.line(f"[runner] could not reuse the image of job {built.job} ({exc.message}); building")
            return None
        if images is None:
            self.store.forget_build(plan.key, raw)
        return images

    def _put(self, built: Built, targets: list[ImageRef], log: LogSink) -> list[PushedImage] | None:
        """Every target tag holding the built digest; None when it is gone from its registry."""
        sources: dict[str, tuple[ImageRef, str]] = {}
        for image in built.images:
            ref = ImageRef.parse(image.ref)
            sources.setdefault(ref.registry, (ref, image.digest))
        if missing := [t for t in targets if t.registry not in sources]:
            raise InfrastructureError(f"job {built.job} pushed nothing to {missing[0].registry}")
        for ref, digest in sources.values():  # one source per registry
            if self.registries.client(ref.registry).head_manifest(ref.repository, digest) is None:
                log.line(f"[runner] the image job {built.job} built ({ref.registry}/{ref.repository}@{digest}) is gone "
                         "from its registry; building")
                return None
        copies = {registry: Copies() for registry in sources}
        images = []
        for target in targets:
            origin, digest = sources[target.registry]
            put = self.registries.copy_tag(origin, digest, target, copies[target.registry])
            self.registries.confirm_digest(target, put)
            images.append(PushedImage(ref=str(target), digest=put))
        return images

    def attestation_of(self, job_id: str, images: list[PushedImage], key_id: str | None) -> Attestation | None:
        """What the building job attached, when it covers every digest of `images` (signed with
        `key_id`, None: unsigned) and is still in the registry; else None."""
        record = self.store.get(job_id)
        previous = record.attestation if record else None
        if previous is None or previous.key_id != key_id or (key_id is not None and not previous.signed):
            return None
        attached = {(a.repository, a.digest): a for a in previous.images}
        kept = [attached.get((subject.repository, subject.digest)) for subject in pushed_digests(images)]
        if not all(kept):
            return None
        for image in kept:
            assert image is not None
            for tag in filter(None, (image.signature, image.attestation)):
                ref = ImageRef.parse(tag)
                try:
                    if self.registries.client(ref.registry).head_manifest(ref.repository, ref.tag) is None:
                        return None
                except ExecutorError:
                    return None
        return previous.model_copy(update={"images": kept})

    def remember(self, plan: Plan, job_id: str, images: list[PushedImage]) -> None:
        self.store.remember_build(plan.key, Built(job=job_id, images=images, at=now()).model_dump_json())

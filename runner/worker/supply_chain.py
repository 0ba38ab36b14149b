"""A build with its supply chain, around the executor's run: before it, the job's BuildInputs
(base images resolved to digests now) go into its record; after the push, every pushed digest
gets its provenance and, with a key, its signature (runner.supply.attester), and the record
says what was attached. The pipeline's one call (`SupplyChain.build`) instead of
`executor.run`. Between the inputs and the run, an image pushed from the same inputs is
reused instead of a build (runner.worker.reuse)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from executors.base import Executor, ExecutorEnv
from runner.config.settings import Settings
from runner.context.build_context import BuildContext
from runner.core.attestations import Attestation
from runner.core.build_inputs import BuildInputs
from runner.core.cancel import CancelToken
from runner.core.executor_metrics import PhaseClock
from runner.core.jobs import BuildRequest, JobRecord, PushedImage, Status, now
from runner.core.log_sink import LogSink
from runner.core.version import runner_version
from runner.store.jobstore import JobStore
from runner.supply.attester import Attester
from runner.supply.inputs import compute_inputs
from runner.supply.keys import KeyHolder, SigningKeyError
from runner.supply.provenance import RunDetails
from runner.worker.reuse import Plan, Reuse, plan_for


def attester_for(settings: Settings, env: ExecutorEnv, store: JobStore) -> Attester:
    signing = settings.signing
    keys = KeyHolder(signing.key_file, signing.passphrase_file) if signing.key_file else None
    return Attester(env.registries, keys, signing.must_sign, signing.builder_id, lock=store.turn)


class SupplyChain:
    """Made once per worker (with its registries and signing key)."""

    def __init__(self, settings: Settings, env: ExecutorEnv, store: JobStore, worker_id: str):
        self.settings, self.env, self.store, self.worker_id = settings, env, store, worker_id
        self.attester = attester_for(settings, env, store)
        self.reuse = Reuse(settings, env.registries, store)

    def build(self, executor: Executor, request: BuildRequest, context: BuildContext, log_sink: LogSink,
              cancel: CancelToken) -> list[PushedImage]:
        """Inputs, then `executor.run`, then the attachments; raises what the run raises, and
        SigningFailed (infrastructure) when required signing could not be done."""
        phases = PhaseClock(self.env.metrics, executor.name)
        publishes = executor.publishes()
        try:
            with phases("provenance"):
                builder = request.builder or self.env.builder
                inputs = compute_inputs(request, context, executor.name, builder, self.env.registries if publishes else None,
                                        log_sink, executor.reads_frontend(builder))
            self._record(request.id, lambda r: r.model_copy(update={"inputs": inputs}))
            plan = plan_for(request, inputs, self.settings, publishes)
            with self.reuse.turn(plan, request.id, cancel, log_sink):
                started = now()
                reused = self._reused(plan, request, log_sink, phases)
                images = reused[1] if reused else executor.run(request, context, log_sink, cancel)
                cancel.raise_if_set()
                if request.push and images and publishes:
                    with phases("provenance"):
                        attestation = (reused and self._kept_attestation(reused[0], images, log_sink)) \
                            or self.attest(request, images, inputs, started, log_sink)
                    self._record(request.id, lambda r: r.model_copy(update={"attestation": attestation}))
                if plan is not None and not reused and images:
                    self.reuse.remember(plan, request.id, images)
            return images
        finally:
            phases.report()

    def _reused(self, plan: Plan | None, request: BuildRequest, log_sink: LogSink,
                phases: PhaseClock) -> tuple[str, list[PushedImage]] | None:
        """The job's tags put on the image built from the same inputs: (the job that built it,
        the images), or None: build."""
        if plan is None:
            return None
        if plan.must_build:
            log_sink.line(f"[runner] building, not reusing: {plan.must_build}")
            return None
        found = self.reuse.lookup(plan)
        if found is None:
            return None
        with phases("tags"):  # only when there is an image to put: a build's own tags are timed by its executor
            images = self.reuse.take(plan, found, request, log_sink)
        if images is None:
            return None
        job = found[0].job
        log_sink.line(f"[runner] reused the image built by job {job} for the same inputs ({plan.key}): "
                      + ", ".join(f"{i.ref}@{i.digest}" for i in images) + "; nothing was built")
        self._record(request.id, lambda r: r.model_copy(update={"reused_from": job}))
        return job, images

    def _kept_attestation(self, job: str, images: list[PushedImage], log_sink: LogSink) -> Attestation | None:
        """The signatures and provenance job `job` attached to the image reused, when they
        cover it and were made with the key signing now (runner.worker.reuse); None: attach."""
        try:
            key_id = self.attester.keys.current().key_id if self.attester.keys else None
        except SigningKeyError:
            return None  # attest() says why, and fails the job if it must
        kept = self.reuse.attestation_of(job, images, key_id)
        if kept is not None:
            log_sink.line(f"[runner] {'signed' if kept.signed else 'provenance attached (unsigned)'} by job {job}: "
                          + ", ".join(f"{a.ref} ({a.signature or a.attestation})" for a in kept.images))
        return kept

    def attest(self, request: BuildRequest, images: list[PushedImage], inputs: BuildInputs, started: datetime,
               log_sink: LogSink) -> Attestation:
        run = RunDetails(builder_id=self.settings.signing.builder_id, builder_version=runner_version(),
                         invocation_id=request.id, worker=self.worker_id, started=started, finished=now())
        return self.attester.attest(images, inputs, run, log_sink)

    def _record(self, job_id: str, change: Callable[[JobRecord], JobRecord]) -> None:
        """Add to the record while this attempt owns it (running here); never its status."""

        def ours(record: JobRecord) -> JobRecord | None:
            if record.status is not Status.running or record.worker != self.worker_id:
                return None
            return change(record)

        self.store.update(job_id, ours)

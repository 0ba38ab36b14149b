"""A build with its supply chain, around the executor's run: before it, the job's BuildInputs
(base images resolved to digests now) go into its record; after the push, every pushed digest
gets its provenance and, with a key, its signature (runner.supply.attester), and the record
says what was attached. The pipeline's one call (`SupplyChain.build`) instead of
`executor.run`."""

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
from runner.supply.keys import KeyHolder
from runner.supply.provenance import RunDetails


def attester_for(settings: Settings, env: ExecutorEnv, store: JobStore) -> Attester:
    signing = settings.signing
    keys = KeyHolder(signing.key_file, signing.passphrase_file) if signing.key_file else None
    return Attester(env.registries, keys, signing.must_sign, signing.builder_id, lock=store.turn)


class SupplyChain:
    """Made once per worker (with its registries and signing key)."""

    def __init__(self, settings: Settings, env: ExecutorEnv, store: JobStore, worker_id: str):
        self.settings, self.env, self.store, self.worker_id = settings, env, store, worker_id
        self.attester = attester_for(settings, env, store)

    def build(self, executor: Executor, request: BuildRequest, context: BuildContext, log_sink: LogSink,
              cancel: CancelToken) -> list[PushedImage]:
        """Inputs, then `executor.run`, then the attachments; raises what the run raises, and
        SigningFailed (infrastructure) when required signing could not be done."""
        phases = PhaseClock(self.env.metrics, executor.name)
        publishes = executor.publishes()
        try:
            with phases("provenance"):
                inputs = compute_inputs(request, context, executor.name, self.env.builder,
                                        self.env.registries if publishes else None, log_sink)
            self._record(request.id, lambda r: r.model_copy(update={"inputs": inputs}))
            started = now()
            images = executor.run(request, context, log_sink, cancel)
            cancel.raise_if_set()
            if request.push and images and publishes:
                with phases("provenance"):
                    attestation = self.attest(request, images, inputs, started, log_sink)
                self._record(request.id, lambda r: r.model_copy(update={"attestation": attestation}))
            return images
        finally:
            phases.report()

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

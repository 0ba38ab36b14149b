"""The executor seam: the one protocol every executor implements.

An executor is made ONCE per worker process by the registry (executors/plugins.py), with its
own typed config and the environment every executor shares (ExecutorEnv); the pipeline, the
reaper and the doctor all use that one object. Per-job calls carry the job (or its id):

- `check()`: is it usable on this host, and if not, why;
- `run(job, context, log, cancel)`: build, push, return each tag with the digest the registry
  holds, or raise a typed error (runner.core.errors);
- `cleanup(job_id)`: idempotent removal of everything it made for that job;
- `sweep(is_live)`: remove what jobs that are no longer live left behind (the reaper's call);
- `start()` / `shutdown()`: process lifetime (warm pools);
- capability questions (`engine_host()`, `publishes()`, `platforms()`) are asked of the
  executor, never answered by its name.

Everything an executor creates carries `labels(job_id)`, so a sweep can find it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from executors.builtin import ENABLED_BY_DEFAULT
from runner.context.build_context import BuildContext
from runner.core.cancel import CancelToken
from runner.core.errors import InvalidJob
from runner.core.executor_metrics import NO_METRICS, ExecutorMetrics
from runner.core.host_platforms import HostPlatforms
from runner.core.jobs import BuildRequest, PushedImage
from runner.core.labels import LABEL_EXECUTOR, LABEL_JOB, LABEL_NAMESPACE, LABEL_WORKER
from runner.core.log_sink import LogSink
from runner.core.platforms import parse_platform

if TYPE_CHECKING:
    from runner.core.registry_client import Registries

Builder = Literal["auto", "buildkit", "classic"]


class ExecutorConfig(BaseModel):
    """An executor's own settings (`executors.<name>:` in the runner config). Subclasses add
    their fields, each with a description: `runner config example` prints them."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=ENABLED_BY_DEFAULT, description="take jobs for this executor")


@dataclass(frozen=True)
class ExecutorEnv:
    """What every executor may know of the runner around it; made once per worker."""

    worker_id: str
    namespace: str
    workspace: Path
    registries: Registries
    build_secrets: dict[str, SecretStr] = field(default_factory=dict)
    builder: Builder = "auto"
    #: where the executor reports what is worth a graph (the worker's Prometheus metrics)
    metrics: ExecutorMetrics = NO_METRICS

    def job_dir(self, job_id: str) -> Path:
        """The job's scratch directory (the pipeline makes and removes it)."""
        return self.workspace / job_id


@dataclass
class CheckResult:
    ok: bool
    summary: str
    details: dict[str, str] = field(default_factory=dict)


#: is this job still live (queued or running somewhere)? The reaper's question, given to sweep()
#: may a job's leftovers stay? (the reaper's answer: never raises, True when in doubt)
IsLive = Callable[[str], bool]


class Executor(ABC):
    """Base class for executors. Subclasses set `name` and `Config` and implement check, run
    and cleanup; the other hooks are optional."""

    name: ClassVar[str]
    #: one line for `runner doctor` and docs: what enabling this executor means for the host
    risk: ClassVar[str] = ""
    Config: ClassVar[type[ExecutorConfig]] = ExecutorConfig

    def __init__(self, config: ExecutorConfig, env: ExecutorEnv):
        self.config = config
        self.env = env

    def labels(self, job_id: str) -> dict[str, str]:
        return {LABEL_JOB: job_id, LABEL_WORKER: self.env.worker_id, LABEL_EXECUTOR: self.name,
                LABEL_NAMESPACE: self.env.namespace}

    @abstractmethod
    def check(self) -> CheckResult:
        """Is this executor usable on this host? If not, say why."""

    @abstractmethod
    def run(self, job: BuildRequest, context: BuildContext, log: LogSink, cancel: CancelToken) -> list[PushedImage]:
        """Build and push; return every tag with its registry digest, or raise ExecutorError."""

    @abstractmethod
    def cleanup(self, job_id: str) -> None:
        """Remove everything this executor made for `job_id`. Idempotent; never raises."""

    def sweep(self, is_live: IsLive) -> list[str]:
        """Remove what jobs that are not live left behind (after a crash); return their ids.
        Never raises. Executors whose leftovers all sit in the job's workspace need nothing."""
        return []

    def publishes(self) -> bool:
        """Do this executor's builds pull base images from registries and push what they build to
        them? Then a job's base images are looked up before its build and what it pushed gets
        provenance and signatures (runner/worker/supply_chain.py). An executor that pushes
        nothing (the tests' fake) says no."""
        return True

    def reads_frontend(self, builder: str) -> bool:
        """Does a build here with `builder` (auto, buildkit or classic) hand the Dockerfile to the
        frontend image its `# syntax=` line or BUILDKIT_SYNTAX build arg names? BuildKit does,
        so that image is one of the build's inputs (runner.supply.inputs); buildah and the
        classic builder read the Dockerfile themselves."""
        return False

    def platforms(self) -> HostPlatforms | None:
        """Which platforms this executor can build here (natively, or emulated through the
        host's binfmt handlers); None: it cannot tell, and no job is refused for its platforms."""
        return None

    def refuse_unbuildable(self, job: BuildRequest, support: HostPlatforms | None = None) -> None:
        """Before anything is built: InvalidJob naming the first of the job's platforms this
        executor cannot build here (`support`, else platforms()): its build would only fail
        later, in an exec format error."""
        if not job.platforms or (support := support or self.platforms()) is None:
            return
        for platform in job.platforms:
            if why := support.why_not(parse_platform(platform)):
                raise InvalidJob(f"refused before the build: {why}")

    def engine_host(self) -> str | None:
        """The Docker Engine this executor drives on the host, if any (the doctor checks it)."""
        return None

    def start(self) -> None:
        """Worker start-up (e.g. fill a warm pool)."""

    def shutdown(self) -> None:
        """Release what start() made; called when the worker stops."""

    def job_secrets(self, job: BuildRequest) -> dict[str, bytes]:
        """The values of the build secrets the job names; an unknown id is the job's mistake."""
        known = self.env.build_secrets
        missing = [s for s in job.secrets if s not in known]
        if missing:
            raise InvalidJob(f"the job asks for build secret(s) {', '.join(missing)}, which the runner config does not "
                             f"define (build_secrets has: {', '.join(sorted(known)) or 'none'}); add them to "
                             "build_secrets or drop them from the job")
        return {s: known[s].get_secret_value().encode() for s in job.secrets}

"""The fake executor — FOR TESTS ONLY (like Woodpecker's dummy backend): it builds and
pushes nothing. Its behaviour is steered by the job's build args, so the pipeline, the worker
and the entry points can be driven through every path in seconds, without Docker:

  FAKE_LINES=N       log N lines ("fake line 1" ...)
  FAKE_SLEEP=S       take S seconds (cancel and timeout stop it)
  FAKE_EXIT=N        fail as a build whose RUN step exited N
  FAKE_ERROR=KIND    fail with that error kind: invalid, auth, infrastructure
  FAKE_CRASH=1       raise an unexpected exception (a bug in an executor)
  FAKE_KILL=1        SIGKILL the worker process mid-job (a worker lost)
  FAKE_LEAK=NAME     a careless executor: write build arg NAME's value to the worker's own log,
                     then crash with it in the exception (tests check that both are masked)

It reports each tag with a digest made from the job id and the tag (a multi-platform job: an
"index" digest, and one per platform made from the job id and the platform). Nothing is pushed,
so those get no provenance or signature unless `executors.fake.publishes` says they may.
`cleanup` records the job ids it was called for (`cleaned`), so tests can see the pipeline call it.

It is a plugin of the tests, not part of the runner: a `runner.executors` entry point in the
dist-info beside this module, found only where tests/plugins/fake is on the path (the tests'
conftest and the benchmarks put it there: tests/plugins/__init__.py). A plain installation
never knows it, so no worker is one config line away from an executor that kills itself on a
build arg.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading
from typing import ClassVar

from pydantic import Field

from executors.base import CheckResult, Executor, ExecutorConfig
from runner.context.build_context import BuildContext
from runner.core.cancel import CancelToken
from runner.core.errors import BuildFailed, ExecutorError, InfrastructureError, InvalidJob, RegistryAuthFailed
from runner.core.jobs import BuildRequest, PlatformImage, PushedImage
from runner.core.log_sink import LogSink

ERRORS: dict[str, type[ExecutorError]] = {"invalid": InvalidJob, "auth": RegistryAuthFailed,
                                          "infrastructure": InfrastructureError, "build": BuildFailed}


def fake_digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class FakeConfig(ExecutorConfig):
    """executors.fake (a plugin of the runner's own tests): builds nothing; steered by build args."""

    enabled: bool = Field(default=False, description="for the runner's own tests only: never enable it in production")
    publishes: bool = Field(default=False, description="say its digests are in the registry, so they get provenance and "
                            "signatures (tests of signing that need no build); its base images are looked up too")


class FakeExecutor(Executor):
    name: ClassVar[str] = "fake"
    risk: ClassVar[str] = "builds and pushes nothing: for the runner's own tests only"
    Config = FakeConfig

    def __init__(self, config: ExecutorConfig, env):
        super().__init__(config, env)
        self.cleaned: list[str] = []
        self._lock = threading.Lock()

    def check(self) -> CheckResult:
        return CheckResult(True, "the fake executor: builds nothing (tests only)")

    def publishes(self) -> bool:
        """It pushes nothing: its jobs get no provenance, unless its config says otherwise."""
        return bool(getattr(self.config, "publishes", False))

    def run(self, job: BuildRequest, context: BuildContext, log: LogSink, cancel: CancelToken) -> list[PushedImage]:
        args = job.build_args
        for n in range(int(args.get("FAKE_LINES", "0") or 0)):
            log.line(f"fake line {n + 1}")
        if seconds := float(args.get("FAKE_SLEEP", "0") or 0):
            log.line(f"[fake] working for {seconds:g}s")
            cancel.wait(seconds)
        cancel.raise_if_set()
        if args.get("FAKE_KILL"):
            os.kill(os.getpid(), signal.SIGKILL)
        if leak := args.get("FAKE_LEAK"):
            logging.getLogger(__name__).warning("build arg %s is %s", leak, args.get(leak))
            raise RuntimeError(f"the fake executor crashed holding {leak}={args.get(leak)}")
        if args.get("FAKE_CRASH"):
            raise RuntimeError("the fake executor crashed on purpose")
        if kind := args.get("FAKE_ERROR"):
            raise ERRORS.get(kind, InfrastructureError)(f"the fake executor failed with a {kind} error on purpose")
        if code := int(args.get("FAKE_EXIT", "0") or 0):
            log.line(f"fake step exited {code}")
            raise BuildFailed(f"build failed at step 1/1 (RUN fake): exit code {code}")
        platforms = [PlatformImage(platform=p, digest=fake_digest(f"{job.id} {p}")) for p in job.platforms] \
            if job.multi_platform else []
        return [PushedImage(ref=str(ref), digest=fake_digest(f"{job.id} {ref}"), platforms=platforms) for ref in job.image_refs()]

    def cleanup(self, job_id: str) -> None:
        with self._lock:
            self.cleaned.append(job_id)

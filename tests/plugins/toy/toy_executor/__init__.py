"""A third-party executor as a plugin package ships one: one module, one entry point
(`runner.executors = toy = toy_executor:ToyExecutor` in its dist-info), its own typed Config.
It builds nothing: it says its greeting and reports each tag with a made-up digest."""

from __future__ import annotations

import hashlib

from pydantic import Field

from executors.base import CheckResult, Executor, ExecutorConfig


class ToyConfig(ExecutorConfig):
    """executors.toy: a plugin executor for the runner's tests."""

    greeting: str = Field(default="hello", description="what the toy says before each job")
    repeat: int = Field(default=1, ge=1, le=10, description="how many times it says it")


class ToyExecutor(Executor):
    name = "toy"
    risk = "builds nothing (a test plugin)"
    Config = ToyConfig

    def check(self) -> CheckResult:
        return CheckResult(True, f"the toy plugin, greeting {self.config.greeting!r}")

    def run(self, job, context, log, cancel):
        from runner.core.jobs import PushedImage

        for _ in range(self.config.repeat):
            log.line(f"[toy] {self.config.greeting} from {self.env.worker_id}")
        return [PushedImage(ref=str(ref), digest="sha256:" + hashlib.sha256(str(ref).encode()).hexdigest())
                for ref in job.image_refs()]

    def cleanup(self, job_id: str) -> None:
        pass

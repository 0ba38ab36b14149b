"""socket executor: builds on the host's Docker Engine through its socket (seed Method 1).

Fast and cached, but a job that reaches the host engine is root-equivalent on the host:
it can start a privileged container that mounts `/`. Disabled unless the config enables it.
"""

from __future__ import annotations

from typing import ClassVar

import docker.errors
import requests

from executors.base import CheckResult, Executor, ExecutorEnv, IsLive
from executors.engine.builders import JOB_TAG_REPO, BuildKitSupport
from executors.engine.client import EngineClient
from executors.engine.config import SocketConfig
from executors.engine.engine import Engine, choose_builder, engine_platforms, reads_frontend, remove_job_leftovers
from executors.engine.push import PushLocks
from runner.context.build_context import BuildContext
from runner.core.cancel import CancelToken
from runner.core.host_platforms import HostPlatforms
from runner.core.jobs import BuildRequest, PushedImage
from runner.core.log_sink import LogSink

RISK = ("jobs reach the host's Docker Engine: root-equivalent on this host "
        "(a build can run a privileged container mounting /). Enable only for trusted code.")


class SocketExecutor(Executor):
    name: ClassVar[str] = "socket"
    risk: ClassVar[str] = RISK
    Config = SocketConfig
    config: SocketConfig

    def __init__(self, config: SocketConfig, env: ExecutorEnv):
        super().__init__(config, env)
        self.buildkit = BuildKitSupport()
        #: the engine's API version, asked once: a client made per job then costs no round trip
        self._api_version: str | None = None
        #: this executor's jobs share one engine: two pushing one tag take turns (engine.PushLocks)
        self.push_locks = PushLocks()

    def client(self, timeout: int | None) -> EngineClient:
        client = EngineClient.connect(self.config.docker_host, timeout=timeout, version=self._api_version)
        self._api_version = client.api_version
        return client

    def engine_host(self) -> str:
        return self.config.docker_host

    def reads_frontend(self, builder: str) -> bool:
        return reads_frontend(builder)

    def platforms(self) -> HostPlatforms:
        return engine_platforms(self.config.docker_host, lambda: self.client(timeout=10).api)

    def check(self) -> CheckResult:
        try:
            client = EngineClient.connect(self.config.docker_host, timeout=5)
            version, info = client.api.version(), client.api.info()
            client.close()
        except Exception as exc:  # noqa: BLE001 - doctor reports any failure as text
            return CheckResult(False, f"Docker Engine at {self.config.docker_host} unreachable: {exc}")
        return CheckResult(True, f"Docker Engine {version.get('Version')} at {self.config.docker_host} — {RISK}",
                           {"storage_driver": info.get("Driver", "?"),
                            "runtimes": ",".join(sorted(info.get("Runtimes", {})))})

    def run(self, job: BuildRequest, context: BuildContext, log: LogSink, cancel: CancelToken) -> list[PushedImage]:
        client = self.client(timeout=None)
        try:
            self.refuse_unbuildable(job)
            builder = choose_builder(client, job.builder or self.env.builder, self.buildkit, self.env.registries,
                                     self.job_secrets(job))
            engine = Engine(client, self.env.registries, self.name, self.env.metrics, self.push_locks)
            return engine.build_and_push(job, builder, context, log, cancel, self.config.keep_images, self.config.cache_repo)
        finally:
            # The job's own tag goes before its result is told, not in the clean-up after it: a
            # user's `docker pull` of the pushed image right after `submit --wait` would tag the
            # same image id while the clean-up untagged it, and dockerd deletes an image whose
            # last tag is removed while another is being added ("No such image").
            remove_job_leftovers(client, job.id)
            client.close()

    def cleanup(self, job_id: str) -> None:
        self._remove_leftovers(job_id, other_tags=False)  # the job untagged its pushes; other tags are not its own

    def _remove_leftovers(self, job_id: str, other_tags: bool) -> None:
        try:
            client = self.client(timeout=30)
        except Exception:  # noqa: BLE001 - cleanup never raises
            return
        try:
            remove_job_leftovers(client, job_id, other_tags)
        except (docker.errors.DockerException, requests.RequestException):
            pass
        finally:
            client.close()

    def sweep(self, is_live: IsLive) -> list[str]:
        """Images a dead job left under its local name (`runner-job/<id>:build`)."""
        try:
            client = EngineClient.connect(self.config.docker_host, timeout=10)
            images = client.api.images(name=f"{JOB_TAG_REPO}/*")
            client.close()
        except Exception:  # noqa: BLE001 - no engine, nothing to find
            return []
        tags = [tag for image in images for tag in image.get("RepoTags") or []]
        jobs = {tag.split("/", 1)[1].rsplit(":", 1)[0] for tag in tags if tag.startswith(JOB_TAG_REPO + "/")}
        dead = sorted(job for job in jobs if not is_live(job))
        for job_id in dead:  # a crash may have left a push's tag (unless keep_images: the job's own tags then)
            self._remove_leftovers(job_id, other_tags=not self.config.keep_images)
        return dead

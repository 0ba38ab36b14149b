"""socket executor: builds on the host's Docker Engine through its socket (seed Method 1).

Fast and cached, but a job that reaches the host engine is root-equivalent on the host:
it can start a privileged container that mounts `/`. Disabled unless the config enables it.
"""

from __future__ import annotations

import docker.errors
import requests

from executors.base import BuildContext, CancelToken, CheckResult, Executor, LogSink
from executors.engine import JOB_TAG_REPO, Engine, connect
from runner.jobs import BuildRequest, PushedImage

RISK = ("jobs reach the host's Docker Engine: root-equivalent on this host "
        "(a build can run a privileged container mounting /). Enable only for trusted code.")


class SocketExecutor(Executor):
    name = "socket"
    risk = RISK

    @property
    def config(self):
        return self.settings.executors.socket

    def check(self) -> CheckResult:
        try:
            api = connect(self.config.docker_host, timeout=5)
            version = api.version()
            info = api.info()
        except Exception as exc:  # noqa: BLE001 - doctor reports any failure as text
            return CheckResult(False, f"Docker Engine at {self.config.docker_host} unreachable: {exc}")
        return CheckResult(True, f"Docker Engine {version.get('Version')} at {self.config.docker_host} — {RISK}",
                           {"storage_driver": info.get("Driver", "?"),
                            "runtimes": ",".join(sorted(info.get("Runtimes", {})))})

    def run(self, job: BuildRequest, context: BuildContext, log: LogSink, cancel: CancelToken) -> list[PushedImage]:
        api = connect(self.config.docker_host, timeout=None)
        try:
            return Engine(api, self.settings).build_and_push(job, context, log, cancel, self.config.keep_images)
        finally:
            api.close()

    def leftover_job_ids(self) -> list[str]:
        try:
            api = connect(self.config.docker_host, timeout=10)
            images = api.images(name=f"{JOB_TAG_REPO}/*")
            api.close()
        except Exception:  # noqa: BLE001 - no engine, nothing to find
            return []
        tags = [tag for image in images for tag in image.get("RepoTags") or []]
        return [tag.split("/", 1)[1].rsplit(":", 1)[0] for tag in tags if tag.startswith(JOB_TAG_REPO + "/")]

    def cleanup(self, job_id: str) -> None:
        try:
            api = connect(self.config.docker_host, timeout=30)
        except Exception:  # noqa: BLE001 - cleanup never raises
            return
        try:
            Engine(api, self.settings).remove_job_leftovers(job_id, keep_tags=self.config.keep_images)
        except (docker.errors.DockerException, requests.RequestException):
            pass
        finally:
            api.close()

"""img executor: daemonless, rootless-capable builds with img (BuildKit in a binary),
driven through `sh` like buildah.

img is not packaged for Debian and its upstream is unmaintained, so on most hosts this
executor is unavailable: `check()` says so, and a job that reaches it fails at once with
that message. Where img exists: `img build -t REF…` then `img push REF` for the first tag on
each registry (the others get its manifest without a push: executors/tags.py), with
credentials in a per-job DOCKER_CONFIG (config.json, 0600); img reports no digest, so the
digest returned is the one the registry holds after the push.

img limits (img 0.5): it cannot pull a base image from a plain-HTTP registry (only push has
--insecure-registry), it trusts only the system CA store, and its --build-arg takes values
on the command line only, so secret build args are refused (use build secrets instead). It
has no flag for an ignore file: the unpacked context holds exactly what `COPY .` sees, and
img's BuildKit re-applies a `.dockerignore` left in it (one the patterns keep) with its own,
older rules (docs/executors.md, "Fidelity").
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from executors.base import CheckResult, Executor
from executors.daemonless.common import (
    JobFiles,
    auth_failed,
    check_push_logins,
    common_build_flags,
    private_root,
    registry_auths,
    unpack,
    write_build_secrets,
)
from executors.daemonless.config import ImgConfig
from executors.image_index import pushed
from executors.push_retry import push_with_retries
from executors.registry_cache import cache_repository
from executors.tags import push_tags
from runner.context.build_context import BuildContext
from runner.core.cancel import CancelToken
from runner.core.docker_config import INDEX_SERVER
from runner.core.errors import BuildFailed, ExecutorError, InfrastructureError, InvalidJob, is_auth_error
from runner.core.executor_metrics import PhaseClock
from runner.core.host_platforms import HostPlatforms, host_platforms
from runner.core.jobs import BuildRequest, ImageRef, PlatformImage, PushedImage
from runner.core.log_sink import LogSink
from runner.core.process import Tool, ToolFailed, ToolOutput, tool_env

RISK = "builds run in img's embedded BuildKit as this worker's user; no daemon and no socket are exposed to jobs"
NOT_INSTALLED = ("img is not installed (no `{binary}` on PATH): it is not packaged for Debian and its upstream is "
                 "unmaintained. Route jobs to the buildah executor, or install img and set executors.img.binary")
_STEP = re.compile(r"^#\d+ \[(?:[\w.-]+ )?(\d+/\d+)\] (.*)$")
_ERROR = re.compile(r"(?:^error: |failed to solve|executor failed running|did not complete successfully)", re.IGNORECASE)
REFS_FILE = "refs.json"


def not_installed(config: ImgConfig) -> str | None:
    return None if shutil.which(config.binary) else NOT_INSTALLED.format(binary=config.binary)


# -- the argv we run -------------------------------------------------------------------------
def global_args(config: ImgConfig) -> list[str]:
    return ["-s", str(config.state_dir), "-b", config.backend]


def build_args(config: ImgConfig, job: BuildRequest, context_dir: Path, dockerfile: Path,
               secrets: Iterable[tuple[str, Path]]) -> list[str]:
    """`img build` arguments. The job's secret build args are refused before this (img takes
    build-arg values on its command line only)."""
    args = ["build", "--no-console", "-f", str(dockerfile)]
    for ref in job.tags:
        args += ["-t", ref]
    args += common_build_flags(job, secrets, cache_repository(config.cache_repo, job))
    args.append(str(context_dir))
    return args


def push_args(ref: ImageRef, insecure: bool) -> list[str]:
    return ["push", *(["--insecure-registry"] if insecure else []), str(ref)]


class ImgOutput(ToolOutput):
    """img build's output: remembers the current BuildKit step and the error lines."""

    def __init__(self, log: LogSink):
        super().__init__(log)
        self.step: tuple[str, str] | None = None
        self.error: str | None = None  # the last error line (only that one is reported)

    def handle(self, text: str) -> str | None:
        if match := _STEP.match(text):
            self.step = (match[1], match[2])
        if _ERROR.search(text):
            self.error = text
        return text

    def failure(self, code: int) -> ExecutorError:
        error = self.error or f"img build exited with code {code}"
        if is_auth_error(error):
            return auth_failed("while pulling a base image", error)
        where = f" at step {self.step[0]} ({self.step[1]})" if self.step else ""
        return BuildFailed(f"build failed{where}: {error}")


class ImgExecutor(Executor):
    name = "img"
    risk = RISK

    Config = ImgConfig
    config: ImgConfig

    def check(self) -> CheckResult:
        if problem := not_installed(self.config):
            return CheckResult(False, problem)
        try:
            version = Tool(self.config.binary).output(["version"], timeout=30).strip().splitlines()
        except (InfrastructureError, ToolFailed) as exc:
            return CheckResult(False, f"img is installed but does not run: {exc}")
        return CheckResult(True, f"{' '.join(version[:1]) or 'img'}, state {self.config.state_dir}, backend {self.config.backend}")

    def reads_frontend(self, builder: str) -> bool:
        return True  # img embeds BuildKit's Dockerfile frontend, which forwards to a `# syntax=` image: counted (the safe side)

    def platforms(self) -> HostPlatforms:
        """img's BuildKit runs RUN steps on this host: what its binfmt handlers let it run."""
        return host_platforms()

    def run(self, job: BuildRequest, context: BuildContext, log: LogSink, cancel: CancelToken) -> list[PushedImage]:
        if problem := not_installed(self.config):
            raise InfrastructureError(problem)
        self.refuse_unbuildable(job)
        if job.secret_build_args:
            raise InvalidJob("img takes build-arg values only on its command line, where other users of the host can read "
                             "them; pass secrets as build secrets (`secrets:`) or use the buildah executor")
        if job.push:
            check_push_logins(self.env.registries, job.image_refs(), log)
        files = JobFiles(private_root(self.env, self.name, job.id)).create()
        phases = PhaseClock(self.env.metrics, self.name)
        if not self.config.keep_images:  # cleanup removes these names from img's state: a name left
            files.write(REFS_FILE, json.dumps(job.tags))  # there would serve a later job's FROM
        try:
            for registry in self.env.registries:
                if registry.ca_file:
                    log.line(f"[runner] note: img trusts only the system CA store; {registry.host}'s ca_file must be "
                             "installed there (update-ca-certificates)")
            docker_config = files.directory("docker")
            files.write("docker/config.json", json.dumps(registry_auths(self.env.registries, log, hub_key=INDEX_SERVER)))
            secrets = write_build_secrets(self.job_secrets(job), files, log)
            unpacked = unpack(context, self.name, cancel)
            tool = Tool(self.config.binary, global_args(self.config),
                        tool_env({"DOCKER_CONFIG": str(docker_config), "TMPDIR": str(files.directory("tmp"))}))
            output = ImgOutput(log)
            with phases("build"):
                code = tool.stream(build_args(self.config, job, unpacked.context, unpacked.dockerfile, secrets), output, cancel)
            if code != 0:
                raise output.failure(code)
            refs = job.image_refs()
            if not job.push:
                kept = f"kept as {', '.join(job.tags)} in {self.config.state_dir}" if self.config.keep_images else \
                    "not kept (keep_images is off)"
                log.line(f"[runner] push disabled; {kept}")
                return [PushedImage(ref=str(ref), digest="") for ref in refs]
            platforms: dict[str, list[PlatformImage]] = {}  # registry -> each platform's manifest there

            def push(ref: ImageRef) -> str:
                pushed = push_with_retries(ref, lambda: self._push(tool, ref, log, cancel, job.multi_platform),
                                           self.env.registries.config(ref.registry), log, cancel,
                                           lambda: self.env.metrics.push_retried(self.name))
                platforms[ref.registry] = pushed.platforms
                return pushed.digest

            pushed = push_tags(refs, push, self.env.registries, log, cancel, phases)
            return [image.model_copy(update={"platforms": platforms.get(ref.registry, [])})
                    for ref, image in zip(refs, pushed, strict=True)]
        finally:
            files.remove("docker", "secrets", "tmp")
            phases.report()

    def _push(self, tool: Tool, ref: ImageRef, log: LogSink, cancel: CancelToken, index: bool = False) -> PushedImage:
        """`img push` of one tag (with --platform a,b img names a manifest list, and pushes it
        with its images); the digest is the one the registry holds after it."""
        output = ToolOutput(log)
        config = self.env.registries.config(ref.registry)
        code = tool.stream(push_args(ref, config.plain_http), output, cancel)
        if code != 0:
            error = next((t for t in reversed(output.lines) if t.strip()), f"img push exited with code {code}")
            if is_auth_error(error):
                raise auth_failed(f"pushing {ref}", error)
            raise InfrastructureError(f"push of {ref} failed: {error}")
        digest = self.env.registries.client(ref.registry).manifest_digest(ref)
        if digest is None:
            raise InfrastructureError(f"img reported pushing {ref} but the registry has no such tag")
        return pushed(self.env.registries, ref, digest, index, log)

    def cleanup(self, job_id: str) -> None:
        """Remove the job's tags from img's state (unless keep_images) and its private files."""
        files = JobFiles(private_root(self.env, self.name, job_id))
        try:
            refs = json.loads((files.root / REFS_FILE).read_text())
            if refs and not_installed(self.config) is None:
                Tool(self.config.binary, global_args(self.config)).output(["rm", *refs])
        except (OSError, ValueError, InfrastructureError, ToolFailed):
            pass
        finally:
            files.remove()

"""How an engine builds: the classic builder and BuildKit, behind one interface. Both build
under the job's own local name (`job_tag`) and return the image id."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Protocol

from executors.engine.client import EngineClient
from runner.context.build_context import BuildContext
from runner.core.cancel import CancelToken
from runner.core.errors import BuildFailed, InvalidJob
from runner.core.jobs import BuildRequest, ImageRef
from runner.core.log_sink import LogSink
from runner.core.platforms import Platform

JOB_TAG_REPO = "runner-job"
MIN_BUILDKIT_API = (1, 39)
_STEP = re.compile(r"^Step (\d+/\d+) : (.*)$")
_CACHED = " ---> Using cache"


def job_tag(job_id: str, platform: Platform | None = None) -> str:
    """A local-only tag naming the job (and the platform, for one of a multi-platform job's
    builds), so leftovers can be found without labelling the image."""
    return f"{job_repo(job_id)}:build" + (f"-{platform.slug}" if platform else "")


def job_repo(job_id: str) -> str:
    """The local repository every tag of the job's images is in."""
    return f"{JOB_TAG_REPO}/{job_id.lower()}"


@dataclass(frozen=True)
class BuildCache:
    """The registry build cache of a job (executors.registry_cache): BuildKit reads the image
    `ref` as a cache source, and with `export` writes its inline cache into the built image."""

    ref: ImageRef
    export: bool


class Builder(Protocol):
    name: str
    #: after a build: (Dockerfile steps, how many came from the cache), where the builder says
    steps: tuple[int, int] | None

    def build(self, job: BuildRequest, context: BuildContext, log: LogSink, cancel: CancelToken,
              cache: BuildCache | None = None, platform: Platform | None = None) -> str:
        """Build `job` from `context` (reading the registry cache where the builder can), for
        `platform` when given (one of a multi-platform job's builds) else the job's own; return
        the image id or raise a typed error."""

    def fork(self) -> Builder:
        """A builder of the same kind for another build at the same time (its own `steps`)."""


class ClassicBuilder:
    """The engine's classic builder (`POST /build` without version=2)."""

    name = "classic"

    def __init__(self, client: EngineClient):
        self.client = client
        self.steps: tuple[int, int] | None = None

    def fork(self) -> ClassicBuilder:
        return ClassicBuilder(self.client)

    def build(self, job: BuildRequest, context: BuildContext, log: LogSink, cancel: CancelToken,
              cache: BuildCache | None = None, platform: Platform | None = None) -> str:
        if platform is not None:
            raise InvalidJob("a multi-platform job needs the BuildKit builder; the classic builder builds one platform")
        if job.secrets:
            raise InvalidJob("build secrets need the BuildKit builder; the classic builder cannot mount them")
        step, image_id, steps, cached = "", None, 0, 0
        with context.open() as body:
            stream = self.client.api.build(
                fileobj=body, custom_context=True, dockerfile=job.dockerfile, tag=job_tag(job.id),
                buildargs=job.build_args or None, target=job.target, labels=job.labels or None,
                nocache=job.no_cache, rm=True, forcerm=True, pull=False, decode=True, platform=job.platform,
            )
            for event in stream:
                if event.get("stream", "").strip("\n"):
                    for text in event["stream"].splitlines():
                        log.line(text)
                        if match := _STEP.match(text):
                            step = f"step {match[1]} ({match[2]})"
                            steps += 1
                        elif text.startswith(_CACHED):
                            cached += 1
                if "aux" in event and "ID" in event["aux"]:
                    image_id = event["aux"]["ID"]
                if "error" in event:
                    message = event["error"].strip()
                    log.line(f"[runner] error: {message}")
                    raise BuildFailed(f"build failed{f' at {step}' if step else ''}: {message}")
        cancel.raise_if_set()
        if image_id is None:
            raise BuildFailed("the engine finished the build without reporting an image id")
        self.steps = (steps, cached)
        return image_id


class BuildKitSupport:
    """Which engines can run BuildKit (a Linux engine, API >= 1.39): asked once per engine and
    kept for the life of the executor that owns this object. `key` names the engine: its
    socket by default; dind passes its sidecar image, since every sidecar of one image runs
    the same engine (a socket per sidecar would ask every job)."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[bool, str]] = {}
        self._lock = threading.Lock()

    def check(self, client: EngineClient, key: str | None = None) -> tuple[bool, str]:
        """(supported, why)."""
        key = key or client.key
        with self._lock:
            if key in self._known:
                return self._known[key]
        version, os_type = client.version_and_os()
        try:
            api_version = tuple(int(p) for p in version.split(".")[:2])
        except ValueError:
            api_version = (0, 0)
        ok = api_version >= MIN_BUILDKIT_API and os_type.lower() == "linux"
        why = f"engine API {version} on {os_type or 'unknown OS'}" + (
            "" if ok else f"; BuildKit needs API >= {'.'.join(map(str, MIN_BUILDKIT_API))} on linux")
        with self._lock:
            self._known[key] = (ok, why)
        return ok, why

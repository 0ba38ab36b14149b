"""One job's session with one Docker Engine, shared by socket, dind and sysbox: build (with the
builder chosen for the job), tag, push every tag, confirm digests, remove what the job made.
The executors differ only in which engine they reach and how they bring it up."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import docker.errors
import requests

from executors.engine.builders import JOB_TAG_REPO, BuildCache, Builder, BuildKitSupport, ClassicBuilder, job_repo
from executors.engine.buildkit import BuildKitBuilder
from executors.engine.client import EngineClient, short
from executors.engine.push import Pusher, PushLocks
from executors.platform_builds import build_each
from executors.registry_cache import cache_repository, inline_cache_ref
from executors.tags import Push, copy_tag, push_tags
from runner.context.build_context import BuildContext
from runner.core.cancel import CancelToken
from runner.core.docker_config import INDEX_SERVER
from runner.core.errors import (
    BuildFailed,
    Cancelled,
    ExecutorError,
    InfrastructureError,
    InvalidJob,
)
from runner.core.executor_metrics import NO_METRICS, ExecutorMetrics, PhaseClock
from runner.core.host_platforms import HostPlatforms, host_platforms, native_platform
from runner.core.jobs import BuildRequest, ImageRef, PlatformImage, PushedImage
from runner.core.log_sink import LogSink
from runner.core.platforms import Platform, parse_platform
from runner.core.registry_auth import HUB, Credentials
from runner.core.registry_client import Copies

if TYPE_CHECKING:
    from runner.core.registry_client import Registries

def login(credentials: Credentials | None, server: str) -> dict[str, str] | None:
    """The engine's auth entry (X-Registry-Auth, X-Registry-Config) for a login, or None."""
    if credentials is None:
        return None
    if credentials.identity_token:
        return {"identitytoken": credentials.secret, "serveraddress": server}
    return {"username": credentials.username, "password": credentials.secret, "serveraddress": server}


def pull_logins(registries: Registries, log: LogSink) -> dict[str, dict[str, str]]:
    """The logins a build may use for pulling FROM images: every registry's
    (CredentialResolver.everything, warning in `log` about those that cannot be had), under
    the keys the engine looks them up by (Docker Hub's is INDEX_SERVER)."""
    logins = {}
    for host, credentials in registries.credentials.everything(lambda message: log.line(f"[runner] warning: {message}")).items():
        log.add_secret(credentials.secret)
        server = INDEX_SERVER if host == HUB else host
        logins[server] = login(credentials, server)
    return {server: entry for server, entry in logins.items() if entry is not None}


def reads_frontend(wanted: str) -> bool:
    """Does an engine build with the builder `wanted` (auto, buildkit, classic) hand the
    Dockerfile to a `# syntax=` frontend image? BuildKit does; auto counts as BuildKit (the
    safe side: choose_builder takes BuildKit wherever the engine has it)."""
    return wanted != "classic"


def choose_builder(client: EngineClient, wanted: str, support: BuildKitSupport, registries: Registries,
                   secrets: dict[str, bytes], engine_key: str | None = None) -> Builder:
    """The builder for a job: `auto` takes BuildKit where the engine has it (`engine_key`: see BuildKitSupport)."""
    if wanted == "classic":
        return ClassicBuilder(client)
    try:
        ok, why = support.check(client, engine_key)
    except (requests.RequestException, docker.errors.APIError, OSError) as exc:
        raise InfrastructureError(f"lost the Docker Engine mid-job: {short(exc)}") from None
    if wanted == "auto":
        wanted = "buildkit" if ok else "classic"
    if wanted == "buildkit":
        if not ok:
            raise InvalidJob(f"the job asks for the BuildKit builder but this Docker Engine cannot run it ({why}); "
                             "use builder auto or classic")
        return BuildKitBuilder(client, registries, secrets)
    return ClassicBuilder(client)


#: BuildKit's exporter, when the image it wrote was deleted before it could name it
IMAGE_GONE = re.compile(r"failed to get digest sha256:[0-9a-f]{64}: .*/imagedb/content/sha256/[0-9a-f]{64}: no such file or directory")


def engine_platforms(docker_host: str, connect: Callable[[], docker.APIClient]) -> HostPlatforms:
    """What an engine can build: an engine on this host (a unix socket, or TCP on loopback)
    builds what this host runs (its binfmt handlers, read now); one elsewhere is known only by
    its own architecture, which it reports (`connect` is called only then)."""
    url = urlparse(docker_host)
    if url.scheme in ("unix", "") or url.hostname in ("localhost", "127.0.0.1", "::1"):
        return host_platforms()
    try:
        api = connect()
        try:
            machine = api.info().get("Architecture") or ""
        finally:
            api.close()
    except (docker.errors.DockerException, requests.RequestException, InfrastructureError) as exc:
        raise InfrastructureError(f"Docker Engine at {docker_host} is unreachable: {short(exc)}") from None
    return HostPlatforms(native_platform(machine), where=f"the Docker Engine at {docker_host}", sees_handlers=False)


@dataclass(frozen=True)
class Built:
    """One image the job built: for `platform` (None: the job's single image), with the
    registry build cache its build read (and, with export, wrote into it)."""

    image_id: str
    platform: Platform | None = None
    cache: BuildCache | None = None


class Engine:
    """One job's session with one Docker Engine."""

    def __init__(self, client: EngineClient, registries: Registries, executor: str = "", metrics: ExecutorMetrics = NO_METRICS,
                 locks: PushLocks | None = None):
        self.client = client
        self.registries = registries
        self.executor, self.metrics = executor, metrics
        self.pusher = Pusher(client, registries, self.auth_config, executor, metrics, locks)

    # -- the whole job -----------------------------------------------------------------------
    def build_and_push(self, job: BuildRequest, builder: Builder, context: BuildContext, log: LogSink,
                       cancel: CancelToken, keep_images: bool = False, cache_repo: str | None = None) -> list[PushedImage]:
        """Build under the job's own local name (one build per platform, at once, for a
        multi-platform job), push the first tag on each registry (the other tags get the same
        manifest without a push: executors.tags), and export the registry build cache. A tag
        is in the engine only while it is pushed (unless keep_images): on a shared engine a
        tag left behind would be taken by a later job's `FROM` instead of what the registry
        holds, and another job's push of the same tag would move it."""
        api = self.client.api
        unregister = cancel.on_cancel(api.close)
        phases = PhaseClock(self.metrics, self.executor)
        try:
            if job.push:
                self.push_logins(job.image_refs(), log)
            # the classic builder is sent every login; BuildKit asks through its session, registry by registry
            self.client.use_auth(pull_logins(self.registries, log) if builder.name == "classic" else {})
            with phases("build"):
                builds = self.build(job, builder, context, log, cancel, cache_repo)
            refs = job.image_refs()
            if keep_images:
                self.keep(builds, refs)
            if not job.push:
                return self.not_pushed(builds, refs, keep_images, log)
            children: dict[str, list[PlatformImage]] = {}  # registry -> each platform's manifest there

            def push(ref: ImageRef) -> str:
                if builds[0].platform is None:
                    return self.pusher.push_image(builds[0].image_id, ref, log, cancel, keep_images).digest
                images = [(b.platform, b.image_id) for b in builds if b.platform is not None]
                digest, children[ref.registry] = self.pusher.push_index(images, ref, log, cancel)
                return digest

            pushed = push_tags(refs, push, self.registries, log, cancel, phases)
            pushed = [image.model_copy(update={"platforms": children.get(ref.registry, [])})
                      for ref, image in zip(refs, pushed, strict=True)]
            with phases("push"):
                self.export_caches(builds, refs, pushed, log, cancel)
            return pushed
        except (requests.RequestException, docker.errors.APIError, OSError) as exc:
            if cancel.is_set():
                raise Cancelled(cancel.reason or "cancelled") from None
            raise InfrastructureError(f"lost the Docker Engine mid-job: {short(exc)}") from None
        finally:
            unregister()
            phases.report()

    def build(self, job: BuildRequest, builder: Builder, context: BuildContext, log: LogSink, cancel: CancelToken,
              cache_repo: str | None) -> list[Built]:
        """The job's image, or one per platform built at once (each with its own log prefix)."""
        if not job.multi_platform:
            cache = self.build_cache(job, builder, cache_repo, log)
            log.line(f"[runner] building with the {builder.name} builder")
            image_id = self.build_one(builder, job, context, log, cancel, cache)
            return [Built(image_id, None, cache)]
        if builder.name != "buildkit":
            raise InvalidJob(f"a multi-platform job ({', '.join(job.platforms)}) needs the BuildKit builder, which the "
                             f"{builder.name} builder is not; use builder auto or buildkit")
        platforms = [parse_platform(p) for p in job.platforms]
        log.line(f"[runner] building {len(platforms)} platforms at once with the {builder.name} builder: "
                 f"{', '.join(map(str, platforms))}")

        def one(platform: Platform, prefixed: LogSink, stop: CancelToken) -> Built:
            cache = self.build_cache(job, builder, cache_repo, prefixed, platform)
            image_id = self.build_one(builder.fork(), job, context, prefixed, stop, cache, platform)
            prefixed.line(f"[runner] built {image_id[:19]}")
            return Built(image_id, platform, cache)

        return build_each(platforms, one, log, cancel)

    def build_one(self, builder: Builder, job: BuildRequest, context: BuildContext, log: LogSink, cancel: CancelToken,
                  cache: BuildCache | None, platform: Platform | None = None) -> str:
        """One build; once more (from the cache, at once) when the engine lost the image it had
        just written: identical builds of two jobs share an image id, and the other job's
        clean-up removed its last tag before this build's exporter named it."""
        for attempt in (1, 2):
            try:
                image_id = builder.build(job, context, log, cancel, cache, platform)
                break
            except BuildFailed as exc:
                if attempt == 2 or not IMAGE_GONE.search(exc.message):
                    raise
                log.line("[runner] the engine lost the image this build had just written (another job's clean-up "
                         "removed the same image); building it again from the cache")
        if builder.steps is not None:
            self.metrics.build_steps(self.executor, *builder.steps)
        return image_id

    def keep(self, builds: list[Built], refs: list[ImageRef]) -> None:
        """keep_images: the job's tags in the engine after the job; one engine keeps one image a
        tag, so a multi-platform job's images are kept as TAG-linux-arm64, … instead."""
        for built in builds:
            for ref in refs:
                tag = ref.tag if built.platform is None else f"{ref.tag}-{built.platform.slug}"[:128]
                self.client.api.tag(built.image_id, f"{ref.registry}/{ref.repository}", tag, force=True)

    @staticmethod
    def not_pushed(builds: list[Built], refs: list[ImageRef], keep_images: bool, log: LogSink) -> list[PushedImage]:
        names = [str(ref) if b.platform is None else f"{ref}-{b.platform.slug}" for b in builds for ref in refs]
        kept = f"kept as {', '.join(names)}" if keep_images else "not kept (keep_images is off)"
        if builds[0].platform is None:
            log.line(f"[runner] built {builds[0].image_id[:19]}; push disabled, {kept}")
            return [PushedImage(ref=str(ref), digest=builds[0].image_id) for ref in refs]
        log.line(f"[runner] built {len(builds)} platforms; push disabled (no index without a registry), {kept}")
        platforms = [PlatformImage(platform=str(b.platform), digest=b.image_id) for b in builds]
        return [PushedImage(ref=str(ref), digest="", platforms=platforms) for ref in refs]

    # -- the registry build cache ---------------------------------------------------------------
    def build_cache(self, job: BuildRequest, builder: Builder, cache_repo: str | None, log: LogSink,
                    platform: Platform | None = None) -> BuildCache | None:
        """The job's registry cache (BuildKit's inline cache; one per platform of a
        multi-platform job), or None."""
        repository = cache_repository(cache_repo, job)
        if repository is None:
            if cache_repo:
                log.line("[runner] no registry build cache for this job: cache_repo needs a cache_key it does not have")
            return None
        if builder.name != "buildkit":
            log.line("[runner] note: the registry build cache needs the BuildKit builder; building without it")
            return None
        ref = inline_cache_ref(repository, platform)
        log.line(f"[runner] registry build cache: {ref}")
        return BuildCache(ref=ref, export=job.push)

    def export_caches(self, builds: list[Built], refs: list[ImageRef], pushed: list[PushedImage], log: LogSink,
                      cancel: CancelToken) -> None:
        """Each build's image under its cache ref (a platform's under its own)."""
        for built in builds:
            if built.cache is None or not built.cache.export:
                continue
            if built.platform is None:
                sources = list(zip(refs, pushed, strict=True))
            else:
                sources = [(ref, PushedImage(ref=image.ref, digest=child.digest)) for ref, image in zip(refs, pushed, strict=True)
                           for child in image.platforms if child.platform == str(built.platform)]

            def push(ref: ImageRef, image_id: str = built.image_id) -> str:
                return self.pusher.push_image(image_id, ref, log, cancel).digest

            self.export_cache(built.cache.ref, sources, push, log)

    def export_cache(self, ref: ImageRef, pushed: list[tuple[ImageRef, PushedImage]], push: Push, log: LogSink) -> None:
        """Put the image (its config holds the inline cache) under the cache ref: a manifest PUT
        where a tag of the job is on that registry, else a push. Never fails the job."""
        source = next(((r, image.digest) for r, image in pushed if r.registry == ref.registry), None)
        try:
            digest = None
            if source is not None:
                digest, said = copy_tag(source, ref, self.registries, Copies())
                log.line(said)
            if digest is None:
                push(ref)
        except ExecutorError as exc:
            log.line(f"[runner] warning: the build cache was not exported to {ref}: {exc.message}")

    # -- push --------------------------------------------------------------------------------
    def push_logins(self, refs: list[ImageRef], log: LogSink) -> None:
        """Fail the job before building when the login of a registry it pushes to cannot be had
        (an unreadable password_file, a failing credential helper): no retry can help."""
        for host in dict.fromkeys(ref.registry for ref in refs):
            self.auth_config(host, log)

    def auth_config(self, host: str, log: LogSink) -> dict | None:
        """The login for pushing to `host`, looked up now (a rotated secret needs no restart),
        masked in `log`. Raises CredentialsUnavailable (infrastructure) when it cannot be had."""
        credentials = self.registries.credentials.lookup(host)
        if credentials is not None:
            log.add_secret(credentials.secret)
        return login(credentials, host)


# -- cleanup -----------------------------------------------------------------------------
def remove_job_leftovers(client: EngineClient, job_id: str, other_tags: bool = False) -> None:
    """Drop the job's images: their job tags (one per platform of a multi-platform job), and
    with `other_tags` every other tag they still have, such as a ref a crash left mid-push
    (a dead job's sweep; a dind sidecar's own engine), other jobs' job tags excepted. A job
    that ended removed its push tags itself (Pusher.untag): its clean-up leaves other tags
    alone, for on a shared engine they are somebody else's, on the same image id: a user's
    `docker pull` of the image just pushed, another job's identical build. noprune keeps
    parent layers, which the classic builder uses as cache. A clean-up: needs no logins,
    never raises."""
    repo = job_repo(job_id)
    try:
        images = client.api.images(name=repo)
    except (docker.errors.APIError, requests.RequestException):
        return
    for image in images:
        own = [t for t in image.get("RepoTags") or [] if t.startswith(f"{repo}:")]  # the listing names only these
        others = [t for t in _all_tags(client, image["Id"]) if not t.startswith(f"{JOB_TAG_REPO}/")] if other_tags else []
        for tag in others + own:
            try:
                client.api.remove_image(tag, noprune=True)
            except (docker.errors.APIError, requests.RequestException):
                pass


def _all_tags(client: EngineClient, image_id: str) -> list[str]:
    """Every tag of the image (a listing filtered by reference names only the matching ones)."""
    try:
        return client.api.inspect_image(image_id).get("RepoTags") or []
    except (docker.errors.APIError, requests.RequestException):
        return []

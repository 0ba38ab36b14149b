"""One job's session with one Docker Engine, shared by socket, dind and sysbox: build (with the
builder chosen for the job), tag, push every tag, confirm digests, remove what the job made.
The executors differ only in which engine they reach and how they bring it up."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import docker.errors
import requests

from executors.engine.builders import BuildCache, Builder, BuildKitSupport, ClassicBuilder, job_tag
from executors.engine.buildkit import BuildKitBuilder
from executors.engine.client import EngineClient, short
from executors.push_retry import push_with_retries
from executors.registry_cache import cache_repository, inline_cache_ref
from executors.tags import Push, copy_tag, push_tags
from runner.context.build_context import BuildContext
from runner.core.cancel import CancelToken
from runner.core.docker_config import INDEX_SERVER
from runner.core.errors import (
    Cancelled,
    ExecutorError,
    InfrastructureError,
    InvalidJob,
    RegistryAuthFailed,
    is_auth_error,
)
from runner.core.executor_metrics import NO_METRICS, ExecutorMetrics, PhaseClock
from runner.core.jobs import BuildRequest, ImageRef, PushedImage
from runner.core.log_sink import LogSink
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


class Engine:
    """One job's session with one Docker Engine."""

    def __init__(self, client: EngineClient, registries: Registries, executor: str = "", metrics: ExecutorMetrics = NO_METRICS):
        self.client = client
        self.registries = registries
        self.executor, self.metrics = executor, metrics

    # -- the whole job -----------------------------------------------------------------------
    def build_and_push(self, job: BuildRequest, builder: Builder, context: BuildContext, log: LogSink,
                       cancel: CancelToken, keep_images: bool = False, cache_repo: str | None = None) -> list[PushedImage]:
        """Build under the job's own local name, push the first tag on each registry (the other
        tags get the same manifest without a push: executors.tags), and export the registry
        build cache. A pushed tag stays in the engine only until the job's clean-up (unless
        keep_images): on a shared engine a tag left behind would be taken by a later job's
        `FROM` instead of what the registry holds."""
        api = self.client.api
        unregister = cancel.on_cancel(api.close)
        phases = PhaseClock(self.metrics, self.executor)
        try:
            if job.push:
                self.push_logins(job.image_refs(), log)
            # the classic builder is sent every login; BuildKit asks through its session, registry by registry
            self.client.use_auth(pull_logins(self.registries, log) if builder.name == "classic" else {})
            cache = self.build_cache(job, builder, cache_repo, log)
            log.line(f"[runner] building with the {builder.name} builder")
            with phases("build"):
                image_id = builder.build(job, context, log, cancel, cache)
            if builder.steps is not None:
                self.metrics.build_steps(self.executor, *builder.steps)
            refs = job.image_refs()
            if keep_images:
                for ref in refs:
                    api.tag(image_id, f"{ref.registry}/{ref.repository}", ref.tag)
            if not job.push:
                kept = f"kept as {', '.join(map(str, refs))}" if keep_images else "not kept (keep_images is off)"
                log.line(f"[runner] built {image_id[:19]}; push disabled, {kept}")
                return [PushedImage(ref=str(ref), digest=image_id) for ref in refs]

            def push(ref: ImageRef) -> str:
                if not keep_images:
                    api.tag(image_id, f"{ref.registry}/{ref.repository}", ref.tag)
                return self.push(ref, log, cancel).digest

            pushed = push_tags(refs, push, self.registries, log, cancel, phases)
            if cache is not None and cache.export:
                with phases("push"):
                    self.export_cache(cache.ref, list(zip(refs, pushed, strict=True)), push, log)
            return pushed
        except (requests.RequestException, docker.errors.APIError, OSError) as exc:
            if cancel.is_set():
                raise Cancelled(cancel.reason or "cancelled") from None
            raise InfrastructureError(f"lost the Docker Engine mid-job: {short(exc)}") from None
        finally:
            unregister()
            phases.report()

    # -- the registry build cache ---------------------------------------------------------------
    def build_cache(self, job: BuildRequest, builder: Builder, cache_repo: str | None, log: LogSink) -> BuildCache | None:
        """The job's registry cache (BuildKit's inline cache), or None."""
        repository = cache_repository(cache_repo, job)
        if repository is None:
            if cache_repo:
                log.line("[runner] no registry build cache for this job: cache_repo needs a cache_key it does not have")
            return None
        if builder.name != "buildkit":
            log.line("[runner] note: the registry build cache needs the BuildKit builder; building without it")
            return None
        ref = inline_cache_ref(repository)
        log.line(f"[runner] registry build cache: {ref}")
        return BuildCache(ref=ref, export=job.push)

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

    def push(self, ref: ImageRef, log: LogSink, cancel: CancelToken) -> PushedImage:
        """Push one tag, riding out registry trouble (executors.push_retry); auth errors fail at once."""
        auth = self.auth_config(ref.registry, log)

        def attempt() -> PushedImage:
            try:
                digest = self._push_once(ref, auth, log)
            except (requests.RequestException, docker.errors.APIError) as exc:
                raise InfrastructureError(_message(exc)) from None
            self.registries.confirm_digest(ref, digest)
            log.line(f"[runner] pushed {ref} {digest}")
            return PushedImage(ref=str(ref), digest=digest)

        return push_with_retries(ref, attempt, self.registries.config(ref.registry), log, cancel,
                                 lambda: self.metrics.push_retried(self.executor))

    def _push_once(self, ref: ImageRef, auth: dict | None, log: LogSink) -> str:
        digest = None
        lines = Batched(log)
        try:
            for event in self.client.api.push(f"{ref.registry}/{ref.repository}", ref.tag,
                                              stream=True, decode=True, auth_config=auth):
                if "error" in event:
                    message = event["error"].strip()
                    if is_auth_error(message):
                        raise RegistryAuthFailed(f"registry {ref.registry} refused the push of {ref}: {message}")
                    raise InfrastructureError(message)
                if "aux" in event and "Digest" in event["aux"]:
                    digest = event["aux"]["Digest"]
                elif status := event.get("status"):
                    if event.get("id") is None or status in ("Pushed", "Layer already exists"):
                        lines.add(f"{event.get('id', '')}: {status}".lstrip(": "))
        finally:
            lines.flush()
        if digest is None:
            raise InfrastructureError(f"the engine did not report a digest for {ref}")
        return digest


# -- cleanup -----------------------------------------------------------------------------
def remove_job_leftovers(client: EngineClient, job_id: str, keep_tags: bool = False) -> None:
    """Drop the job's image: its job tag, and (unless keep_tags) every other tag it still
    has, such as a ref whose push failed. noprune keeps parent layers, which the classic
    builder uses as cache. A clean-up: needs no logins, never raises."""
    name = job_tag(job_id)
    try:
        tags = [] if keep_tags else [t for t in client.api.inspect_image(name).get("RepoTags") or [] if t != name]
        for tag in [*tags, name]:
            client.api.remove_image(tag, noprune=True)
    except (docker.errors.APIError, requests.RequestException):
        pass


class Batched:
    """Log lines gathered into one write (one store round trip) at most every `every` seconds."""

    def __init__(self, log: LogSink, every: float = 1.0):
        self.log, self.every = log, every
        self.lines: list[str] = []
        self.since = time.monotonic()

    def add(self, line: str) -> None:
        self.lines.append(line)
        if time.monotonic() - self.since >= self.every:
            self.flush()

    def flush(self) -> None:
        if self.lines:
            text, self.lines = "\n".join(self.lines), []
            self.log.write(text + "\n")
        self.since = time.monotonic()


def _message(exc: BaseException) -> str:
    if isinstance(exc, docker.errors.APIError):
        return short(exc.explanation or exc)
    return getattr(exc, "message", None) or short(exc)


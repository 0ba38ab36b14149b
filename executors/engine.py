"""Engine-driving code shared by socket, dind and sysbox: build through the Docker Engine
API, tag, push every tag, confirm digests, remove local images. The executors differ only
in which engine they reach and how they bring it up."""

from __future__ import annotations

import re
from collections.abc import Iterator

import docker
import docker.auth
import docker.errors
import requests

from executors.base import (
    BuildContext,
    BuildFailed,
    Cancelled,
    CancelToken,
    InfrastructureError,
    InvalidJob,
    LogSink,
    RegistryAuthFailed,
)
from runner.jobs import BuildRequest, ImageRef, PushedImage
from runner.registry import confirm_digest, registry_config
from runner.settings import Settings

JOB_TAG_REPO = "runner-job"
PUSH_ATTEMPTS = 4
_AUTH_WORDS = ("unauthorized", "authentication required", "no basic auth credentials", "denied", "403 forbidden")
_STEP = re.compile(r"^Step (\d+/\d+) : (.*)$")


def job_tag(job_id: str) -> str:
    """A local-only tag naming the job, so leftovers can be found without labelling the image."""
    return f"{JOB_TAG_REPO}/{job_id.lower()}:build"


def connect(base_url: str, timeout: int = 60, **kwargs) -> docker.APIClient:
    try:
        api = docker.APIClient(base_url=base_url, version="auto", timeout=timeout, **kwargs)
    except docker.errors.DockerException as exc:
        raise InfrastructureError(f"Docker Engine at {base_url} is unreachable: {_short(exc)}") from None
    return api


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 300 else text[:300] + "…"


class Engine:
    """One job's session with one Docker Engine."""

    def __init__(self, api: docker.APIClient, settings: Settings):
        self.api = api
        self.settings = settings
        # builds send these to the engine for pulling FROM images: the configured
        # registries, never whatever the worker's own ~/.docker/config.json holds
        api._auth_configs = build_auth(settings)

    # -- the whole job -----------------------------------------------------------------------
    def build_and_push(self, job: BuildRequest, context: BuildContext, log: LogSink,
                       cancel: CancelToken, keep_images: bool = False) -> list[PushedImage]:
        """Build under the job's own local name, then give each tag the image only for as
        long as its push takes (unless keep_images): on a shared engine a tag left behind
        would be taken by a later job's `FROM` instead of what the registry holds."""
        unregister = cancel.on_cancel(self.api.close)
        try:
            image_id = self.build(job, context, log, cancel)
            refs = job.image_refs()
            if not job.push:
                if keep_images:
                    for ref in refs:
                        self.api.tag(image_id, f"{ref.registry}/{ref.repository}", ref.tag)
                kept = f"kept as {', '.join(map(str, refs))}" if keep_images else "not kept (keep_images is off)"
                log.line(f"[runner] built {image_id[:19]}; push disabled, {kept}")
                return [PushedImage(ref=str(ref), digest=image_id) for ref in refs]
            pushed = []
            for ref in refs:
                self.api.tag(image_id, f"{ref.registry}/{ref.repository}", ref.tag)
                try:
                    pushed.append(self.push(ref, log, cancel))
                finally:
                    if not keep_images:
                        self.untag(str(ref), image_id)
            return pushed
        except (requests.RequestException, docker.errors.APIError, OSError) as exc:
            if cancel.is_set():
                raise Cancelled(cancel.reason or "cancelled") from None
            raise InfrastructureError(f"lost the Docker Engine mid-job: {_short(exc)}") from None
        finally:
            unregister()

    # -- build -------------------------------------------------------------------------------
    def build(self, job: BuildRequest, context: BuildContext, log: LogSink, cancel: CancelToken) -> str:
        builder = self.resolve_builder(job)
        log.line(f"[runner] building with the {builder} builder")
        if builder == "buildkit":
            from executors.buildkit import buildkit_build

            return buildkit_build(self, job, context, log, cancel)
        return self._classic_build(job, context, log, cancel)

    def resolve_builder(self, job: BuildRequest) -> str:
        wanted = job.builder or self.settings.builder
        if wanted == "auto":
            try:
                import executors.buildkit as buildkit
            except ImportError:
                return "classic"
            return "buildkit" if buildkit.engine_supports_buildkit(self.api) else "classic"
        return wanted

    def _classic_build(self, job: BuildRequest, context: BuildContext, log: LogSink, cancel: CancelToken) -> str:
        if job.secrets:
            raise InvalidJob("build secrets need the BuildKit builder; the classic builder cannot mount them")
        step, image_id, last_lines = "", None, []
        with context.open() as body:
            stream = self.api.build(
                fileobj=body, custom_context=True, dockerfile=job.dockerfile, tag=job_tag(job.id),
                buildargs=job.build_args or None, target=job.target, labels=job.labels or None,
                nocache=job.no_cache, rm=True, forcerm=True, pull=False, decode=True,
                platform=job.platform,
            )
            for event in stream:
                if event.get("stream", "").strip("\n"):
                    for text in event["stream"].splitlines():
                        log.line(text)
                        if match := _STEP.match(text):
                            step = f"step {match[1]} ({match[2]})"
                        last_lines = (last_lines + [text])[-5:]
                if "aux" in event and "ID" in event["aux"]:
                    image_id = event["aux"]["ID"]
                if "error" in event:
                    message = event["error"].strip()
                    log.line(f"[runner] error: {message}")
                    where = f" at {step}" if step else ""
                    raise BuildFailed(f"build failed{where}: {message}")
        cancel.raise_if_set()
        if image_id is None:
            raise BuildFailed("the engine finished the build without reporting an image id")
        return image_id

    # -- push --------------------------------------------------------------------------------
    def auth_config(self, ref: ImageRef) -> dict | None:
        config = registry_config(self.settings, ref.registry)
        secret = config.secret()
        if config.username and secret is not None:
            return {"username": config.username, "password": secret, "serveraddress": ref.registry}
        return None

    def push(self, ref: ImageRef, log: LogSink, cancel: CancelToken) -> PushedImage:
        """Push one tag, retrying connection/5xx trouble with backoff; auth errors fail at once."""
        for attempt in range(1, PUSH_ATTEMPTS + 1):
            cancel.raise_if_set()
            try:
                digest = self._push_once(ref, log)
                confirm_digest(self.settings, ref, digest)
                log.line(f"[runner] pushed {ref} {digest}")
                return PushedImage(ref=str(ref), digest=digest)
            except (InfrastructureError, requests.RequestException, docker.errors.APIError) as exc:
                if cancel.is_set() or attempt == PUSH_ATTEMPTS:
                    raise InfrastructureError(f"push of {ref} failed after {attempt} attempt(s): {_message(exc)}") from None
                delay = 0.5 * 2 ** (attempt - 1)
                log.line(f"[runner] push of {ref} failed ({_message(exc)}); retrying in {delay:.1f}s")
                cancel.wait(delay)
        raise AssertionError("unreachable")

    def _push_once(self, ref: ImageRef, log: LogSink) -> str:
        digest = None
        for event in self._events(self.api.push(f"{ref.registry}/{ref.repository}", ref.tag,
                                                 stream=True, decode=True, auth_config=self.auth_config(ref))):
            if "error" in event:
                message = event["error"].strip()
                if any(word in message.lower() for word in _AUTH_WORDS):
                    raise RegistryAuthFailed(f"registry {ref.registry} refused the push of {ref}: {message}")
                raise InfrastructureError(message)
            if "aux" in event and "Digest" in event["aux"]:
                digest = event["aux"]["Digest"]
            elif status := event.get("status"):
                if event.get("id") is None or status in ("Pushed", "Layer already exists"):
                    log.line(f"{event.get('id', '')}: {status}".lstrip(": "))
        if digest is None:
            raise InfrastructureError(f"the engine did not report a digest for {ref}")
        return digest

    @staticmethod
    def _events(stream) -> Iterator[dict]:
        yield from stream

    # -- cleanup -----------------------------------------------------------------------------
    def untag(self, name: str, image_id: str) -> None:
        """Remove tag `name` if it still names our image (another job may have moved it)."""
        try:
            if self.api.inspect_image(name)["Id"] == image_id:
                self.api.remove_image(name, noprune=True)
        except (docker.errors.APIError, requests.RequestException):
            pass

    def remove_job_leftovers(self, job_id: str, keep_tags: bool = False) -> None:
        """Drop the job's image: its job tag, and (unless keep_tags) every other tag it still
        has, such as a ref whose push failed. noprune keeps parent layers, which the classic
        builder uses as cache."""
        name = job_tag(job_id)
        try:
            tags = [] if keep_tags else [t for t in self.api.inspect_image(name).get("RepoTags") or [] if t != name]
            for tag in [*tags, name]:
                self.api.remove_image(tag, noprune=True)
        except (docker.errors.APIError, requests.RequestException):
            pass


def build_auth(settings: Settings) -> docker.auth.AuthConfig:
    """Credentials of the configured registries, in docker-py's form."""
    auth = docker.auth.AuthConfig({})
    for registry in settings.registries:
        try:
            secret = registry.secret()
        except ValueError:
            continue  # the push reports the unreadable password_file
        if registry.username and secret is not None:
            auth.add_auth(registry.host, {"username": registry.username, "password": secret, "serveraddress": registry.host})
    return auth


def _message(exc: BaseException) -> str:
    if isinstance(exc, docker.errors.APIError):
        return _short(exc.explanation or exc)
    return getattr(exc, "message", None) or _short(exc)


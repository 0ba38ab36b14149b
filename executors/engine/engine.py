"""One job's session with one Docker Engine, shared by socket, dind and sysbox: build (with the
builder chosen for the job), tag, push every tag, confirm digests, remove what the job made.
The executors differ only in which engine they reach and how they bring it up."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import docker.errors
import requests

from executors.engine.builders import Builder, BuildKitSupport, ClassicBuilder, job_tag
from executors.engine.buildkit import BuildKitBuilder
from executors.engine.client import EngineClient, short
from runner.core.build import BuildContext, LogSink
from runner.core.cancel import CancelToken
from runner.core.errors import Cancelled, InfrastructureError, InvalidJob, RegistryAuthFailed, is_auth_error
from runner.core.jobs import BuildRequest, ImageRef, PushedImage
from runner.core.metrics import NO_METRICS, ExecutorMetrics
from runner.core.registry import RegistryConfig

if TYPE_CHECKING:
    from runner.core.registries import Registries

PUSH_ATTEMPTS = 4


def login(config: RegistryConfig) -> dict[str, str] | None:
    """docker-py's auth entry for a registry, or None for an anonymous one. Raises ValueError
    (naming the registry, never the secret) when its password_file cannot be read."""
    secret = config.secret()
    if config.username and secret is not None:
        return {"username": config.username, "password": secret, "serveraddress": config.host}
    return None


def pull_logins(registries: Registries) -> dict[str, dict[str, str]]:
    """The logins a build may use for pulling FROM images; a registry whose password_file
    cannot be read is left out here (a push to it says why)."""
    logins = {}
    for config in registries:
        try:
            entry = login(config)
        except ValueError:
            continue
        if entry is not None:
            logins[config.host] = entry
    return logins


def choose_builder(client: EngineClient, wanted: str, support: BuildKitSupport, registries: Registries,
                   secrets: dict[str, bytes]) -> Builder:
    """The builder for a job: `auto` takes BuildKit where the engine has it."""
    if wanted == "classic":
        return ClassicBuilder(client)
    try:
        ok, why = support.check(client)
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
        client.use_auth(pull_logins(registries))

    # -- the whole job -----------------------------------------------------------------------
    def build_and_push(self, job: BuildRequest, builder: Builder, context: BuildContext, log: LogSink,
                       cancel: CancelToken, keep_images: bool = False) -> list[PushedImage]:
        """Build under the job's own local name, then give each tag the image only for as
        long as its push takes (unless keep_images): on a shared engine a tag left behind
        would be taken by a later job's `FROM` instead of what the registry holds."""
        api = self.client.api
        unregister = cancel.on_cancel(api.close)
        try:
            log.line(f"[runner] building with the {builder.name} builder")
            image_id = builder.build(job, context, log, cancel)
            if builder.steps is not None:
                self.metrics.build_steps(self.executor, *builder.steps)
            refs = job.image_refs()
            if not job.push:
                if keep_images:
                    for ref in refs:
                        api.tag(image_id, f"{ref.registry}/{ref.repository}", ref.tag)
                kept = f"kept as {', '.join(map(str, refs))}" if keep_images else "not kept (keep_images is off)"
                log.line(f"[runner] built {image_id[:19]}; push disabled, {kept}")
                return [PushedImage(ref=str(ref), digest=image_id) for ref in refs]
            pushed = []
            for ref in refs:
                api.tag(image_id, f"{ref.registry}/{ref.repository}", ref.tag)
                try:
                    pushed.append(self.push(ref, log, cancel))
                finally:
                    if not keep_images:
                        self.untag(str(ref), image_id)
            return pushed
        except (requests.RequestException, docker.errors.APIError, OSError) as exc:
            if cancel.is_set():
                raise Cancelled(cancel.reason or "cancelled") from None
            raise InfrastructureError(f"lost the Docker Engine mid-job: {short(exc)}") from None
        finally:
            unregister()

    # -- push --------------------------------------------------------------------------------
    def auth_config(self, ref: ImageRef) -> dict | None:
        """The login for pushing `ref` (read now: a rotated password needs no restart)."""
        try:
            return login(self.registries.config(ref.registry))
        except ValueError as exc:  # an unreadable password_file: no retry can help
            raise InfrastructureError(str(exc)) from None

    def push(self, ref: ImageRef, log: LogSink, cancel: CancelToken) -> PushedImage:
        """Push one tag, retrying connection/5xx trouble with backoff; auth errors fail at once."""
        auth = self.auth_config(ref)
        for attempt in range(1, PUSH_ATTEMPTS + 1):
            cancel.raise_if_set()
            try:
                digest = self._push_once(ref, auth, log)
                self.registries.confirm_digest(ref, digest)
                log.line(f"[runner] pushed {ref} {digest}")
                return PushedImage(ref=str(ref), digest=digest)
            except (InfrastructureError, requests.RequestException, docker.errors.APIError) as exc:
                if cancel.is_set() or attempt == PUSH_ATTEMPTS:
                    raise InfrastructureError(f"push of {ref} failed after {attempt} attempt(s): {_message(exc)}") from None
                delay = 0.5 * 2 ** (attempt - 1)
                log.line(f"[runner] push of {ref} failed ({_message(exc)}); retrying in {delay:.1f}s")
                self.metrics.push_retried(self.executor)
                cancel.wait(delay)
        raise AssertionError("unreachable")

    def _push_once(self, ref: ImageRef, auth: dict | None, log: LogSink) -> str:
        digest = None
        for event in self._events(self.client.api.push(f"{ref.registry}/{ref.repository}", ref.tag,
                                                       stream=True, decode=True, auth_config=auth)):
            if "error" in event:
                message = event["error"].strip()
                if is_auth_error(message):
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
            if self.client.api.inspect_image(name)["Id"] == image_id:
                self.client.api.remove_image(name, noprune=True)
        except (docker.errors.APIError, requests.RequestException):
            pass

    def remove_job_leftovers(self, job_id: str, keep_tags: bool = False) -> None:
        """Drop the job's image: its job tag, and (unless keep_tags) every other tag it still
        has, such as a ref whose push failed. noprune keeps parent layers, which the classic
        builder uses as cache."""
        name = job_tag(job_id)
        try:
            tags = [] if keep_tags else [t for t in self.client.api.inspect_image(name).get("RepoTags") or [] if t != name]
            for tag in [*tags, name]:
                self.client.api.remove_image(tag, noprune=True)
        except (docker.errors.APIError, requests.RequestException):
            pass


def _message(exc: BaseException) -> str:
    if isinstance(exc, docker.errors.APIError):
        return short(exc.explanation or exc)
    return getattr(exc, "message", None) or short(exc)


"""Getting an engine's images to the registry: the Engine API pushes a local tag to the same
name, nothing else (no push by digest). So a push tags the image under the ref it pushes, holds
a lock on (engine, tag) meanwhile (PushLocks: two jobs of the executor pushing one tag take
turns), checks that what reached the registry is its own image (another process on a shared
engine may move the tag), and removes the tag again. A multi-platform job's images go under the
tag in turn, then the runner's registry client puts their OCI index over it (push_index)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import docker.errors
import requests

from executors.engine.client import EngineClient, short
from executors.image_index import put_index
from executors.push_retry import push_with_retries
from runner.core.cancel import CancelToken
from runner.core.errors import ExecutorError, InfrastructureError, RegistryAuthFailed, is_auth_error
from runner.core.executor_metrics import NO_METRICS, ExecutorMetrics
from runner.core.jobs import ImageRef, PlatformImage, PushedImage
from runner.core.log_sink import LogSink
from runner.core.platforms import Platform

if TYPE_CHECKING:
    from runner.core.registry_client import Registries

#: the login for pushing to a registry host (docker-py's auth entry), or None for an anonymous
#: push; its secret masked in the job's log
Auth = Callable[[str, LogSink], "dict | None"]


class PushLocks:
    """One lock per (engine, tag) for all the jobs of an executor: a push tags the image locally
    under the tag it pushes (the Engine API pushes local names only), so two jobs pushing the
    same tag at once on one engine would push, or untag, each other's image. Held from the
    local tag to its removal; re-entrant, so a multi-platform push holds it across its images.
    Locks go away when no job holds or waits for them."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, list] = {}  # key -> [RLock, holders and waiters]

    @contextmanager
    def hold(self, key: str, cancel: CancelToken) -> Iterator[None]:
        with self._guard:
            entry = self._locks.setdefault(key, [threading.RLock(), 0])
            entry[1] += 1
        try:
            while not entry[0].acquire(timeout=0.2):
                cancel.raise_if_set()
            try:
                yield
            finally:
                entry[0].release()
        finally:
            with self._guard:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._locks[key]


class Pusher:
    """One job's pushes through one engine."""

    def __init__(self, client: EngineClient, registries: Registries, auth: Auth, executor: str = "",
                 metrics: ExecutorMetrics = NO_METRICS, locks: PushLocks | None = None):
        self.client, self.registries, self.auth = client, registries, auth
        self.executor, self.metrics = executor, metrics
        self.locks = locks or PushLocks()

    def push_image(self, image_id: str, ref: ImageRef, log: LogSink, cancel: CancelToken, keep: bool = False,
                   confirm: bool = True, what: str = "") -> PushedImage:
        """Push the image `image_id` under `ref`, riding out registry trouble
        (executors.push_retry); auth errors fail at once. The local tag `ref` exists only while
        this push holds its lock (unless `keep`), and what reached the registry is checked to be
        this image (an engine shared with other processes may have moved the tag meanwhile):
        if not, it is pushed again. `confirm`: the tag must still hold it afterwards (not so
        for a platform's image, which the index replaces under the tag at once)."""
        auth = self.auth(ref.registry, log)
        name = f"{ref.registry}/{ref.repository}"

        def attempt() -> PushedImage:
            with self.locks.hold(f"{self.client.key} {ref}", cancel):
                try:
                    self.client.api.tag(image_id, name, ref.tag, force=True)
                    digest = self._push_once(ref, auth, log)
                    self.check_pushed(ref, digest, image_id)
                    if confirm:
                        self.registries.confirm_digest(ref, digest)
                except (requests.RequestException, docker.errors.APIError) as exc:
                    raise InfrastructureError(_message(exc)) from None
                finally:
                    if not keep:
                        self.untag(ref, image_id)
            log.line(f"[runner] pushed {what}{ref} {digest}")
            return PushedImage(ref=str(ref), digest=digest)

        return push_with_retries(ref, attempt, self.registries.config(ref.registry), log, cancel,
                                 lambda: self.metrics.push_retried(self.executor))

    def push_index(self, images: list[tuple[Platform, str]], ref: ImageRef, log: LogSink,
                   cancel: CancelToken) -> tuple[str, list[PlatformImage]]:
        """A multi-platform job's images at `ref`: each platform's image pushed under the tag in
        turn (the engine cannot push by digest; a temporary tag instead would stay behind on
        registries that cannot delete a tag, distribution 2.x among them), then the OCI index
        of them put over the tag. The tag's lock is held throughout, so another job of this
        executor pushing the same tag waits. Should the sequence stop before the index is there
        (a cancel, a failed push), the tag is put back to what it held before."""
        with self.locks.hold(f"{self.client.key} {ref}", cancel):
            before = self.registries.client(ref.registry).manifest_digest(ref)
            try:
                children = [(platform, self.push_image(image_id, ref, log, cancel, confirm=False,
                                                       what=f"{platform} image under ").digest)
                             for platform, image_id in images]
                digest, platforms = push_with_retries(ref, lambda: put_index(self.registries, ref, children),
                                                      self.registries.config(ref.registry), log, cancel,
                                                      lambda: self.metrics.push_retried(self.executor))
            except BaseException:
                self.put_back(ref, before, log)
                raise
        log.line(f"[runner] pushed index {ref} {digest} ({', '.join(str(p) for p, _ in children)})")
        return digest, platforms

    def put_back(self, ref: ImageRef, before: str | None, log: LogSink) -> None:
        """After a multi-platform push stopped half-way: `ref` names again what it named before
        (its manifest is still in the repository), or, where it is new, the log says it names one
        platform's image now (a registry without tag deletion cannot remove it). Never raises."""
        client = self.registries.client(ref.registry)
        try:
            now = client.manifest_digest(ref)
            if now == before:
                return
            if before is None:
                log.line(f"[runner] warning: {ref} was new and now names one platform's image ({now}); the registry "
                         "cannot delete a tag: push the job again or remove the tag there")
                return
            client.put_manifest(ref.repository, ref.tag, client.manifest(ref.repository, before))
            log.line(f"[runner] {ref} names again what it did before this job ({before})")
        except ExecutorError as exc:
            log.line(f"[runner] warning: could not put {ref} back to {before}: {exc.message}")

    def check_pushed(self, ref: ImageRef, digest: str, image_id: str) -> None:
        """Raise (a retry) unless the manifest pushed as `digest` is of the image `image_id`
        (the engine's image id is its config's digest)."""
        manifest = self.registries.client(ref.registry).manifest(ref.repository, digest)
        try:
            config = json.loads(manifest.body).get("config", {}).get("digest")
        except (ValueError, AttributeError):
            config = None
        if config != image_id:
            raise InfrastructureError(f"the engine pushed another image under {ref} ({config or digest}, not {image_id[:19]}): "
                                      "the local tag was moved by another job while it was pushed")

    def untag(self, ref: ImageRef, image_id: str) -> None:
        """Remove the local tag `ref` if it still names `image_id` (another job may own it now)."""
        try:
            if self.client.api.inspect_image(str(ref)).get("Id") == image_id:
                self.client.api.remove_image(str(ref), noprune=True)
        except (docker.errors.APIError, requests.RequestException):
            pass

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


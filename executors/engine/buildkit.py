"""BuildKit builds through the Docker Engine HTTP API, for socket, dind and sysbox.

`POST /build?version=2` with the context tar streamed as the body. Progress comes back as
JSON lines whose `aux` holds a base64 protobuf StatusResponse (decoded and printed by
executors.engine.buildkit_progress); the image id arrives as `{"id": "moby.image.id"}`. A BuildKit
session (executors.engine.buildkit_session) serves registry credentials for FROM pulls and the
job's build secrets. Cancel and timeout call `POST /build/cancel?id=BUILDID`.
"""

from __future__ import annotations

import json
import socket
import uuid
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import docker.errors
import requests

from executors.engine.builders import BuildCache, job_tag
from executors.engine.buildkit_progress import DecodeError, ProgressPrinter, decode_trace
from executors.engine.buildkit_session import BuildSession
from executors.engine.client import EngineClient, TransportUnsupported
from runner.context.build_context import BuildContext
from runner.core.cancel import CancelToken
from runner.core.errors import BuildFailed, Cancelled, ExecutorError, InfrastructureError, InvalidJob
from runner.core.jobs import BuildRequest
from runner.core.log_sink import LogSink
from runner.core.platforms import Platform

if TYPE_CHECKING:
    from runner.core.registry_client import Registries

CHUNK = 256 * 1024
INLINE_CACHE_ARG = "BUILDKIT_INLINE_CACHE"
_PREFIXES = ("failed to solve with frontend dockerfile.v0: ", "failed to solve: ", "rpc error: code = Unknown desc = ")


# -- the request ------------------------------------------------------------------------------------
def build_params(job: BuildRequest, build_id: str, tag: str, cache: BuildCache | None = None,
                 platform: Platform | None = None) -> dict[str, str]:
    """The /build query. BuildKit's Dockerfile frontend sets TARGETPLATFORM, TARGETOS,
    TARGETARCH, TARGETVARIANT and BUILDPLATFORM itself from `platform`, as under buildx."""
    params = {"version": "2", "buildid": build_id, "dockerfile": job.dockerfile, "t": tag, "pull": "0", "rm": "1"}
    build_args = dict(job.build_args)
    if cache is not None:
        params["cachefrom"] = json.dumps([str(cache.ref)])
        if cache.export:  # the cache goes into the image's config; the image is then tagged in the cache repo
            build_args[INLINE_CACHE_ARG] = "1"
    if build_args:
        params["buildargs"] = json.dumps(build_args)
    if job.labels:
        params["labels"] = json.dumps(job.labels)
    if job.target:
        params["target"] = job.target
    if job.no_cache:
        params["nocache"] = "1"
    if platform is not None or job.platform:
        params["platform"] = str(platform) if platform is not None else str(job.platform)
    return params


def registry_credentials(registries: Registries, host: str, log: LogSink) -> tuple[str, str] | None:
    """The login for `host` as BuildKit's session answers it (Docker Hub asked for as
    registry-1.docker.io): (username, secret), or ("", token) for an identity token, as
    BuildKit's own auth provider does. Masked in `log`."""
    credentials = registries.credentials.lookup(host)
    if credentials is None:
        return None
    log.add_secret(credentials.secret)
    return ("", credentials.secret) if credentials.identity_token else (credentials.username, credentials.secret)


def _gzip_chunks(handle, chunk_size: int = CHUNK) -> Iterator[bytes]:
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)  # gzip container, fastest level
    while chunk := handle.read(chunk_size):
        if out := packer.compress(chunk):
            yield out
    yield packer.flush()


@contextmanager
def context_body(context: BuildContext):
    """The context tar as a streamed request body.

    The engine's Dockerfile frontend sniffs only the first 1024 bytes to decide "tar or a
    bare Dockerfile"; a tar that opens with a PAX or GNU long-name header (Python's PAX
    tars do, for every member) does not parse in that window and is taken for a Dockerfile.
    Such tars go gzip-compressed on the fly: gzip is recognised by its magic bytes.
    """
    with context.open() as handle:
        head = handle.read(512)
        handle.seek(0)
        if len(head) == 512 and head[156:157] in (b"x", b"g", b"L", b"K"):
            yield _gzip_chunks(handle)
        else:
            yield handle


def shutdown_stream(response: requests.Response | None) -> None:
    """Unblock a thread reading the build stream: shut the socket down, then close."""
    if response is None:
        return
    fp = getattr(getattr(getattr(response.raw, "_fp", None), "fp", None), "raw", None)
    sock = getattr(fp, "_sock", None)
    if isinstance(sock, socket.socket):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    response.close()


def iter_events(lines: Iterable[bytes]) -> Iterator[dict]:
    for raw in lines:
        if raw.strip():
            try:
                event = json.loads(raw)
            except ValueError:
                event = {"stream": raw.decode("utf-8", "replace")}
            if isinstance(event, dict):
                yield event


def clean_error(message: str) -> str:
    message = message.strip()
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if message.startswith(prefix):
                message, changed = message[len(prefix):], True
    return message


# -- the build --------------------------------------------------------------------------------------
class _Follower:
    """Turns the build's JSON lines into log lines; remembers the image id and the error.
    The lines one event brings reach the log in one write (one store round trip)."""

    def __init__(self, log: LogSink):
        self.log = log
        self.lines: list[str] = []
        self.printer = ProgressPrinter(self.lines.append)
        self.image_id: str | None = None
        self.error: str | None = None
        self._bad_traces = 0

    def feed(self, event: dict) -> None:
        try:
            self._feed(event)
        finally:
            self.flush()

    def _feed(self, event: dict) -> None:
        if event.get("id") == "moby.buildkit.trace" and isinstance(event.get("aux"), str):
            try:
                self.printer.feed(decode_trace(event["aux"]))
            except DecodeError as exc:
                self._bad_traces += 1
                if self._bad_traces == 1:
                    self.lines.append(f"[runner] skipped a progress message we could not decode: {exc}")
            return
        self.printer.settle()
        if isinstance(event.get("aux"), dict) and "ID" in event["aux"]:
            self.image_id = event["aux"]["ID"]
        elif "error" in event or "errorDetail" in event:
            self.error = (event.get("errorDetail") or {}).get("message") or event.get("error") or "unknown error"
        elif text := str(event.get("stream", "")).strip("\n"):
            self.lines.extend(text.splitlines())

    def flush(self) -> None:
        if self.lines:
            text, self.lines[:] = "\n".join(self.lines), []
            self.log.write(text + "\n")

    def close(self) -> None:
        self.printer.close()
        self.flush()

    def failure(self) -> BuildFailed:
        self.printer.close()
        self.lines.extend(self.printer.failure_summary())
        message = clean_error(self.error or "")
        self.lines.append(f"[runner] error: {message}")
        self.flush()
        step = self.printer.failed_step()
        return BuildFailed(f"build failed at {step.name}: {message}" if step else f"build failed: {message}")


class BuildKitBuilder:
    """BuildKit through the Engine API, with a session for registry logins and build secrets."""

    name = "buildkit"

    def __init__(self, client: EngineClient, registries: Registries, secrets: dict[str, bytes]):
        self.client, self.registries, self.secrets = client, registries, secrets
        self.steps: tuple[int, int] | None = None

    def fork(self) -> BuildKitBuilder:
        return BuildKitBuilder(self.client, self.registries, self.secrets)

    def build(self, job: BuildRequest, context: BuildContext, log: LogSink, cancel: CancelToken,
              cache: BuildCache | None = None, platform: Platform | None = None) -> str:
        client = self.client
        for value in self.secrets.values():
            log.add_secret(value.decode("utf-8", "replace"))
        build_id = uuid.uuid4().hex
        params = build_params(job, build_id, job_tag(job.id, platform), cache, platform)
        unavailable: list[ExecutorError] = []

        def credentials(host: str) -> tuple[str, str] | None:
            try:
                return registry_credentials(self.registries, host, log)
            except ExecutorError as exc:  # a helper that failed: the job fails for it, not for the pull
                unavailable.append(exc)
                raise

        opening = BuildSession(client, f"runner-{job.id}", credentials, self.secrets)
        session: BuildSession | None = opening
        try:
            params["session"] = opening.start()
        except TransportUnsupported as exc:
            if self.secrets:
                raise InvalidJob(f"build secrets need a BuildKit session, which this engine connection cannot carry ({exc})") from None
            log.line(f"[runner] no BuildKit session ({exc}): FROM images must already be in the engine")
            session = None
        stream: dict[str, requests.Response] = {}

        def stop() -> None:
            log.line(f"[runner] {cancel.reason or 'cancelled'}: stopping BuildKit build {build_id}")
            client.cancel_build(build_id)
            shutdown_stream(stream.get("response"))

        unregister = cancel.on_cancel(stop)
        follower = _Follower(log)
        try:
            cancel.raise_if_set()
            with context_body(context) as body:
                stream["response"] = response = client.post_build(params, body)
                if cancel.is_set():
                    stop()
                for event in iter_events(response.iter_lines()):
                    follower.feed(event)
            follower.close()
        except docker.errors.APIError as exc:
            if cancel.is_set():
                raise Cancelled(cancel.reason or "cancelled") from None
            if exc.is_client_error():
                raise BuildFailed(f"the Docker Engine refused the build: {clean_error(exc.explanation or str(exc))}") from None
            raise InfrastructureError(f"the Docker Engine failed to start the build: {exc.explanation or exc}") from None
        except (requests.RequestException, OSError) as exc:
            if cancel.is_set():
                raise Cancelled(cancel.reason or "cancelled") from None
            raise InfrastructureError(f"lost the Docker Engine during the BuildKit build: {exc}") from None
        finally:
            unregister()
            if session is not None:
                session.close()
            shutdown_stream(stream.get("response"))
        cancel.raise_if_set()
        if follower.error is not None:
            failure = follower.failure()
            raise unavailable[0] if unavailable else failure
        if follower.image_id is None:
            raise BuildFailed("the engine finished the BuildKit build without reporting an image id")
        self.steps = follower.printer.dockerfile_steps()
        return follower.image_id

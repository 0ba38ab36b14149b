"""BuildKit builds through the Docker Engine HTTP API, for socket, dind and sysbox.

`POST /build?version=2` with the context tar streamed as the body. Progress comes back as
JSON lines whose `aux` holds a base64 protobuf StatusResponse (decoded and printed by
executors.buildkit_progress); the image id arrives as `{"id": "moby.image.id"}`. A BuildKit
session (executors.buildkit_session) serves registry credentials for FROM pulls and the
job's build secrets. Cancel and timeout call `POST /build/cancel?id=BUILDID`.
"""

from __future__ import annotations

import json
import socket
import threading
import uuid
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import docker.errors
import requests

from executors.base import BuildContext, BuildFailed, Cancelled, CancelToken, InfrastructureError, InvalidJob, LogSink, job_secrets
from executors.buildkit_progress import DecodeError, ProgressPrinter, decode_trace
from executors.buildkit_session import BuildSession, SessionUnsupported
from runner.jobs import BuildRequest
from runner.settings import Settings

MIN_API = (1, 39)
CANCEL_TIMEOUT = 5
CHUNK = 256 * 1024
DOCKER_HUB = "registry-1.docker.io"
_SUPPORT: dict[str, tuple[bool, str]] = {}
_SUPPORT_LOCK = threading.Lock()
_SUPPORT_MAX = 256
_PREFIXES = ("failed to solve with frontend dockerfile.v0: ", "failed to solve: ", "rpc error: code = Unknown desc = ")


# -- does this engine do BuildKit? -------------------------------------------------------------------
def _engine_key(api) -> str:
    """Unix-socket clients all have base_url http+docker://localhost; key them by socket path."""
    return getattr(getattr(api, "_custom_adapter", None), "socket_path", None) or api.base_url


def buildkit_support(api) -> tuple[bool, str]:
    """(supported, why): BuildKit needs a Linux engine with API >= 1.39. Cached per engine."""
    key = _engine_key(api)
    with _SUPPORT_LOCK:
        if key in _SUPPORT:
            return _SUPPORT[key]
    response = api._get(api._url("/_ping", versioned_api=False), timeout=10)
    version, os_type = response.headers.get("Api-Version"), response.headers.get("Ostype")
    if not version or not os_type:
        info = api.version(api_version=False)
        version, os_type = info.get("ApiVersion", "0"), info.get("Os", "")
    try:
        api_version = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        api_version = (0, 0)
    ok = api_version >= MIN_API and os_type.lower() == "linux"
    why = f"engine API {version} on {os_type or 'unknown OS'}" + ("" if ok else f"; BuildKit needs API >= {'.'.join(map(str, MIN_API))} on linux")
    with _SUPPORT_LOCK:
        if len(_SUPPORT) >= _SUPPORT_MAX:  # dind engines come and go, one socket each
            _SUPPORT.clear()
        _SUPPORT[key] = (ok, why)
    return ok, why


def engine_supports_buildkit(api) -> bool:
    return buildkit_support(api)[0]


# -- the request ------------------------------------------------------------------------------------
def build_params(job: BuildRequest, build_id: str, tag: str) -> dict[str, str]:
    params = {"version": "2", "buildid": build_id, "dockerfile": job.dockerfile, "t": tag, "pull": "0", "rm": "1"}
    if job.build_args:
        params["buildargs"] = json.dumps(job.build_args)
    if job.labels:
        params["labels"] = json.dumps(job.labels)
    if job.target:
        params["target"] = job.target
    if job.no_cache:
        params["nocache"] = "1"
    if job.platform:
        params["platform"] = job.platform
    return params


def registry_credentials(settings: Settings, host: str) -> tuple[str, str] | None:
    """The login the config holds for `host`, as BuildKit asks for it (Docker Hub as registry-1)."""
    names = [host, "docker.io", "index.docker.io"] if host == DOCKER_HUB else [host]
    config = next((c for c in map(settings.registry_for, names) if c is not None), None)
    if config is None or not config.username:
        return None
    secret = config.secret()
    return (config.username, secret) if secret is not None else None


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


def post_build(api, params: dict[str, str], body) -> requests.Response:
    """Start the build; the response streams JSON lines. Raises docker APIError on 4xx/5xx."""
    response = api._post(api._url("/build"), params=params, data=body,
                         headers={"Content-Type": "application/x-tar"}, stream=True, timeout=None)
    api._raise_for_status(response)
    return response


def cancel_build(api, build_id: str) -> None:
    try:
        api._post(api._url("/build/cancel"), params={"id": build_id}, timeout=CANCEL_TIMEOUT).close()
    except Exception:  # noqa: BLE001 - the engine may be gone already; the stream tells the outcome
        pass


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
    """Turns the build's JSON lines into log lines; remembers the image id and the error."""

    def __init__(self, log: LogSink):
        self.log = log
        self.printer = ProgressPrinter(log.line)
        self.image_id: str | None = None
        self.error: str | None = None
        self._bad_traces = 0

    def feed(self, event: dict) -> None:
        if event.get("id") == "moby.buildkit.trace" and isinstance(event.get("aux"), str):
            try:
                self.printer.feed(decode_trace(event["aux"]))
            except DecodeError as exc:
                self._bad_traces += 1
                if self._bad_traces == 1:
                    self.log.line(f"[runner] skipped a progress message we could not decode: {exc}")
            return
        self.printer.settle()
        if isinstance(event.get("aux"), dict) and "ID" in event["aux"]:
            self.image_id = event["aux"]["ID"]
        elif "error" in event or "errorDetail" in event:
            self.error = (event.get("errorDetail") or {}).get("message") or event.get("error") or "unknown error"
        elif text := str(event.get("stream", "")).strip("\n"):
            for line in text.splitlines():
                self.log.line(line)

    def failure(self) -> BuildFailed:
        self.printer.close()
        for line in self.printer.failure_summary():
            self.log.line(line)
        message = clean_error(self.error or "")
        self.log.line(f"[runner] error: {message}")
        step = self.printer.failed_step()
        return BuildFailed(f"build failed at {step.name}: {message}" if step else f"build failed: {message}")


def buildkit_build(engine, job: BuildRequest, context: BuildContext, log: LogSink, cancel: CancelToken) -> str:
    """Build `job` with BuildKit on `engine` (executors.engine.Engine); return the image id."""
    from executors.engine import job_tag

    api = engine.api
    supported, why = buildkit_support(api)
    if not supported:
        raise InvalidJob(f"the job asks for the BuildKit builder but this Docker Engine cannot run it ({why}); use builder auto or classic")
    secrets = job_secrets(engine.settings, job)
    add_secret = getattr(log, "add_secret", None)
    for value in secrets.values():
        if add_secret is not None:
            add_secret(value.decode("utf-8", "replace"))
    build_id = uuid.uuid4().hex
    params = build_params(job, build_id, job_tag(job.id))
    session = BuildSession(api, f"runner-{job.id}", lambda host: registry_credentials(engine.settings, host), secrets)
    try:
        params["session"] = session.start()
    except SessionUnsupported as exc:
        if secrets:
            raise InvalidJob(f"build secrets need a BuildKit session, which this engine connection cannot carry ({exc})") from None
        log.line(f"[runner] no BuildKit session ({exc}): FROM images must already be in the engine")
        session = None
    stream: dict[str, requests.Response] = {}

    def stop() -> None:
        log.line(f"[runner] {cancel.reason or 'cancelled'}: stopping BuildKit build {build_id}")
        cancel_build(api, build_id)
        shutdown_stream(stream.get("response"))

    unregister = cancel.on_cancel(stop)
    follower = _Follower(log)
    try:
        cancel.raise_if_set()
        with context_body(context) as body:
            stream["response"] = response = post_build(api, params, body)
            if cancel.is_set():
                stop()
            for event in iter_events(response.iter_lines()):
                follower.feed(event)
        follower.printer.close()
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
        raise follower.failure()
    if follower.image_id is None:
        raise BuildFailed("the engine finished the BuildKit build without reporting an image id")
    return follower.image_id

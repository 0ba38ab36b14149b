"""The HTTP API (`runner serve`): jobs, logs, cancel, context upload and git-push webhooks.

Every entry point turns its input into a BuildRequest and hands it to runner.submission,
exactly like the CLI; nothing here builds. Job endpoints need `Authorization: Bearer
TOKEN` with a token from `api.tokens` holding the right (submit, read, cancel).

Upload flow for a directory context: pick a job id, `POST /v1/jobs/{id}/context` with the
tar as the raw body (Content-Type: application/x-tar; capped at limits.max_context_bytes),
then `POST /v1/jobs` with `{"id": ID, "tags": [...], ...}`. Git contexts need no upload.

`GET /v1/jobs/{id}/logs?follow=true` streams until the job ends or the client leaves; a token
may hold api.max_followers_per_token such streams at once (429 past it). Followers hold no
threads: runner.logfollow reads on asyncio with one shared tailer per followed job.
"""

from __future__ import annotations

import gc
import hashlib
import hmac
import json
import logging
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import anyio
import redis
from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from runner.config.logs import configure_logging
from runner.config.sections import ApiToken, Right
from runner.config.settings import Settings, load_settings
from runner.core.jobs import JobRecord, Status
from runner.core.validation import field_error
from runner.entry import dashboard, webhooks
from runner.entry import metrics as fleet_metrics
from runner.entry.control import cancel_job
from runner.entry.errors import ApiError, JobId, error_response
from runner.entry.submission import ContextUpload, UploadRefused, submit
from runner.store.jobstore import CHUNK_BYTES, ContextTooLarge, JobStore, StoreUnavailable
from runner.store.logfollow import LogHub, LogUnavailable, TooManyFollowers
from runner.worker.admission import Origin, Rejected, admit, parse_request

log = logging.getLogger("runner.api")
BEARER = HTTPBearer(auto_error=False, description="a token from api.tokens")
TAR_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ")  # gzip, bzip2, xz; plain tar is checked at offset 257
HEALTH_TIMEOUT = 1.0  # seconds /healthz waits for Redis's answer
SHUTDOWN_GRACE = 10  # seconds open requests (log followers) get at shutdown before they are cut


def authenticate(token: str, tokens: list[ApiToken]) -> ApiToken | None:
    """The configured token equal to `token`; every candidate is compared, in constant time."""
    given = hashlib.sha256(token.encode("utf-8", "replace")).digest()
    found = None
    for candidate in tokens:
        try:
            value = candidate.secret_value(f"api.tokens[{candidate.name}]")
        except ValueError as exc:
            log.warning("%s", exc)
            continue
        if value and hmac.compare_digest(given, hashlib.sha256(value.encode()).digest()):
            found = candidate
    return found


class LogResponse(StreamingResponse):
    """A log stream that ends when the log ends or the client goes, whichever comes first.

    It always listens for the disconnect (Starlette does only for ASGI < 2.4; on 2.4 a quiet
    follower would notice only at its next write), then closes the log generator and calls
    `on_close` (the follower's slot), also when the stream never started."""

    def __init__(self, content: AsyncGenerator[bytes, None], job_id: str, on_close: Callable[[], None] | None = None):
        super().__init__(content, media_type="text/plain; charset=utf-8",
                         headers={"X-Accel-Buffering": "no", "Cache-Control": "no-store"})
        self.lines, self.job_id, self.on_close = content, job_id, on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:
                async def stream() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:  # the client went away while we wrote (ASGI 2.4 servers say so this way)
                        pass
                    except (LogUnavailable, redis.RedisError) as exc:  # cut short: no final chunk, so clients see it
                        log.warning("log stream of job %s ended early: %s", self.job_id, type(exc).__name__)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.lines.aclose()
            if self.on_close is not None:
                self.on_close()


async def read_body(request: Request, limit: int, what: str) -> bytes:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise ApiError(413, "too_large", f"the {what} is {int(length):,} bytes, over the limit of {limit:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"the {what} is over the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class ApiContext:
    """What the API's route modules share: each module has `register(app, context)`."""

    settings: Settings
    store: JobStore
    logs: LogHub
    #: `Depends` that admits a bearer token holding the right (submit, read, cancel)
    require: Callable[[Right], Any]


#: route modules beside the job endpoints, each with `register(app, context)`
EXTENSIONS: tuple[Callable[[FastAPI, ApiContext], None], ...] = (fleet_metrics.register, dashboard.register)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    store = JobStore.from_settings(settings)
    logs = LogHub(store)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await logs.open()
        try:
            gc.freeze()  # start-up objects live as long as the server: no full collection walks them (50+ ms pauses)
            yield
        finally:
            await logs.close()

    app = FastAPI(title="CI build runner", version="1", separate_input_output_schemas=False,
                  description=__doc__, lifespan=lifespan)

    def require(right: Right):
        async def check(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> ApiToken:
            challenge = {"WWW-Authenticate": "Bearer"}
            if credentials is None:
                raise ApiError(401, "unauthorized", "send Authorization: Bearer TOKEN (a token from api.tokens)",
                               headers=challenge)
            token = authenticate(credentials.credentials, settings.api.tokens)
            if token is None:
                why = "the bearer token is not one of api.tokens" if settings.api.tokens else \
                    "no API tokens are configured (api.tokens), so every job endpoint refuses"
                raise ApiError(401, "unauthorized", why, headers=challenge)
            if right not in token.rights:
                raise ApiError(403, "forbidden", f"token {token.name!r} lacks the {right!r} right "
                               f"(it has: {', '.join(token.rights) or 'none'})")
            return token

        return Depends(check)

    # -- errors: one JSON shape, never a traceback ---------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.message, exc.field, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = field_error(exc.errors()[0])
        path = first.path[1:] if first.path[:1] in (("body",), ("query",), ("path",), ("header",)) else first.path
        return error_response(422, "invalid", first.message, ".".join(path) or "request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, "http", str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(redis.RedisError)
    @app.exception_handler(StoreUnavailable)
    async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
        log.warning("Redis is unreachable: %s", exc)
        return error_response(503, "unavailable", "the job store or queue (Redis) is unreachable; retry later")

    # -- health ---------------------------------------------------------------------------------
    @app.get("/healthz", tags=["health"], responses={503: {"description": "Redis does not answer"}})
    async def healthz() -> dict[str, str]:
        """Up if Redis answers within a second. Async on its own: no thread, whatever else is busy."""
        if not await logs.ping(HEALTH_TIMEOUT):
            raise ApiError(503, "unavailable", "the job store (Redis) is unreachable; retry later")
        return {"status": "ok"}

    # -- jobs -----------------------------------------------------------------------------------
    @app.post("/v1/jobs", status_code=202, tags=["jobs"],
              responses={200: {"description": "a job with this id already exists; nothing queued"},
                         413: {"description": "body over api.max_body_bytes"},
                         422: {"description": "invalid job; `field` names what was wrong"}},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": {"$ref": "#/components/schemas/BuildRequest"}}}}})
    async def post_job(request: Request, token: ApiToken = require("submit")) -> JSONResponse:
        """Queue a build. The same job schema as the queue message and `runner submit`."""
        body = await read_body(request, settings.api.max_body_bytes, "job")
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise ApiError(422, "invalid", f"the body is not valid JSON: {exc}", "body") from None
        except RecursionError:
            raise ApiError(422, "invalid", "the body nests arrays or objects too deeply to read", "body") from None
        record, created = await run_in_threadpool(submit_job, data, token)
        headers = {"Location": f"/v1/jobs/{record.id}"}
        return JSONResponse({"id": record.id, "status": record.status.value, "created": created, "queue": record.queue},
                            status_code=202 if created else 200, headers=headers)

    def uploader(token: ApiToken) -> str:
        return f"token:{token.name}"

    def submit_job(data: Any, token: ApiToken) -> tuple[JobRecord, bool]:
        owner, origin = uploader(token), Origin.api(token)
        try:
            job = parse_request(data)
            existing = store.get(job.id)
            if existing is not None:
                return existing, False
            admitted = admit(job, settings, origin)
            if job.context.type == "upload":
                holder = store.reservation(job.id)
                if holder not in (None, owner):
                    raise ApiError(409, "exists", f"the context of job {job.id} was uploaded by another token; "
                                   "choose another id")
                if not store.has_context(job.id):
                    raise Rejected("context", f"no build context was uploaded for job {job.id}: POST the tar to "
                                   f"/v1/jobs/{job.id}/context first, or give a git context")
            submitted = submit(job, settings, store, origin, admitted)
            store.untrack_upload(owner, job.id)
            return submitted
        except Rejected as exc:
            raise ApiError(422, "invalid", exc.message, exc.field) from None

    @app.post("/v1/jobs/{job_id}/context", status_code=201, tags=["jobs"],
              responses={409: {"description": "the job exists, or another token is uploading its context"},
                         413: {"description": "over limits.max_context_bytes"},
                         429: {"description": "over api.max_pending_uploads_per_token"}},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/x-tar": {"schema": {"type": "string", "format": "binary"}}}}})
    async def upload_context(job_id: JobId, request: Request, token: ApiToken = require("submit")) -> dict[str, Any]:
        """Upload the build context (a tar, optionally gzip/bzip2/xz) for a job not yet submitted.

        The id is reserved for this token from the first byte, so no other client can replace
        the context; an upload not submitted within retention.upload_seconds expires."""
        limit = settings.limits.max_context_bytes
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise ApiError(413, "too_large", f"the context is {int(length):,} bytes, over the limit of {limit:,} "
                           "bytes (limits.max_context_bytes); add a .dockerignore")
        quota = settings.api.max_pending_uploads_per_token
        try:
            upload = await run_in_threadpool(ContextUpload.begin, store, job_id, uploader(token), limit, quota)
        except UploadRefused as exc:
            if exc.reason == "exists":
                raise ApiError(409, "exists", f"job {job_id} already exists; upload the context before submitting the job") from None
            if exc.reason == "busy":
                raise ApiError(409, "exists", f"another client is uploading the context of job {job_id}; choose another id") from None
            raise ApiError(429, "too_many_uploads", f"token {token.name!r} already has {quota} uploaded contexts that are not "
                           "submitted (api.max_pending_uploads_per_token); submit them, or wait for them to expire "
                           f"(retention.upload_seconds: {settings.retention.upload_seconds}s)", headers={"Retry-After": "60"}) from None
        head, pending = b"", bytearray()
        try:
            async for chunk in request.stream():
                if len(head) < 512:
                    head += chunk[: 512 - len(head)]
                pending += chunk
                if len(pending) >= CHUNK_BYTES:  # Redis writes off the event loop, a chunk at a time
                    await run_in_threadpool(upload.write, bytes(pending))
                    pending.clear()
            if not (head.startswith(TAR_MAGIC) or head[257:262] == b"ustar"):
                raise ApiError(422, "invalid", "the body is not a tar archive (plain, gzip, bzip2 or xz)", "body")
            await run_in_threadpool(upload.write, bytes(pending))
            await run_in_threadpool(upload.finish)
        except ContextTooLarge as exc:
            await run_in_threadpool(upload.abandon)
            raise ApiError(413, "too_large", str(exc)) from None
        except (ClientDisconnect, ApiError):
            await run_in_threadpool(upload.abandon)
            raise
        return {"id": job_id, "bytes": upload.size}

    @app.get("/v1/jobs", tags=["jobs"], dependencies=[require("read")])
    def list_jobs(status: Status | None = None,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[JobRecord]:
        """Recent jobs, newest first."""
        return store.list(status, limit)

    @app.get("/v1/jobs/{job_id}", tags=["jobs"], dependencies=[require("read")],
             responses={404: {"description": "no such job"}})
    def get_job(job_id: JobId) -> JobRecord:
        record = store.get(job_id)
        if record is None:
            raise ApiError(404, "not_found", f"no job {job_id!r}")
        return record

    @app.get("/v1/jobs/{job_id}/logs", tags=["jobs"], response_class=StreamingResponse,
             responses={200: {"content": {"text/plain": {}}}, 404: {"description": "no such job"},
                        429: {"description": "the token follows api.max_followers_per_token logs already"}})
    async def get_logs(job_id: JobId, follow: bool = False, token: ApiToken = require("read")) -> LogResponse:
        """The job's log from the start, one line per line; with follow=true, streams until the job ends."""
        if not await logs.exists(job_id):
            raise ApiError(404, "not_found", f"no job {job_id!r}")
        if not follow:
            return LogResponse(logs.read(job_id), job_id)
        try:
            slot = logs.admit(token.name, settings.api.max_followers_per_token)
        except TooManyFollowers as exc:
            raise ApiError(429, "too_many_followers", str(exc), headers={"Retry-After": "5"}) from None
        return LogResponse(logs.follow(job_id), job_id, on_close=slot.release)

    @app.get("/v1/followers", tags=["jobs"])
    async def followers(token: ApiToken = require("read")) -> dict[str, int]:
        """Open follow streams (all, and this token's) and the jobs they follow: for monitoring and tests."""
        return logs.stats(token.name)

    @app.post("/v1/jobs/{job_id}/cancel", status_code=202, tags=["jobs"], dependencies=[require("cancel")],
              responses={404: {"description": "no such job"}})
    def cancel(job_id: JobId) -> JobRecord:
        """A queued job never starts; a running one is stopped by its worker within a second."""
        record = cancel_job(store, job_id, settings.deliveries.recover_after)
        if record is None:
            raise ApiError(404, "not_found", f"no job {job_id!r}")
        return record

    context = ApiContext(settings, store, logs, require)
    for register in EXTENSIONS:
        register(app, context)

    # -- webhooks -------------------------------------------------------------------------------
    @app.post("/v1/webhooks/{provider}", tags=["webhooks"],
              responses={202: {"description": "a job was queued"}, 401: {"description": "bad or missing signature"}},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": {"type": "object"}}}}})
    async def webhook(provider: Literal["github", "gitlab", "gitea"], request: Request) -> JSONResponse:
        """A push event: verified, mapped through webhooks.repositories, queued; never waits for the build."""
        body = await read_body(request, settings.api.max_body_bytes, "webhook body")
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            outcome = await run_in_threadpool(lambda: webhooks.handle(provider, headers, body, settings, store))
        except webhooks.WebhookError as exc:
            if exc.status == 401:
                log.warning("webhook %s refused: %s", provider, exc.message)
            return error_response(exc.status, "unauthorized" if exc.status == 401 else "invalid", exc.message)
        if outcome.body.get("job"):
            log.info("webhook %s: %s job %s", provider, outcome.body["result"], outcome.body["job"])
        return JSONResponse(outcome.body, status_code=outcome.status)

    return app


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    import uvicorn

    configure_logging(settings, "INFO")
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(
        app, host=host or settings.api.host, port=settings.api.port if port is None else port, log_level="info",
        server_header=False, timeout_graceful_shutdown=SHUTDOWN_GRACE,
        log_config=None))  # uvicorn's lines go through our handler: masked, text or JSON like ours
    app.state.stopping = lambda: server.should_exit  # /readyz answers 503 from SIGTERM on
    server.run()

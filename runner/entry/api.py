"""The HTTP API (`runner serve`): jobs, logs, cancel, context upload and git-push webhooks.

Every entry point turns its input into a BuildRequest and hands it to runner.entry.submission,
exactly like the CLI; nothing here builds. Job endpoints need `Authorization: Bearer
TOKEN` with a token from `api.tokens` holding the right (submit, read, cancel).

Upload flow for a directory context: pick a job id, `POST /v1/jobs/{id}/context` with the
tar as the raw body (Content-Type: application/x-tar; capped at limits.max_context_bytes),
then `POST /v1/jobs` with `{"id": ID, "tags": [...], ...}`. Git contexts need no upload.

`GET /v1/jobs/{id}/logs?follow=true` streams until the job ends or the client leaves; a token
may hold api.max_followers_per_token such streams at once (429 past it). Followers hold no
threads: runner.store.logfollow reads on asyncio with one shared tailer per followed job.
"""

from __future__ import annotations

import gc
import logging
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from runner.config.logs import configure_logging
from runner.config.settings import Settings, load_settings
from runner.core.validation import field_error
from runner.entry import dashboard
from runner.entry import serve_metrics as health
from runner.entry.deps import ApiContext
from runner.entry.errors import ApiError, error_response
from runner.entry.request_metrics import RequestMetrics, RequestMetricsMiddleware
from runner.entry.routes import jobs, logs, provenance, uploads, webhooks
from runner.entry.start_gate import StartGate
from runner.store.jobstore import JobStore, StoreUnavailable
from runner.store.logfollow import LogHub
from runner.store.redis_clients import FailoverWatch

log = logging.getLogger(__name__)
SHUTDOWN_GRACE = 10  # seconds open requests (log followers) get at shutdown before they are cut
#: every router of the API, in the order their routes are matched (no two of them overlap)
ROUTERS = (health.router, jobs.router, provenance.router, uploads.router, logs.router, dashboard.router, webhooks.router)


class RunnerApi(FastAPI):
    """The API's app: its request metrics, then the stream gate, wrap every other layer (FastAPI's
    and Starlette's middleware, the error handler). A stream waiting at the gate has then cost the
    loop next to nothing (500 followers arriving together must not), and a request's duration
    counts its wait there."""

    def build_middleware_stack(self) -> ASGIApp:
        app: ASGIApp = StartGate(super().build_middleware_stack())
        metrics: RequestMetrics | None = getattr(self.state, "request_metrics", None)
        return app if metrics is None else RequestMetricsMiddleware(app, metrics, self)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    store = JobStore.from_settings(settings)
    api = ApiContext(settings, store, LogHub(store))

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await api.logs.open()
        failover = FailoverWatch(settings.redis_target(), store.clients())  # with Sentinel only
        failover.start()
        try:
            gc.freeze()  # start-up objects live as long as the server: no full collection walks them (50+ ms pauses)
            yield
        finally:
            failover.stop()
            await api.logs.close()

    app = RunnerApi(title="CI build runner", version="1", separate_input_output_schemas=False,
                  description=__doc__, lifespan=lifespan)
    app.state.api = api
    add_error_handlers(app)
    health.install(app, api)
    dashboard.install(app, api)
    for router in ROUTERS:
        app.include_router(router)
    return app


def add_error_handlers(app: FastAPI) -> None:
    """One JSON shape ({"error", "message"[, "field"]}) for every error, never a traceback."""

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
        if isinstance(exc, redis.exceptions.OutOfMemoryError):  # maxmemory reached, noeviction: nothing is dropped
            log.warning("Redis is full: %s", exc)
            return error_response(503, "unavailable", "the job store (Redis) is full (maxmemory); retry later",
                                  headers={"Retry-After": "30"})
        log.warning("Redis is unreachable: %s", exc)
        return error_response(503, "unavailable", "the job store or queue (Redis) is unreachable; retry later")


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    import uvicorn

    configure_logging(settings, settings.log.level)
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(
        app, host=host or settings.api.host, port=settings.api.port if port is None else port,
        log_level=settings.log.level.lower(),
        server_header=False, timeout_graceful_shutdown=SHUTDOWN_GRACE,
        log_config=None))  # uvicorn's lines go through our handler: masked, text or JSON like ours
    app.state.stopping = lambda: server.should_exit  # /readyz answers 503 from SIGTERM on
    server.run()

"""The API's requests for Prometheus: how many and how long, by route template.

runner_http_requests_total{method,route,status}      status is the class: 2xx, 3xx, 4xx, 5xx
runner_http_request_duration_seconds{method,route}    until the response's headers are sent, so a
                                                      followed log or an event stream counts its
                                                      start, not how long the client listens

`route` is the template a request matched (`/v1/jobs/{job_id}`), never its path, so job ids
never become labels; a request no route matched counts as `unmatched`, and a method nobody
serves as `other`. Every route's series exist at 0 from the first request (the routes are
complete by then: some are added after this middleware), so increase() sees the first 5xx.
A plain ASGI middleware, the app's outermost layer (runner.entry.api.RunnerApi): it never buffers
a streamed response, and a request's time counts its wait at the stream gate.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import fastapi.routing
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: FastAPI >= 0.137 keeps an included router whole in app.routes and walks into it with this;
#: older FastAPI copies an included router's routes into app.routes (None)
iter_route_contexts = getattr(fastapi.routing, "iter_route_contexts", None)

#: 1 ms .. 30 s
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx")
UNMATCHED = "unmatched"


class RequestMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.requests = Counter("runner_http_requests_total", "HTTP requests the API answered, by route template and "
                                "status class", ["method", "route", "status"], registry=registry)
        self.duration = Histogram("runner_http_request_duration_seconds", "Time from a request's arrival to its "
                                  "response's headers, by route template", ["method", "route"], buckets=HTTP_BUCKETS,
                                  registry=registry)
        self._routes_known = False

    def know_routes(self, app: FastAPI) -> None:
        """Every route's series at 0 (once, at the first request)."""
        if self._routes_known:
            return
        self._routes_known = True
        for route, method in route_methods(app.routes):
            self.duration.labels(method, route)
            for status in STATUS_CLASSES:
                self.requests.labels(method, route, status)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "other"
        self.requests.labels(method, route, f"{min(max(status // 100, 1), 5)}xx").inc()
        self.duration.labels(method, route).observe(seconds)


def route_template(route: BaseRoute | None) -> str:
    if isinstance(route, Route | Mount):
        return route.path or "/"
    return UNMATCHED


def route_methods(routes: list[BaseRoute]) -> Iterator[tuple[str, str]]:
    """(template, method) of every HTTP route, also those of included routers; a mount (static
    files) serves GET."""
    for route, path in with_paths(routes):
        if isinstance(route, Route):
            for method in sorted((route.methods or set()) - {"HEAD"}):
                yield path, method
        elif isinstance(route, Mount):
            yield path, "GET"


def with_paths(routes: list[BaseRoute]) -> Iterator[tuple[BaseRoute, str]]:
    """Every route with the path it answers at (an included router's prefix on it)."""
    if iter_route_contexts is None:
        yield from ((route, getattr(route, "path", "")) for route in routes)
        return
    for context in iter_route_contexts(routes):
        yield context.original_route, context.path or ""


class RequestMetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: RequestMetrics, server: FastAPI):
        self.app, self.metrics, self.server = app, metrics, server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.metrics.know_routes(self.server)
        started = time.perf_counter()
        observed = False

        def observe(status: int) -> None:
            nonlocal observed
            if not observed:
                observed = True
                self.metrics.observe(scope["method"], route_template(scope.get("route")), status, time.perf_counter() - started)

        async def send_observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                observe(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        except Exception:
            observe(500)  # the server's error middleware answers it
            raise

"""The start gate (runner/entry/start_gate.py): log and event streams arriving together set up
at most START_SLOTS at a time, the slot is freed when the response starts (an open stream holds
none) or the request fails, other requests never wait at it; and through a real `runner serve`
on the real Redis, followers admitted through the gate in turns still get every line.

The gate's own tests drive it with a small ASGI app of their own (the gate is plain ASGI: what
sits behind it does not matter to it); speed is bench/bench_followers.py, not here."""

from __future__ import annotations

import asyncio
import os
import uuid
from types import SimpleNamespace

import httpx
import pytest
import yaml

from runner.config.settings import Settings
from runner.core.jobs import BuildRequest, JobRecord, Status
from runner.entry.api import create_app
from runner.entry.request_metrics import RequestMetricsMiddleware
from runner.entry.start_gate import START_SLOTS, StartGate, is_stream
from runner.store.logfollow import PAGE
from tests.support.fleet import start_serve


def scope(path: str, method: str = "GET") -> dict:
    return {"type": "http", "method": method, "path": path, "headers": []}


class Backend:
    """An ASGI app standing for the routes: each request sets up over a few loop turns (counted:
    `inside` now, `most` at once), starts its response, then streams until `close` is set."""

    def __init__(self, fail: set[str] = frozenset()):
        self.inside = self.most = self.started = 0
        self.fail = fail
        self.close = asyncio.Event()

    async def __call__(self, scope, receive, send) -> None:
        self.inside += 1
        self.most = max(self.most, self.inside)
        try:
            for _ in range(3):
                await asyncio.sleep(0)
            if scope["path"] in self.fail:
                raise RuntimeError("the route failed before its response")
        finally:
            self.inside -= 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        self.started += 1
        await self.close.wait()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def call(app, path: str, method: str = "GET") -> list[dict]:
    sent: list[dict] = []

    async def receive():
        await asyncio.Event().wait()

    async def send(message):
        sent.append(message)

    await app(scope(path, method), receive, send)
    return sent


def test_streams_set_up_at_most_slots_at_a_time_and_an_open_stream_holds_no_slot():
    async def body():
        backend = Backend()
        gate = StartGate(backend, slots=4)
        tasks = [asyncio.create_task(call(gate, f"/v1/jobs/j{n}/logs")) for n in range(20)]
        while backend.started < 20:
            await asyncio.sleep(0.001)
        starting = gate.starting  # every stream open, none set up now
        backend.close.set()
        return backend.most, starting, await asyncio.gather(*tasks)

    most, starting, sent = asyncio.run(body())
    assert 1 < most <= 4, f"{most} streams set up at once through a gate of 4"
    assert starting == 0, "an open stream gives its slot back when its response starts"
    assert all(messages[0]["status"] == 200 and messages[-1]["more_body"] is False for messages in sent)


def test_other_requests_pass_a_full_gate():
    async def body():
        backend = Backend()
        gate = StartGate(backend, slots=2)
        hold = asyncio.Event()

        async def slow_setup(scope, receive, send):  # the streams stall in their set-up
            if is_stream(scope):
                await hold.wait()
            await backend(scope, receive, send)

        gate.app = slow_setup
        streams = [asyncio.create_task(call(gate, f"/v1/jobs/j{n}/logs")) for n in range(5)]
        await asyncio.sleep(0.01)
        full = gate.starting
        backend.close.set()
        health = await asyncio.wait_for(call(gate, "/healthz"), 5)
        hold.set()
        await asyncio.gather(*streams)
        return full, health

    full, health = asyncio.run(body())
    assert full == 2, "the gate is full"
    assert health[0]["status"] == 200, "/healthz did not wait for a slot"


def test_a_request_that_fails_before_its_response_frees_its_slot():
    async def body():
        backend = Backend(fail={"/v1/jobs/bad/logs"})
        backend.close.set()
        gate = StartGate(backend, slots=1)
        with pytest.raises(RuntimeError):
            await call(gate, "/v1/jobs/bad/logs")
        return gate.starting, await asyncio.wait_for(call(gate, "/v1/jobs/good/logs"), 5)

    starting, sent = asyncio.run(body())
    assert starting == 0 and sent[0]["status"] == 200


@pytest.mark.parametrize(("method", "path", "gated"), [
    ("GET", "/v1/jobs/abc/logs", True),
    ("GET", "/ui/jobs/abc/log/events", True),
    ("GET", "/ui/jobs/abc/events", True),
    ("GET", "/ui/jobs/events", True),
    ("GET", "/ui/fleet/events", True),
    ("GET", "/healthz", False),
    ("GET", "/readyz", False),
    ("GET", "/metrics", False),
    ("GET", "/v1/jobs/abc", False),
    ("GET", "/v1/followers", False),
    ("POST", "/v1/jobs/abc/context", False),
])
def test_the_gate_takes_the_stream_routes_only(method, path, gated):
    assert is_stream(scope(path, method)) is gated


def test_the_gate_is_the_apps_layer_inside_the_request_metrics():
    """Outside every other layer (a waiting stream has cost next to nothing), inside the request
    metrics (a request's duration counts its wait at the gate)."""
    stack = create_app(Settings()).build_middleware_stack()
    assert isinstance(stack, RequestMetricsMiddleware) and isinstance(stack.app, StartGate), stack


def test_followers_admitted_in_turns_get_every_line(new_store, redis_url, tmp_path):
    """More followers than START_SLOTS at once on a real `runner serve`: each gets the whole
    log, in order, and the server counts none once they are gone."""
    store = new_store()
    request = BuildRequest(tags=["127.0.0.1:5000/gate/app:1"])
    store.create(JobRecord(id=request.id, request=request, executor="socket", queue="runner.socket",
                           status=Status.running))
    lines = [f"gate line {n}" for n in range(3 * PAGE)]
    store.append_log(request.id, lines)
    store.end(request.id, lambda record: record.model_copy(update={"status": Status.succeeded}))
    followers, token = 3 * START_SLOTS + 5, "gate-" + uuid.uuid4().hex
    config = {"redis_url": redis_url, "worker": {"namespace": store.ns, "workspace": str(tmp_path / "work")},
              "api": {"tokens": [{"name": "gate", "token": token, "rights": ["read"]}],
                      "max_followers_per_token": followers}}
    (tmp_path / "runner.yml").write_text(yaml.safe_dump(config))
    serve = start_serve(SimpleNamespace(workdir=tmp_path, env={**os.environ, "RUNNER_CONFIG": str(tmp_path / "runner.yml")}))

    async def follow_all():
        limits = httpx.Limits(max_connections=followers + 10)
        async with httpx.AsyncClient(base_url=serve.url, headers={"Authorization": f"Bearer {token}"},
                                     timeout=60, limits=limits) as client:
            async def follow() -> list[str]:
                async with client.stream("GET", f"/v1/jobs/{request.id}/logs", params={"follow": "true"}) as response:
                    assert response.status_code == 200, await response.aread()
                    return [line async for line in response.aiter_lines()]
            got = await asyncio.gather(*(follow() for _ in range(followers)))
            for _ in range(300):  # the server counts a stream off just after its last chunk
                stats = (await client.get("/v1/followers")).json()
                if stats["followers"] == 0:
                    break
                await asyncio.sleep(0.05)
            return got, stats

    try:
        got, stats = asyncio.run(follow_all())
    finally:
        serve.stop()
    assert got == [lines] * followers, "every follower gets every line once, in order"
    assert stats["followers"] == 0, stats

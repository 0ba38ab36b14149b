"""Log followers cannot stall the API, and odd bodies get 4xx, never 500 (issue 10, "40 log
followers stall the whole API" and "Low"). A real `runner serve`, a real worker building jobs
that keep running, 100 follow streams from one read-only token.

The server's follower count is read through `GET /v1/followers` (read right): it must come
back to 0 once the clients are gone, also on a job that prints nothing. Client timeouts of 5 s
are functional (a stalled API times out), not timing assertions; speed is bench/bench_followers.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from concurrent.futures import Future
from urllib.parse import urlencode

import httpx
import pytest

from tests.conftest import RUNNER
from tests.test_api import TOKEN_ALL, TOKEN_READ, TOKENS, Stack, context_tar, free_port, image_ref, start_stack, stop_stack

LIMIT = 100
GITHUB_SECRET = "gh-" + uuid.uuid4().hex
GITLAB_TOKEN = "gl-" + uuid.uuid4().hex
TICK = re.compile(r"tick-(\d+)\s*$")


@pytest.fixture(scope="module")
def stack(services, tmp_path_factory):
    s = start_stack(services, tmp_path_factory,
                    api={"tokens": TOKENS, "max_body_bytes": 256 * 1024, "max_followers_per_token": LIMIT},
                    webhooks={"github": {"secret": GITHUB_SECRET}, "gitlab": {"secret": GITLAB_TOKEN}})
    yield s
    stop_stack(s)


def wait_until(condition, what: str, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.1)


def start_job(stack: Stack, services, script: str, first_line: str) -> str:
    """Queue a build whose RUN keeps running, and wait until its log shows `first_line`."""
    job_id = uuid.uuid4().hex
    tar = context_tar({"Dockerfile": f"FROM {services['RUNNER_DEV_BASE_IMAGE']}\nRUN {script}\n"})
    with stack.client() as c:
        c.post(f"/v1/jobs/{job_id}/context", content=tar).raise_for_status()
        c.post("/v1/jobs", json={"id": job_id, "tags": [image_ref(stack, "follow")], "executor": "socket",
                                 "no_cache": True, "timeout": 600}).raise_for_status()
        wait_until(lambda: first_line in c.get(f"/v1/jobs/{job_id}/logs").text, f"job {job_id} prints {first_line!r}")
    return job_id


def cancel_and_wait(stack: Stack, job_id: str) -> dict:
    with stack.client() as c:
        c.post(f"/v1/jobs/{job_id}/cancel").raise_for_status()
    return stack.wait(job_id, timeout=60)


def follower_stats(stack: Stack) -> dict:
    with stack.client(token=TOKEN_READ, timeout=5) as c:
        response = c.get("/v1/followers")
    assert response.status_code == 200, response.text
    return response.json()


class Followers:
    """`n` follow streams of one job with one token, read in a background event loop, as a
    dashboard would hold them; `close()` drops every connection at once."""

    def __init__(self, url: str, token: str, job_id: str, n: int):
        self.lines: list[list[str]] = [[] for _ in range(n)]
        self.status: list[int | None] = [None] * n
        self.outcome: list[str | None] = [None] * n  # "ended" (the server closed the stream) or an error
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.client = self._call(self._client(url, token, n))
        self.futures: list[Future] = [asyncio.run_coroutine_threadsafe(self._follow(i, job_id), self.loop) for i in range(n)]

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    @staticmethod
    async def _client(url: str, token: str, n: int) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"},
                                 timeout=httpx.Timeout(30, read=None), limits=httpx.Limits(max_connections=n + 10))

    async def _follow(self, i: int, job_id: str) -> None:
        try:
            async with self.client.stream("GET", f"/v1/jobs/{job_id}/logs", params={"follow": "true"}) as response:
                self.status[i] = response.status_code
                async for line in response.aiter_lines():
                    self.lines[i].append(line)
            self.outcome[i] = "ended"
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion that reads it
            self.outcome[i] = repr(exc)

    def close(self) -> None:
        if not self.thread.is_alive():
            return
        for future in self.futures:
            future.cancel()
        self._call(self.client.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def ticks(self, i: int) -> list[int]:
        return [int(m[1]) for line in self.lines[i] if (m := TICK.search(line))]


@pytest.fixture
def followers():
    made: list[Followers] = []

    def open_followers(*args) -> Followers:
        made.append(Followers(*args))
        return made[-1]

    yield open_followers
    for f in made:
        f.close()


def test_100_followers_on_one_token_do_not_stall_the_api(stack, services, followers):
    job_id = start_job(stack, services, "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.5; done", "tick-1")
    crowd = followers(stack.url, TOKEN_READ, job_id, LIMIT)
    wait_until(lambda: follower_stats(stack)["token_followers"] == LIMIT, f"{LIMIT} follow streams are open")
    assert follower_stats(stack)["followed_jobs"] == 1, "one shared tailer for the job"

    with stack.client(token=TOKEN_READ, timeout=5) as reader:  # a stalled API would time out here
        assert reader.get("/healthz").json() == {"status": "ok"}
        assert reader.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
        assert any(r["id"] == job_id for r in reader.get("/v1/jobs", params={"status": "running"}).json())
        baseline = max(int(m[1]) for line in reader.get(f"/v1/jobs/{job_id}/logs").text.splitlines()
                       if (m := TICK.search(line)))
        refused = reader.get(f"/v1/jobs/{job_id}/logs", params={"follow": "true"})
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"] == "too_many_followers"
        assert "api.max_followers_per_token" in refused.json()["message"] and str(LIMIT) in refused.json()["message"]
    with stack.client(token=TOKEN_ALL, timeout=5) as other, \
            other.stream("GET", f"/v1/jobs/{job_id}/logs", params={"follow": "true"}) as stream:
        assert stream.status_code == 200, "the limit is per token"
        assert next(stream.iter_lines())

    wait_until(lambda: all(crowd.ticks(i) and crowd.ticks(i)[-1] > baseline + 2 for i in range(LIMIT)),
               "every follower receives lines printed after it connected")
    cancel_and_wait(stack, job_id)
    wait_until(lambda: all(crowd.outcome), "every follow stream ends with the job")
    assert crowd.outcome == ["ended"] * LIMIT and crowd.status == [200] * LIMIT
    for i in range(LIMIT):
        ticks = crowd.ticks(i)
        assert ticks == list(range(1, len(ticks) + 1)), "each follower gets every line once, in order"
        assert "cancel" in crowd.lines[i][-1], crowd.lines[i][-3:]
    wait_until(lambda: follower_stats(stack) == {"followers": 0, "followed_jobs": 0, "replaying": 0, "token_followers": 0},
               "the server forgets followers whose job ended")


def test_followers_of_a_quiet_job_leave_when_their_clients_go(stack, services, followers):
    """The case that stalled the API: followers of a job printing nothing, then gone."""
    job_id = start_job(stack, services, "echo quiet-start; sleep 600", "quiet-start")
    crowd = followers(stack.url, TOKEN_READ, job_id, LIMIT)
    wait_until(lambda: follower_stats(stack)["token_followers"] == LIMIT, f"{LIMIT} follow streams are open")
    wait_until(lambda: all(any("quiet-start" in line for line in lines) for lines in crowd.lines),
               "each follower replays the log so far")
    crowd.close()
    wait_until(lambda: follower_stats(stack) == {"followers": 0, "followed_jobs": 0, "replaying": 0, "token_followers": 0},
               "followers leave with their clients", timeout=30)
    with stack.client(token=TOKEN_READ, timeout=5) as reader:
        assert reader.get("/healthz").status_code == 200
        assert reader.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
        with reader.stream("GET", f"/v1/jobs/{job_id}/logs", params={"follow": "true"}) as stream:
            assert stream.status_code == 200, "the token's slots came back"
    assert cancel_and_wait(stack, job_id)["status"] == "cancelled"


# -- odd bodies: 4xx naming the problem, never a 500 ---------------------------------------------
def nested(depth: int, leaf: str = "1") -> str:
    return '{"a": ' * depth + leaf + "}" * depth


def github(stack: Stack, body: bytes, content_type: str = "application/json") -> httpx.Response:
    signature = "sha256=" + hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return httpx.post(f"{stack.url}/v1/webhooks/github", content=body, timeout=10, headers={
        "Content-Type": content_type, "X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": signature})


def github_push(**changes) -> dict:
    payload = {"ref": "refs/heads/main", "after": "a" * 40, "repository": {
        "full_name": "acme/app", "name": "app", "owner": {"login": "acme"}, "clone_url": "https://git.example.com/a.git",
        "default_branch": "main"}}
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = payload
        for key in parents:
            target = target[key]
        target[last] = value
    return payload


@pytest.mark.parametrize("body", [
    "[" * 10_000 + "]" * 10_000,
    nested(10_000),
    '{"tags": ["127.0.0.1:5000/a:1"], "labels": ' + nested(10_000, '"x"') + "}",
], ids=["arrays", "objects", "inside-a-field"])
def test_deeply_nested_job_bodies_are_422(stack, body):
    before = stack.job_count()
    with stack.client() as c:
        response = c.post("/v1/jobs", content=body.encode(), headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "body" and "nests" in response.json()["message"]
    assert stack.job_count() == before


def test_nesting_the_parser_can_read_is_422_naming_the_field(stack):
    body = '{"tags": ["127.0.0.1:5000/a:1"], "labels": ' + nested(500, '"x"') + "}"
    with stack.client() as c:
        response = c.post("/v1/jobs", content=body.encode(), headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["field"].startswith("labels"), response.text


def test_deeply_nested_webhook_payloads_are_400(stack):
    for body in (nested(10_000), "[" * 10_000):
        response = github(stack, body.encode())
        assert response.status_code == 400 and "nests" in response.json()["message"], response.text
        form = github(stack, urlencode({"payload": body}).encode(), "application/x-www-form-urlencoded")
        assert form.status_code == 400 and "nests" in form.json()["message"], form.text
    deep_gitlab = httpx.post(f"{stack.url}/v1/webhooks/gitlab", content=nested(10_000).encode(), timeout=10, headers={
        "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN, "Content-Type": "application/json"})
    assert deep_gitlab.status_code == 400, deep_gitlab.text


@pytest.mark.parametrize("field, value, words", [
    ("ref", True, "'ref' is a boolean"),
    ("ref", 5, "'ref' is a number"),
    ("after", ["a" * 40], "'after' is an array"),
    ("after", {"sha": "a" * 40}, "'after' is an object"),
    ("repository__full_name", 7, "'repository.full_name' is a number"),
    ("repository__name", False, "'repository.name' is a boolean"),
    ("repository__owner__login", 12, "'repository.owner.login' is a number"),
    ("repository__clone_url", {"href": "x"}, "'repository.clone_url' is an object"),
    ("repository__default_branch", 1.5, "'repository.default_branch' is a number"),
    ("repository", "acme/app", "no 'repository.full_name'"),
])
def test_signed_github_pushes_with_fields_of_the_wrong_type_are_400(stack, field, value, words):
    response = github(stack, json.dumps(github_push(**{field: value})).encode())
    assert response.status_code == 400, response.text
    assert words in response.json()["message"]


def test_signed_gitlab_push_with_fields_of_the_wrong_type_is_400(stack):
    payload = {"object_kind": "push", "ref": "refs/heads/main", "after": "a" * 40,
               "project": {"path_with_namespace": ["acme", "app"]}}
    response = httpx.post(f"{stack.url}/v1/webhooks/gitlab", json=payload, timeout=10, headers={
        "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN})
    assert response.status_code == 400 and "'project.path_with_namespace' is an array" in response.json()["message"]


def test_healthz_is_503_json_when_redis_is_down(tmp_path):
    """A server whose Redis is a closed port: /healthz and the job endpoints say so, quickly."""
    config = tmp_path / "runner.yml"
    config.write_text(json.dumps({"redis_url": f"redis://127.0.0.1:{free_port()}/0",
                                  "api": {"tokens": TOKENS}, "worker": {"namespace": f"test-{uuid.uuid4().hex[:8]}"}}))
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([RUNNER, "serve", "--host", "127.0.0.1", "--port", str(port)],
                            env={**os.environ, "RUNNER_CONFIG": str(config)}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        def health():
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
            except httpx.TransportError:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
                return None

        response = wait_until(health, "runner serve answers", timeout=30)
        assert response.status_code == 503
        assert response.json() == {"error": "unavailable", "message": "the job store (Redis) is unreachable; retry later"}
        logs = httpx.get(f"http://127.0.0.1:{port}/v1/jobs/x/logs", headers={"Authorization": f"Bearer {TOKEN_READ}"},
                         params={"follow": "true"}, timeout=30)
        assert logs.status_code == 503 and logs.json()["error"] == "unavailable"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)

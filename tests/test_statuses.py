"""Commit statuses on GitHub, GitLab and Gitea, posted by real `runner worker` processes to
local HTTP servers that answer like each host's status API (its paths, auth header, states,
error bodies; GitLab's refusal to move a status to the state it has), through 2xx, 401, 404,
422, 5xx and slow answers. The fake executor (tests/plugins/fake) stands in for builds where a
real one adds nothing; the "done when" cases at the end build for real from signed pushes."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from runner.config.sections import ApiToken
from runner.core.jobs import BuildRequest, JobRecord, Status
from runner.entry.control import cancel_job
from runner.entry.serve_metrics import FleetCollector
from runner.entry.submission import submit
from runner.store.outbox import Outbox
from runner.worker.admission import Origin
from runner.worker.notify.statuses import describe, failed_step
from tests.conftest import RunnerHarness, cleanup_namespace, new_harness
from tests.support import every_value

TOKENS = {"github": "ghp_" + uuid.uuid4().hex, "gitlab": "glpat-" + uuid.uuid4().hex, "gitea": "gt_" + uuid.uuid4().hex}
REPOS = {"github": "acme/app", "gitlab": "platform/app", "gitea": "tools/app"}
PUBLIC_URL = "http://ci.runner.test:8080"
#: jobs submitted in process come in as the API takes them from a token with the status right
STATUS_TOKEN = Origin.api(ApiToken(name="ci", token="ci-" + uuid.uuid4().hex, rights=["submit", "status"]))
STATES = {"github": {"error", "failure", "pending", "success"}, "gitlab": {"pending", "running", "success", "failed", "canceled"},
          "gitea": {"pending", "success", "error", "failure", "warning"}}
GITLAB_FINAL = {"success", "failed", "canceled"}


@dataclass
class Post:
    at: float  # monotonic
    path: str
    headers: dict[str, str]
    body: dict
    answer: int = 0
    wall: float = field(default_factory=time.time)


@dataclass
class FakeHost:
    """A git host's commit status API on loopback, for one kind of host (github, gitlab, gitea).

    POSTs are recorded when they arrive; then `script` (status codes, used in turn) decides the
    answer: a 2xx applies the status, as does a real host, `delay` seconds before answering."""

    kind: str
    token: str
    repos: set[str]
    script: list[int] = field(default_factory=list)
    delay: float = 0.0
    down: bool = False  # every request gets a 503, applying nothing (counted in `refused`)
    refused: int = 0
    retry_after: str | None = None
    posts: list[Post] = field(default_factory=list)
    gets: list[str] = field(default_factory=list)
    statuses: dict[str, list[dict]] = field(default_factory=dict)  # sha -> applied, oldest first
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrived: threading.Event = field(default_factory=threading.Event)

    def authorized(self, headers) -> bool:
        given = {"github": headers.get("Authorization"), "gitlab": headers.get("PRIVATE-TOKEN"),
                 "gitea": headers.get("Authorization")}[self.kind]
        return given == {"github": f"Bearer {self.token}", "gitlab": self.token, "gitea": f"token {self.token}"}[self.kind]

    def route(self, path: str) -> tuple[str, str, str] | None:
        """(repository, sha, what) for a status path of this host, or None."""
        patterns = {"github": [(r"^/repos/([^/]+/[^/]+)/statuses/([0-9a-f]+)$", "post"),
                               (r"^/repos/([^/]+/[^/]+)/commits/([0-9a-f]+)/statuses$", "list")],
                    "gitea": [(r"^/api/v1/repos/([^/]+/[^/]+)/statuses/([0-9a-f]+)$", "post")],
                    "gitlab": [(r"^/api/v4/projects/([^/]+)/statuses/([0-9a-f]+)$", "post"),
                               (r"^/api/v4/projects/([^/]+)/repository/commits/([0-9a-f]+)/statuses$", "list")]}[self.kind]
        for pattern, what in patterns:
            if match := re.match(pattern, path):
                repo = match[1].replace("%2F", "/")
                return ("platform/app" if repo == "15" else repo), match[2], what
        return None

    def states(self, sha: str) -> list[str]:
        key = "status" if self.kind == "gitlab" else "state"
        return [s[key] for s in self.statuses.get(sha, [])]

    def applied(self, sha: str) -> list[dict]:
        return list(self.statuses.get(sha, []))

    def wait_for(self, sha: str, state: str, timeout: float = 60) -> list[str]:
        deadline = time.monotonic() + timeout
        while state not in self.states(sha):
            assert time.monotonic() < deadline, f"{self.kind} never got {state} for {sha[:7]}: {self.states(sha)}"
            time.sleep(0.05)
        return self.states(sha)


def creator(kind: str, login: str = "ci-bot") -> dict:
    """Who set a status, as the hosts list it (GitHub's user object: most of a listing's bytes)."""
    api = {"github": "https://api.github.com", "gitea": "https://git.example.com/api/v1",
           "gitlab": "https://gitlab.example.com/api/v4"}[kind]
    user = {"login": login, "id": 49699333, "node_id": "MDM6Qm90NDk2OTkzMzM=", "type": "Bot", "site_admin": False,
            "avatar_url": "https://avatars.githubusercontent.com/u/49699333?v=4", "gravatar_id": "",
            "url": f"{api}/users/{login}", "html_url": f"https://github.com/{login}"}
    for part in ("followers", "following{/other_user}", "gists{/gist_id}", "starred{/owner}{/repo}", "subscriptions",
                 "organizations", "repos", "events{/privacy}", "received_events"):
        user[part.partition("{")[0] + "_url"] = f"{api}/users/{login}/{part}"
    return user


def serve(host: FakeHost) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def answer(self, code: int, data: Any, headers: dict | None = None) -> None:
            raw = json.dumps(data).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            try:
                self.wfile.write(raw)
            except OSError:  # the client gave up (a slow answer past its timeout)
                pass

        def unavailable(self) -> bool:
            if not host.down:
                return False
            with host.lock:
                host.refused += 1
            self.answer(503, {"message": "Service Unavailable"})
            return True

        def do_GET(self):
            if self.unavailable():
                return None
            path, _, query = self.path.partition("?")
            host.gets.append(self.path)
            route = host.route(path)
            if not host.authorized(self.headers):
                return self.answer(401, {"message": "Bad credentials"})
            if route is None or route[0] not in host.repos:
                return self.answer(404, {"message": "Not Found"})
            _, sha, _ = route
            listed = list(reversed(host.statuses.get(sha, [])))  # newest first, as the hosts list them
            if host.kind == "gitlab":
                params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
                latest = {}
                for status in listed:
                    latest.setdefault(status["name"], status)  # without all=true: the newest per name
                listed = [s for s in latest.values() if "name" not in params or s["name"] == httpx.QueryParams(query)["name"]]
            return self.answer(200, listed)

        def do_POST(self):
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.unavailable():
                return None
            path = self.path.partition("?")[0]
            try:
                body = json.loads(raw)
            except ValueError:
                body = {}
            post = Post(time.monotonic(), path, dict(self.headers), body)
            with host.lock:
                host.posts.append(post)
            host.arrived.set()
            if not host.authorized(self.headers):
                post.answer = 401
                return self.answer(401, {"message": "Bad credentials" if host.kind == "github" else "401 Unauthorized"})
            route = host.route(path)
            if route is None or route[0] not in host.repos or route[2] != "post":
                post.answer = 404
                return self.answer(404, {"message": "Not Found" if host.kind != "gitlab" else "404 Project Not Found"})
            with host.lock:
                scripted = host.script.pop(0) if host.script else 201
            if scripted >= 300:
                post.answer = scripted
                headers = {"Retry-After": host.retry_after} if host.retry_after else {}
                return self.answer(scripted, {"message": f"scripted {scripted}"}, headers)
            _, sha, _ = route
            key, context_key = ("status", "name") if host.kind == "gitlab" else ("state", "context")
            state = body.get("state")
            if state not in STATES[host.kind]:
                post.answer = 422 if host.kind != "gitlab" else 400
                return self.answer(post.answer, {"message": "Validation Failed: state"})
            with host.lock:
                mine = [s for s in host.statuses.get(sha, []) if s[context_key] == body.get(context_key)]
                if host.kind == "gitlab" and mine and (mine[-1][key] == state or mine[-1][key] in GITLAB_FINAL):
                    post.answer = 400
                    verb = {"pending": "enqueue", "running": "run", "success": "success", "failed": "drop",
                            "canceled": "cancel"}[state]
                    return self.answer(400, {"message": f"Cannot transition status via :{verb} from :{mine[-1][key]} "
                                                        f"(Reasons: Status cannot transition via \"{verb}\")"})
                status = {"id": sum(len(v) for v in host.statuses.values()) + 1, key: state, context_key: body.get(context_key),
                          "description": body.get("description"), "target_url": body.get("target_url"), "ref": body.get("ref"),
                          "author" if host.kind == "gitlab" else "creator": creator(host.kind)}
                host.statuses.setdefault(sha, []).append(status)
            time.sleep(host.delay)  # applied, then a slow answer (the attempt may die meanwhile)
            post.answer = 201
            self.answer(201, status)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host.url = f"http://127.0.0.1:{server.server_address[1]}"
    return server


@pytest.fixture(scope="module")
def hosts():
    made = {kind: FakeHost(kind, TOKENS[kind], {REPOS[kind]}) for kind in TOKENS}
    servers = [serve(host) for host in made.values()]
    yield made
    for server in servers:
        server.shutdown()
        server.server_close()


def statuses_config(hosts: dict[str, FakeHost], **policy) -> dict:
    return {"backoff": 0.2, "max_backoff": 1.0, "attempts": 4, "deadline": 60, "timeout": 2.0, **policy,
            "github": {"api_url": hosts["github"].url, "token": TOKENS["github"], "context": "ci/{executor}"},
            "gitlab": {"api_url": hosts["gitlab"].url, "token": TOKENS["gitlab"]},
            "gitea": {"api_url": hosts["gitea"].url, "token": TOKENS["gitea"]}}


def statuses_base(hosts: dict[str, FakeHost]) -> dict:
    """The config of these tests' workers, over the harness's."""
    return {"default_executor": "fake", "executors": {"fake": {"enabled": True}}, "statuses": statuses_config(hosts),
            "api": {"public_url": PUBLIC_URL}, "worker": {"recover_interval": 1.0}, "deliveries": {"recover_after": 2.0}}


def statuses_harness(services, tmp_path_factory, hosts, **overrides) -> RunnerHarness:
    return new_harness(services, tmp_path_factory, **{**statuses_base(hosts), **overrides})


@pytest.fixture(scope="module")
def h(services, tmp_path_factory, hosts):
    # `runner submit` writes to Redis and names a source (test_submit_takes_the_source_on_the_command_line):
    # the operator here trusts what reaches the queue
    harness = statuses_harness(services, tmp_path_factory, hosts,
                               statuses={**statuses_config(hosts), "trust_queue_sources": True})
    harness.worker_proc = harness.start_worker()
    yield harness
    harness.stop_worker(harness.worker_proc)
    cleanup_namespace(harness)


def new_sha() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex[:8]


def source(kind: str, sha: str, **extra) -> dict:
    data = {"host": kind, "repository": REPOS[kind], "sha": sha, "ref": "refs/heads/main", **extra}
    if kind == "gitlab":
        data["project_id"] = 15
    return data


def queue_job(h: RunnerHarness, kind: str, sha: str | None = None, build_args: dict | None = None, **fields) -> BuildRequest:
    """Submit a fake-executor job from `kind`'s commit `sha`, as the API does for a token with the status right."""
    sha = sha or new_sha()
    request = BuildRequest(tags=[f"{h.registry()}/statuses/app:1"], build_args=build_args or {}, source=source(kind, sha),
                           **fields)
    store = h.store
    writer = store.context_writer(request.id, 10**6)
    writer.write(empty_context())
    writer.close()
    submit(request, h.settings, store, STATUS_TOKEN)
    return request


def empty_context() -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(b"FROM scratch\n")
        tar.addfile(info, io.BytesIO(b"FROM scratch\n"))
    return buffer.getvalue()


def wait_finished(h: RunnerHarness, job_id: str, timeout: float = 60) -> JobRecord:
    deadline = time.monotonic() + timeout
    while True:
        record = h.store.get(job_id)
        if record is not None and record.finished:
            return record
        assert time.monotonic() < deadline, f"job {job_id} did not finish"
        time.sleep(0.05)


def wait_delivered(h: RunnerHarness, job_id: str, timeout: float = 60) -> dict[str, dict]:
    """Every delivery of the job, once none is open any more."""
    outbox = Outbox.for_store(h.store)
    deadline = time.monotonic() + timeout
    while True:
        deliveries = outbox.of_job(job_id)
        if deliveries and all(d.get("state") != "open" for d in deliveries.values()):
            return deliveries
        assert time.monotonic() < deadline, f"deliveries of {job_id} still open: {deliveries}"
        time.sleep(0.05)


def superseded(deliveries: dict[str, dict]) -> set[str]:
    """The moments of a job's statuses the outbox superseded: a newer state of the job reached
    the host first (under load an interim POST may time out and wait for its retry while the
    end is delivered), so by design it is never sent after. The final one never is."""
    dropped = {d["moment"] for d in deliveries.values() if d.get("kind") == "status" and d.get("state") == "superseded"}
    assert "finished" not in dropped, deliveries
    return dropped


def not_superseded(deliveries: dict[str, dict], states: list[str]) -> list[str]:
    """`states` (the job's queued, started and finished moments, in order) less those superseded."""
    dropped = superseded(deliveries)
    return [state for state, moment in zip(states, ("queued", "started", "finished"), strict=True) if moment not in dropped]


# -- what each host is told ---------------------------------------------------------------------------
EXPECTED = {
    # (host, outcome): the states the host holds for the sha, in order
    ("github", "success"): ["pending", "pending", "success"], ("github", "failure"): ["pending", "pending", "failure"],
    ("github", "cancel"): ["pending", "pending", "error"], ("github", "timeout"): ["pending", "pending", "error"],
    ("gitlab", "success"): ["pending", "running", "success"], ("gitlab", "failure"): ["pending", "running", "failed"],
    ("gitlab", "cancel"): ["pending", "running", "canceled"], ("gitlab", "timeout"): ["pending", "running", "failed"],
    ("gitea", "success"): ["pending", "pending", "success"], ("gitea", "failure"): ["pending", "pending", "failure"],
    ("gitea", "cancel"): ["pending", "pending", "error"], ("gitea", "timeout"): ["pending", "pending", "error"],
}
DESCRIPTIONS = {"success": "built and pushed 1 tag in ", "failure": "step 1/1 failed: RUN fake", "cancel": "cancelled",
                "timeout": "timed out after 2 s"}


def run_outcome(h: RunnerHarness, kind: str, outcome: str) -> tuple[BuildRequest, JobRecord]:
    args = {"success": {}, "failure": {"FAKE_EXIT": "2"}, "cancel": {"FAKE_SLEEP": "30"}, "timeout": {"FAKE_SLEEP": "30"}}[outcome]
    request = queue_job(h, kind, build_args=args, timeout=2 if outcome == "timeout" else None)
    if outcome == "cancel":
        deadline = time.monotonic() + 30
        while h.store.get(request.id).status is not Status.running:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        cancel_job(h.store, request.id)
    return request, wait_finished(h, request.id)


@pytest.mark.parametrize("kind", ["github", "gitlab", "gitea"])
def test_each_host_gets_its_states_in_order_for_each_outcome(h, hosts, kind):
    host = hosts[kind]
    runs = {outcome: run_outcome(h, kind, outcome) for outcome in ("success", "failure", "cancel", "timeout")}
    for outcome, (request, record) in runs.items():
        sha = request.source.sha
        deliveries = wait_delivered(h, request.id)
        expected = not_superseded(deliveries, EXPECTED[(kind, outcome)])
        assert host.states(sha) == expected, (outcome, host.applied(sha))
        applied = host.applied(sha)
        dropped = superseded(deliveries)
        interim = [text for moment, text in (("queued", "queued (fake)"), ("started", "building")) if moment not in dropped]
        assert [a["description"] for a in applied[:-1]] == interim
        assert applied[-1]["description"].startswith(DESCRIPTIONS[outcome]), applied[-1]
        context = "ci/fake" if kind == "github" else "ci-build-runner/fake"
        assert {s["context" if kind != "gitlab" else "name"] for s in applied} == {context}
        assert {s["target_url"] for s in applied} == {f"{PUBLIC_URL}/jobs/{record.id}"}
        if kind == "gitlab":
            assert {s["ref"] for s in applied} == {"main"}, "GitLab's ref is the branch name"
        posts = [p for p in host.posts if sha in p.path]
        assert [p.answer for p in posts] == [201] * len(expected), "each state posted once"
        assert all(p.at <= q.at for p, q in zip(posts, posts[1:], strict=False))


# -- one delivery at a time, in this process: retries, backoff, give-up, order --------------------------
class Steps:
    """A Deliverer in this process (real Redis, real HTTP to the fake hosts), whose task messages
    are taken off the deliveries queue and run one by one, as a worker's task would."""

    def __init__(self, redis_url: str, hosts: dict[str, FakeHost], deliveries: dict | None = None, **policy):
        from runner.config.settings import Settings
        from runner.worker.notify.deliveries import Deliverer

        data = Settings.model_validate({"redis_url": redis_url, **statuses_base(hosts)}).model_dump(mode="python")
        data["statuses"] = statuses_config(hosts, **policy)
        data["deliveries"].update(deliveries or {})
        data["worker"]["namespace"] = f"steps-{uuid.uuid4().hex[:8]}"  # no worker takes these
        self.settings = Settings.model_validate(data)
        from runner.store.jobstore import JobStore

        self.store = JobStore.from_settings(self.settings)
        self.deliverer = Deliverer(self.settings, self.store, "steps-1")
        self.outbox = self.deliverer.outbox

    def record(self, kind: str, status: Status = Status.succeeded, **fields) -> JobRecord:
        request = BuildRequest(tags=["127.0.0.1:5000/steps/app:1"], source=source(kind, new_sha()), executor="fake")
        record = JobRecord(id=request.id, request=request, executor="fake", queue="q", status=status, **fields)
        self.store.create(record)
        return record

    def messages(self) -> list[tuple[str, str]]:
        """Take every task message off the queue: (delivery id, ticket) each."""
        import base64

        taken = []
        while (raw := self.store.r.rpop(self.outbox.queue)) is not None:
            envelope = json.loads(raw)
            assert envelope["headers"]["task"] == "runner.deliver"
            taken.append(tuple(json.loads(base64.b64decode(envelope["body"]))[0]))
        return taken

    def run_all(self) -> list[str]:
        return [self.deliverer.run(delivery_id, ticket) for delivery_id, ticket in self.messages()]

    def due(self, delivery_id: str) -> float:
        return self.store.r.zscore(self.outbox.outbox_key, delivery_id) - time.time()

    def cleanup(self) -> None:
        for key in self.store.r.scan_iter(f"{self.store.ns}*", count=1000):
            self.store.r.delete(key)


@pytest.fixture
def steps(redis_url, hosts):
    made = []

    def make(deliveries: dict | None = None, **policy) -> Steps:
        s = Steps(redis_url, hosts, deliveries, **policy)
        made.append(s)
        return s

    yield make
    for s in made:
        s.cleanup()
    for host in hosts.values():
        host.script.clear()
        host.delay, host.retry_after, host.down = 0.0, None, False


def test_retries_with_exponential_backoff_and_jitter_until_accepted(steps, hosts):
    s = steps(backoff=0.4, max_backoff=10, attempts=5)
    host = hosts["github"]
    host.script[:] = [500, 502, 503]
    record = s.record("github")
    s.outbox.add(record.id, "status", "finished", "finished")
    waits = []
    for attempt in range(1, 4):
        assert s.run_all() == ["retry"], attempt
        waits.append(s.due(f"{record.id}:status:finished"))
        time.sleep(max(waits[-1], 0))
        assert s.outbox.send_due() == 1
    assert s.run_all() == ["delivered"]
    for n, wait in enumerate(waits):
        full = 0.4 * 2**n
        assert full / 2 - 0.1 <= wait <= full + 0.05, (n, waits)  # half of each delay is jitter
    assert len({round(w, 3) for w in waits}) == 3
    posts = [p for p in host.posts if record.request.source.sha in p.path]
    assert [p.answer for p in posts] == [500, 502, 503, 201]
    assert host.states(record.request.source.sha) == ["success"]
    assert sum(1 for g in host.gets if record.request.source.sha in g) == 3, "each retry first asks whether it got there"


def test_an_interim_state_gives_up_after_the_last_attempt_logged_and_counted_and_the_job_is_unchanged(steps, hosts):
    s = steps(backoff=0.05, max_backoff=0.1, attempts=3)
    hosts["gitlab"].script[:] = [503] * 10
    record = s.record("gitlab")
    s.outbox.add(record.id, "status", "queued", "queued")
    outcomes = []
    for _ in range(3):
        outcomes += s.run_all()
        time.sleep(0.15)
        s.outbox.send_due()
    assert outcomes == ["retry", "retry", "gave_up"]
    assert s.messages() == []
    delivery = s.outbox.get(f"{record.id}:status:queued")
    assert delivery["state"] == "failed" and "failed 3 times" in delivery["last"] and "HTTP 503" in delivery["last"]
    assert s.outbox.gave_up() == {"status.gitlab": 1}
    assert s.store.get(record.id) == record
    registry = CollectorRegistry()  # runner serve's /metrics exports the count
    registry.register(FleetCollector(s.store, s.settings))
    assert 'runner_deliveries_gave_up_total{kind="status.gitlab"} 1.0' in generate_latest(registry).decode()


@pytest.mark.parametrize("problem, answer, words", [
    ("token", 401, "HTTP 401"), ("repository", 404, "HTTP 404"), ("scripted", 422, "HTTP 422")])
def test_a_refusal_is_final_at_once(steps, hosts, problem, answer, words):
    s = steps()
    host = hosts["gitea"]
    if problem == "token":
        s.settings.statuses.gitea.token = type(s.settings.statuses.gitea.token)("wrong-token")
    record = s.record("gitea")
    if problem == "repository":
        record = JobRecord(**{**record.model_dump(), "request": record.request.model_copy(
            update={"source": record.request.source.model_copy(update={"repository": "tools/other"})})})
        s.store.r.set(s.store.job_key(record.id), record.model_dump_json())
    if problem == "scripted":
        host.script[:] = [422]
    s.outbox.add(record.id, "status", "finished", "finished")
    assert s.run_all() == ["gave_up"]
    posts = [p for p in host.posts if record.request.source.sha in p.path]
    assert [p.answer for p in posts] == [answer]
    delivery = s.outbox.get(f"{record.id}:status:finished")
    assert delivery["state"] == "failed" and words in delivery["last"]
    assert TOKENS["gitea"] not in json.dumps(delivery) and "wrong-token" not in json.dumps(delivery)
    assert s.outbox.gave_up() == {"status.gitea": 1}


def test_retry_after_is_honoured(steps, hosts):
    s = steps(backoff=0.1, max_backoff=5)
    hosts["github"].script[:] = [429]
    hosts["github"].retry_after = "3"
    record = s.record("github")
    s.outbox.add(record.id, "status", "finished", "finished")
    assert s.run_all() == ["retry"]
    assert 2.8 <= s.due(f"{record.id}:status:finished") <= 3.05


def test_a_slow_host_times_out_and_the_retry_finds_the_status_there(steps, hosts):
    """The host applied the status but answered after our timeout: the next attempt asks first
    and does not post it again."""
    s = steps(timeout=0.5, backoff=0.1, max_backoff=0.2)
    host = hosts["gitlab"]
    host.delay = 1.5
    record = s.record("gitlab")
    s.outbox.add(record.id, "status", "finished", "finished")
    assert s.run_all() == ["retry"]
    assert s.outbox.get(f"{record.id}:status:finished")["last"] == "no answer within 0.5s"
    host.delay = 0.0
    time.sleep(0.3)
    s.outbox.send_due()
    assert s.run_all() == ["delivered"]
    sha = record.request.source.sha
    assert len([p for p in host.posts if sha in p.path]) == 1 and host.states(sha) == ["success"]


def test_the_retry_reads_a_listing_of_many_statuses_whole(steps, hosts):
    """A commit that other CI systems set statuses on too: the listing is several KiB (GitHub's
    user objects), more than an error answer is read, and still the retry finds ours there."""
    s = steps(timeout=0.5, backoff=0.1, max_backoff=0.2)
    host = hosts["github"]
    record = s.record("github")
    sha = record.request.source.sha
    host.statuses[sha] = [{"id": 10_000 + n, "state": "success", "context": f"other-ci/{n}", "description": "ok",
                           "target_url": None, "creator": creator("github", f"other-{n}")} for n in range(6)]
    host.delay = 1.5
    s.outbox.add(record.id, "status", "finished", "finished")
    assert s.run_all() == ["retry"]
    host.delay = 0.0
    time.sleep(0.3)
    s.outbox.send_due()
    assert s.run_all() == ["delivered"]
    assert len(json.dumps(host.statuses[sha])) > 6 * 1024
    assert len([p for p in host.posts if sha in p.path]) == 1, "posted once: the listing showed it"


def test_a_late_pending_never_overwrites_success(steps, hosts):
    """pending fails and waits for its retry; running and success get there first; the pending's
    retry is then dropped, never posted."""
    s = steps(backoff=0.3, max_backoff=0.3)
    host = hosts["gitlab"]
    host.script[:] = [503]
    record = s.record("gitlab", started_at=None)
    s.outbox.add(record.id, "status", "queued", "queued")
    assert s.run_all() == ["retry"]
    s.outbox.add(record.id, "status", "started-1", "started", {"attempt": 1})
    s.outbox.add(record.id, "status", "finished", "finished")
    assert s.run_all() == ["delivered", "delivered"]
    time.sleep(0.35)
    s.outbox.send_due()
    assert s.run_all() == ["superseded"]
    sha = record.request.source.sha
    assert host.states(sha) == ["running", "success"]
    assert [p.body["state"] for p in host.posts if sha in p.path] == ["pending", "running", "success"]


def test_a_newer_state_waits_for_an_older_one_not_yet_tried(steps, hosts):
    s = steps()
    host = hosts["github"]
    record = s.record("github")
    s.outbox.add(record.id, "status", "queued", "queued")
    s.outbox.add(record.id, "status", "finished", "finished")
    queued, finished = s.messages()
    assert s.deliverer.run(*finished) == "wait"
    assert s.outbox.send_due() == 0, "postponed until the older one is done"
    assert s.deliverer.run(*queued) == "delivered"
    assert s.outbox.send_due() == 1, "and sent again the moment it is"
    assert s.run_all() == ["delivered"]
    assert host.states(record.request.source.sha) == ["pending", "success"]


# -- a host that is down: its circuit, and final states kept until it is back ---------------------------
CIRCUIT = {"circuit_failures": 3, "circuit_backoff": 0.2, "circuit_max_backoff": 0.4}


def drive(s: Steps, until, timeout: float = 60) -> None:
    """Run what a worker runs (the scheduler's look, then each task message) until `until()`."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "never got there"
        s.deliverer.circuits.tick(s.deliverer.lock_seconds)
        s.outbox.send_due()
        s.run_all()
        time.sleep(0.02)


def test_a_host_down_past_the_retry_budget_gets_one_probe_per_step_and_every_final_state_once_back(steps, hosts):
    """GitHub down longer than an interim state's budget (3 attempts, 1 s deadline here): 20 jobs'
    queued and final statuses. Three failed requests open the host's circuit; from then on one
    probe per backoff step reaches the host, not one request per delivery; the queued statuses,
    each with a newer state behind it, are dropped; the final ones are kept, and when the host
    answers every commit gets its final state, once."""
    s = steps(backoff=0.05, max_backoff=0.2, attempts=3, deadline=1.0, deliveries=CIRCUIT)
    host = hosts["github"]
    host.down = True
    records = [s.record("github") for _ in range(20)]
    for record in records:
        s.outbox.add(record.id, "status", "queued", "queued")
        s.outbox.add(record.id, "status", "finished", "finished")
    down_since = time.monotonic()
    drive(s, lambda: time.monotonic() - down_since > 3.0)
    down_for = time.monotonic() - down_since
    origin = f"http://127.0.0.1:{host.url.rsplit(':', 1)[1]}"
    assert s.deliverer.circuits.state(origin)["state"] == "open"
    assert s.deliverer.circuits.open_by_label() == {host.url.removeprefix("http://"): 1}
    # 3 to open it, then at most one per step; a step is at least half the first backoff
    assert host.refused <= 3 + down_for / (CIRCUIT["circuit_backoff"] / 2) + 1, (host.refused, down_for)
    assert host.refused < len(records), "not one request per delivery"
    host.down = False
    drive(s, lambda: all(d.get("state") != "open" for r in records for d in s.outbox.of_job(r.id).values()))
    for record in records:
        sha = record.request.source.sha
        assert host.states(sha) == ["success"], host.applied(sha)
        assert [p.body["state"] for p in host.posts if sha in p.path] == ["success"], "each posted once"
        deliveries = s.outbox.of_job(record.id)
        assert deliveries[f"{record.id}:status:finished"]["state"] == "delivered"
        assert deliveries[f"{record.id}:status:queued"]["state"] == "superseded"
    assert s.outbox.gave_up() == {}
    assert s.deliverer.circuits.open_by_label() == {} and s.deliverer.circuits.parked(origin) == []


def test_one_probe_per_step_for_the_whole_fleet(steps, hosts):
    """Two workers' schedulers look at the same open circuit when its step is due: one probe."""
    from runner.worker.notify.deliveries import Deliverer

    s = steps(deliveries=CIRCUIT)
    other = Deliverer(s.settings, s.store, "steps-2")
    hosts["gitea"].down = True
    records = [s.record("gitea") for _ in range(6)]
    for record in records:
        s.outbox.add(record.id, "status", "finished", "finished")
    assert s.run_all() == ["retry", "retry", "parked", "parked", "parked", "parked"]
    origin = f"http://127.0.0.1:{hosts['gitea'].url.rsplit(':', 1)[1]}"
    time.sleep(max(float(s.deliverer.circuits.state(origin)["next_probe"]) - time.time(), 0) + 0.05)
    released = s.deliverer.circuits.tick(s.deliverer.lock_seconds) + other.circuits.tick(other.lock_seconds)
    assert released == 1
    s.outbox.send_due()  # the probe, and the two retries now due, which find the circuit open
    assert set(s.run_all()) == {"parked"}, "the probe failed: it waits again, as do the others"
    assert hosts["gitea"].refused == 4, "3 to open the circuit, 1 probe"


def test_a_final_state_parked_past_its_final_deadline_gives_up_counted(steps, hosts):
    s = steps(final_deadline=1.0, deliveries={**CIRCUIT, "circuit_failures": 1, "circuit_backoff": 30})
    hosts["gitlab"].down = True
    record = s.record("gitlab")
    s.outbox.add(record.id, "status", "finished", "finished")
    assert s.run_all() == ["parked"]
    time.sleep(max(s.store.r.zscore(s.outbox.outbox_key, f"{record.id}:status:finished") - time.time(), 0) + 0.05)
    assert s.outbox.send_due() == 1, "looked at again at its give-up time, though the host never came back"
    assert s.run_all() == ["gave_up"]
    delivery = s.outbox.get(f"{record.id}:status:finished")
    assert delivery["state"] == "failed" and "past its final_deadline (1s)" in delivery["last"]
    assert s.outbox.gave_up() == {"status.gitlab": 1}
    assert hosts["gitlab"].refused == 1


def test_a_rate_limit_reset_holds_the_circuit_until_then(steps, hosts):
    s = steps(deliveries={**CIRCUIT, "circuit_failures": 1})
    host = hosts["github"]
    host.script[:] = [429]
    host.retry_after = "30"
    record = s.record("github")
    s.outbox.add(record.id, "status", "finished", "finished")
    assert s.run_all() == ["parked"]
    origin = f"http://127.0.0.1:{host.url.rsplit(':', 1)[1]}"
    assert float(s.deliverer.circuits.state(origin)["next_probe"]) - time.time() > 25, "the host said 30 s"
    assert s.deliverer.circuits.tick(s.deliverer.lock_seconds) == 0


def test_a_redelivered_message_is_harmless(steps, hosts):
    s = steps()
    record = s.record("gitea")
    s.outbox.add(record.id, "status", "finished", "finished")
    assert not s.outbox.add(record.id, "status", "finished", "finished"), "one delivery per job and state"
    (message,) = s.messages()
    assert s.deliverer.run(*message) == "delivered"
    assert s.deliverer.run(*message) == "done", "a copy of the message (kombu's restore, a resend) does nothing"
    assert s.deliverer.run(message[0], "an-old-ticket") == "done"
    assert hosts["gitea"].states(record.request.source.sha) == ["success"]


# -- the worker process: build slots, kill -9, secrets ------------------------------------------------
@pytest.fixture
def own_harness(services, tmp_path_factory, hosts):
    """A harness (own namespace and worker) with `overrides`; hosts are reset afterwards."""
    made = []

    def make(**overrides) -> RunnerHarness:
        harness = statuses_harness(services, tmp_path_factory, hosts, **overrides)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        if harness.worker_proc is not None:
            harness.stop_worker(harness.worker_proc)
        cleanup_namespace(harness)
    for host in hosts.values():
        host.script.clear()
        host.delay, host.retry_after, host.down = 0.0, None, False


def wait_until(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_deliveries_never_wait_for_a_build_slot_and_builds_never_take_theirs(own_harness, hosts):
    """One build slot, held by a long build: its "running" status, and the next job's "pending",
    still arrive at once, and the next job waits for the slot (the pool has 1 + 2 threads)."""
    h = own_harness(worker={"concurrency": 1, "recover_interval": 1.0})
    h.worker_proc = h.start_worker()
    host = hosts["gitlab"]
    first = queue_job(h, "gitlab", build_args={"FAKE_SLEEP": "60"})
    host.wait_for(first.source.sha, "running", timeout=30)
    second = queue_job(h, "gitlab")
    host.wait_for(second.source.sha, "pending", timeout=10)
    time.sleep(1.5)
    assert h.store.get(first.id).status is Status.running
    assert h.store.get(second.id).status is Status.queued, "the one build slot is taken"
    cancel_job(h.store, first.id)
    assert wait_finished(h, second.id).status is Status.succeeded
    wait_delivered(h, second.id)
    assert host.states(first.source.sha) == ["pending", "running", "canceled"]
    assert host.states(second.source.sha) == ["pending", "running", "success"]


def test_kill_9_mid_request_each_state_reaches_the_host_once(own_harness, hosts):
    """The host applies the success status and answers slowly; the worker is killed before it
    hears the answer. Another worker finds the delivery overdue (its lock lapsed), asks the
    host, sees the status there, and does not post it again."""
    h = own_harness(statuses=statuses_config(hosts, timeout=4.0), deliveries={"recover_after": 1.0})
    host = hosts["gitlab"]
    host.delay = 2.0
    h.worker_proc = h.start_worker()
    request = queue_job(h, "gitlab")
    sha = request.source.sha
    host.wait_for(sha, "success", timeout=60)
    h.stop_worker(h.worker_proc, signal.SIGKILL)
    assert Outbox.for_store(h.store).get(f"{request.id}:status:finished")["state"] == "open"
    host.delay = 0.0
    h.worker_proc = h.start_worker()
    deliveries = wait_delivered(h, request.id, timeout=90)
    assert deliveries[f"{request.id}:status:finished"]["state"] == "delivered"
    assert "earlier attempt" in deliveries[f"{request.id}:status:finished"]["last"]
    assert [p.body["state"] for p in host.posts if sha in p.path] == ["pending", "running", "success"]
    assert host.states(sha) == ["pending", "running", "success"]


def test_kill_9_while_a_status_waits_for_its_retry(own_harness, hosts):
    """The success status failed once and waits for its retry when the worker is killed: the
    next worker delivers it, once."""
    h = own_harness(statuses=statuses_config(hosts, backoff=4.0, max_backoff=4.0))
    host = hosts["github"]
    h.worker_proc = h.start_worker()
    request = queue_job(h, "github", build_args={"FAKE_SLEEP": "1"})
    sha = request.source.sha
    wait_until(lambda: host.states(sha) == ["pending", "pending"], "both pendings")
    host.script[:] = [503]
    wait_until(lambda: any(p.answer == 503 for p in host.posts if sha in p.path), "the refused success")
    h.stop_worker(h.worker_proc, signal.SIGKILL)
    h.worker_proc = h.start_worker()
    host.wait_for(sha, "success", timeout=60)
    wait_delivered(h, request.id)
    assert [(p.body["state"], p.answer) for p in host.posts if sha in p.path] == \
        [("pending", 201), ("pending", 201), ("success", 503), ("success", 201)]


def test_tokens_stay_out_of_logs_records_config_show_and_argv(h, hosts, tmp_path):
    runs = [run_outcome(h, kind, "success") for kind in TOKENS]
    for request, _ in runs:
        wait_delivered(h, request.id)
    store = h.store
    stored = every_value(store)
    assert runs[0][0].source.sha in stored  # the search sees the values (the record's JSON holds the sha)
    shown = h.cli("config", "show")
    assert shown.returncode == 0 and "statuses:" in shown.stdout
    argv = Path(f"/proc/{h.worker_proc.pid}/cmdline").read_bytes().decode(errors="replace")
    log = h.worker_proc.log_path.read_text()
    for token in TOKENS.values():
        for where, text in (("Redis", stored), ("config show", shown.stdout), ("argv", argv), ("worker log", log)):
            assert token not in text, where
    assert "delivered to" in log


def test_a_token_file_is_read_at_use(own_harness, hosts, tmp_path):
    token_file = tmp_path / "gitea-token"
    token_file.write_text(TOKENS["gitea"] + "\n")
    config = statuses_config(hosts)
    config["gitea"] = {"api_url": hosts["gitea"].url, "token_file": str(token_file)}
    h = own_harness(statuses=config)
    h.worker_proc = h.start_worker()
    first = queue_job(h, "gitea")
    wait_finished(h, first.id)
    first_deliveries = wait_delivered(h, first.id)
    rotated = "gt_rotated_" + uuid.uuid4().hex
    token_file.write_text(rotated)
    hosts["gitea"].token = rotated
    try:
        second = queue_job(h, "gitea")
        wait_finished(h, second.id)
        second_deliveries = wait_delivered(h, second.id)
    finally:
        hosts["gitea"].token = TOKENS["gitea"]
    everything = ["pending", "pending", "success"]
    assert hosts["gitea"].states(first.source.sha) == not_superseded(first_deliveries, everything)
    assert hosts["gitea"].states(second.source.sha) == not_superseded(second_deliveries, everything)
    assert rotated not in h.worker_proc.log_path.read_text()


def test_a_source_naming_another_api_gets_no_status_and_builds_anyway(h, hosts):
    sha = new_sha()
    request = BuildRequest(tags=[f"{h.registry()}/statuses/app:1"], executor="fake",
                           source=source("github", sha, api_url="http://127.0.0.9:1/api/v3"))
    why = h.settings.statuses.target(request.source)
    assert isinstance(why, str) and "names the API http://127.0.0.9:1/api/v3, not statuses.github.api_url" in why
    writer = h.store.context_writer(request.id, 10**6)
    writer.write(empty_context())
    writer.close()
    submit(request, h.settings, h.store, STATUS_TOKEN)
    assert wait_finished(h, request.id).status is Status.succeeded
    time.sleep(0.5)
    assert Outbox.for_store(h.store).of_job(request.id) == {}
    assert not [p for p in hosts["github"].posts if sha in p.path]


def test_submit_takes_the_source_on_the_command_line(h, hosts, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    sha = new_sha()
    result = h.cli("submit", str(tmp_path), "-t", f"{h.registry()}/statuses/cli:1", "--executor", "fake", "--detach",
                   "--source-host", "gitlab", "--source-repo", "platform/app", "--source-sha", sha, "--source-ref", "main",
                   "--source-project-id", "15")
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert h.store.get(job_id).request.source.model_dump(exclude_none=True) == {
        "host": "gitlab", "repository": "platform/app", "project_id": 15, "sha": sha, "ref": "main"}
    wait_finished(h, job_id)
    assert hosts["gitlab"].states(sha) == not_superseded(wait_delivered(h, job_id), ["pending", "running", "success"])
    bad = h.cli("submit", str(tmp_path), "-t", f"{h.registry()}/statuses/cli:1", "--executor", "fake", "--detach",
                "--source-host", "github", "--source-repo", "acme/app", "--source-sha", "not-a-sha")
    assert bad.returncode == 2 and "source.sha" in bad.stderr and "Traceback" not in bad.stderr
    missing = h.cli("submit", str(tmp_path), "-t", f"{h.registry()}/statuses/cli:1", "--detach", "--source-host", "github")
    assert missing.returncode == 2 and "source.repository" in missing.stderr


# -- pure parts: descriptions, the config's choice of target --------------------------------------------
@pytest.mark.parametrize("message, described", [
    ("build failed at step 4/7 (RUN make): The command '/bin/sh -c make' returned a non-zero code: 2", "step 4/7 failed: RUN make"),
    ('build failed at [builder 4/7] RUN make: process "/bin/sh -c make" did not complete successfully: exit code: 2',
     "step 4/7 failed: RUN make"),
    ('build failed at [2/3] RUN echo "a: b" && false: process "/bin/sh -c echo" did not complete successfully: exit code: 1',
     'step 2/3 failed: RUN echo "a: b" && false'),
    ("build failed at step (RUN false): error building at STEP", "step failed: RUN false"),
    ("build failed: no space left on device", None),
])
def test_the_failing_step_is_named(message, described):
    assert failed_step(message) == described


def test_descriptions_are_short():
    from datetime import UTC, datetime, timedelta

    from runner.core.jobs import JobError, PushedImage

    start = datetime(2026, 11, 30, tzinfo=UTC)
    request = BuildRequest(tags=["r.example/a:1", "r.example/a:2"])
    done = JobRecord(id="j", request=request, executor="buildah", queue="q", status=Status.succeeded, started_at=start,
                     finished_at=start + timedelta(seconds=41.2),
                     images=[PushedImage(ref="r.example/a:1", digest="sha256:1"), PushedImage(ref="r.example/a:2", digest="sha256:2")])
    assert describe("finished", done, {}) == "built and pushed 2 tags in 41 s"
    assert describe("queued", done, {}) == "queued (buildah)"
    assert describe("started", done, {"attempt": 2}) == "building (attempt 2)"
    long = done.model_copy(update={"status": Status.failed, "error": JobError(kind="build", message="build failed: " + "x" * 500)})
    assert len(describe("finished", long, {})) == 140
    timed = done.model_copy(update={"status": Status.timed_out, "error": JobError(kind="timeout", message="the job timed out after 600s")})
    assert describe("finished", timed, {}) == "timed out after 600 s"


def test_the_config_chooses_where_statuses_go(tmp_path):
    from runner.config.settings import Settings
    from runner.core.jobs import JobSource

    token_file = tmp_path / "t"
    token_file.write_text("from-file\n")
    cfg = Settings(statuses={
        "github": {"token": "host-token", "repositories": {"acme/special": {"context": "images/{repository}",
                                                                            "token_file": str(token_file)},
                                                           "acme/off": {"enabled": False}}},
        "gitea": {"token": "t"}}).statuses
    sha = "a" * 40
    special = cfg.target(JobSource(host="github", repository="Acme/Special", sha=sha))
    assert special.context == "images/{repository}" and special.token() == "from-file"
    assert special.api_url == "https://api.github.com"
    plain = cfg.target(JobSource(host="github", repository="acme/app", sha=sha, api_url="https://API.github.com/"))
    assert plain.token() == "host-token" and plain.context == "ci-build-runner/{executor}"
    assert "off" in cfg.target(JobSource(host="github", repository="acme/off", sha=sha))
    assert "api.example" in cfg.target(JobSource(host="github", repository="acme/app", sha=sha, api_url="https://api.example"))
    assert cfg.target(JobSource(host="gitea", repository="a/b", sha=sha)) == "statuses.gitea.api_url is not set"
    assert cfg.target(JobSource(host="gitlab", repository="g/p", sha=sha)) == "statuses.gitlab has no token"
    with pytest.raises(ValueError, match="target_url"):
        Settings(statuses={"github": {"target_url": "{public_url}/{secret}"}})


# -- done when: signed pushes build for real, and the host shows it ---------------------------------------
@pytest.fixture(scope="module")
def pushed(tmp_path_factory, services):
    """A repository with a commit that builds and one whose last step fails."""
    from tests.test_gitsource import commit_files, git

    path = tmp_path_factory.mktemp("statuses-repo") / "hello-app"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    base = services["RUNNER_DEV_BASE_IMAGE"]
    good = commit_files(path, {"app/Dockerfile": f"FROM {base}\nCOPY message.txt /message.txt\nRUN cat /message.txt\n",
                               "app/message.txt": "hello\n"}, "builds")
    bad = commit_files(path, {"app/Dockerfile": f"FROM {base}\nCOPY message.txt /message.txt\nRUN exit 3\n"}, "breaks")
    return path, good, bad


@pytest.fixture(scope="module")
def served(services, tmp_path_factory, hosts):
    """`runner serve` on a port chosen first, so api.public_url (the statuses' links) is its URL; a worker."""
    from tests.test_api import TOKENS as API_TOKENS
    from tests.test_gitsource import free_port
    from tests.test_webhooks import GITEA_SECRET, GITHUB_SECRET, GITLAB_TOKEN

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    reg = services["RUNNER_DEV_REGISTRY"]
    # reuse: false: each host's push of the one commit builds (else the 2nd and 3rd reuse the 1st's image)
    hooked = {"images": [f"{reg}/statuses-{{owner}}/{{repo}}:{{short_sha}}"], "context": "app", "executor": "socket",
              "branches": ["main"], "reuse": False}
    for kind, name in (("github", "acme/hello-app"), ("gitlab", "platform/hello-app"), ("gitea", "tools/hello-app")):
        hosts[kind].repos.add(name)
    harness = statuses_harness(
        services, tmp_path_factory, hosts, default_executor="socket", api={"tokens": API_TOKENS, "public_url": url},
        git={"allowed_schemes": ["file"]},
        webhooks={"github": {"secret": GITHUB_SECRET}, "gitlab": {"secret": GITLAB_TOKEN}, "gitea": {"secret": GITEA_SECRET},
                  "repositories": {name: hooked for name in ("acme/hello-app", "platform/hello-app", "tools/hello-app")}})
    harness.worker_proc = harness.start_worker()
    import subprocess

    from tests.conftest import RUNNER
    from tests.test_api import Stack, stop_stack

    log = (harness.workdir / "serve.log").open("w")
    proc = subprocess.Popen([RUNNER, "serve", "--host", "127.0.0.1", "--port", str(port)], env=harness.env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    stack = Stack(harness, url, proc)
    wait_until(lambda: _answers(f"{url}/healthz"), "runner serve did not come up", timeout=30)
    yield stack
    stop_stack(stack)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def push(stack, hosts, kind: str, repo_path: Path, commit: str) -> str:
    """A signed push of `commit` from `kind`, whose payload names the fake host as its server."""
    from tests.test_webhooks import fixture, gitea, github, gitlab

    host = hosts[kind]
    if kind == "github":
        payload = fixture("github-push.json")
        payload["after"] = payload["head_commit"]["id"] = payload["commits"][0]["id"] = commit
        payload["repository"]["clone_url"] = f"file://{repo_path}"
        payload["repository"]["statuses_url"] = f"{host.url}/repos/acme/hello-app/statuses/{{sha}}"  # as GitHub Enterprise sends it
        response = github(stack, payload)
    elif kind == "gitlab":
        payload = fixture("gitlab-push.json")
        payload["after"] = payload["checkout_sha"] = commit
        payload["project"]["git_http_url"] = payload["repository"]["git_http_url"] = f"file://{repo_path}"
        payload["project"]["web_url"] = f"{host.url}/platform/hello-app"
        response = gitlab(stack, payload)
    else:
        payload = fixture("gitea-push.json")
        payload["ref"] = "refs/heads/main"
        payload["after"] = payload["head_commit"]["id"] = payload["commits"][0]["id"] = commit
        payload["repository"]["clone_url"] = f"file://{repo_path}"
        payload["repository"]["html_url"] = f"{host.url}/tools/hello-app"
        response = gitea(stack, payload)
    assert response.status_code == 202, response.text
    return response.json()["job"]


@pytest.mark.parametrize("kind, good_states, bad_states", [
    ("github", ["pending", "pending", "success"], ["pending", "pending", "failure"]),
    ("gitlab", ["pending", "running", "success"], ["pending", "running", "failed"]),
    ("gitea", ["pending", "pending", "success"], ["pending", "pending", "failure"]),
])
def test_a_signed_push_builds_and_the_host_shows_it(served, hosts, pushed, kind, good_states, bad_states):
    repo_path, good, bad = pushed
    host = hosts[kind]
    host.statuses.pop(good, None)
    host.statuses.pop(bad, None)
    built = push(served, hosts, kind, repo_path, good)
    broken = push(served, hosts, kind, repo_path, bad)
    assert served.wait(built)["status"] == "succeeded"
    assert served.wait(broken)["status"] == "failed"
    assert host.states(good) == not_superseded(wait_delivered(served.harness, built), good_states)
    assert host.states(bad) == not_superseded(wait_delivered(served.harness, broken), bad_states)
    context_key = "name" if kind == "gitlab" else "context"
    context = "ci/socket" if kind == "github" else "ci-build-runner/socket"
    for job_id, sha in ((built, good), (broken, bad)):
        for status in host.applied(sha):
            assert status[context_key] == context and status["target_url"] == f"{served.url}/jobs/{job_id}"
    assert host.applied(good)[-1]["description"].startswith("built and pushed 1 tag in ")
    assert host.applied(bad)[-1]["description"] == "step 3/3 failed: RUN exit 3"
    page = httpx.get(host.applied(good)[-1]["target_url"], timeout=10)  # the link opens the job's page and its log
    assert page.status_code == 200 and built in page.text
    with served.client() as client:
        log = client.get(f"/v1/jobs/{built}/logs").text
    assert "hello" in log and "[runner] succeeded" in log


def test_the_readme_config_for_the_three_hosts_is_valid():
    import yaml

    from runner.config.settings import Settings
    from runner.core.jobs import JobSource
    from tests.conftest import ROOT

    section = (ROOT / "README.md").read_text().split("## Commit statuses and callbacks")[1].split("\n## ")[0]
    block = re.findall(r"```yaml\n(.*?)```", section, re.S)[0]
    cfg = Settings.model_validate(yaml.safe_load(block))
    assert {cfg.statuses.github.api_url, cfg.statuses.gitlab.api_url, cfg.statuses.gitea.api_url} == {
        "https://api.github.com", "https://gitlab.example.com", "https://git.example.com"}
    target = cfg.statuses.target(JobSource(host="github", repository="acme/site", sha="a" * 40))
    assert target.context == "images/{repository}"
    assert "off" in cfg.statuses.target(JobSource(host="github", repository="acme/experiments", sha="a" * 40))


def test_a_cancel_from_the_cli_owes_its_deliveries_on_the_configured_schedule(own_harness):
    """`runner cancel` of a queued job queues its final status with deliveries.recover_after from
    the config (a lost message is sent again after that long), as submit and the worker do."""
    h = own_harness(deliveries={"recover_after": 7.0})  # no worker: the job stays queued
    request = queue_job(h, "github")
    result = h.cli("cancel", request.id)
    assert result.returncode == 0, result.stderr
    outbox = Outbox.for_store(h.store)
    resend_at = h.store.r.zscore(outbox.outbox_key, f"{request.id}:status:finished")
    assert resend_at is not None and abs(resend_at - time.time() - 7.0) < 3.0, resend_at - time.time()


def test_backoff_doubles_up_to_its_cap_and_half_of_each_wait_is_jitter():
    from runner.config.sections import DeliveryPolicy
    from runner.worker.notify.deliveries import backoff

    policy = DeliveryPolicy(backoff=1.0, max_backoff=8.0)
    full = [backoff(n, policy, rand=lambda: 1.0) for n in range(1, 7)]
    assert full == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert [backoff(n, policy, rand=lambda: 0.0) for n in range(1, 7)] == [w / 2 for w in full]  # the least: half
    spread = {round(backoff(3, policy), 6) for _ in range(50)}  # the default draws a fresh wait each time
    assert len(spread) > 40 and all(2.0 <= w <= 4.0 for w in spread)

"""The HTTP API on a real uvicorn server (`runner serve` as a subprocess) on loopback, against
the real Redis and a real worker: auth, limits, validation, upload, logs, cancel, git jobs,
the CLI's --api mode, and a schema-driven run (schemathesis) that must find no 500."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from runner.context.pack import write_tar
from tests.conftest import RUNNER, RunnerHarness, cleanup_namespace, new_harness, registry_digest, run_image
from tests.support.cli_modules import not_ours_nor_stdlib, run_cli

TOKEN_ALL = "all-" + uuid.uuid4().hex
TOKEN_READ = "read-" + uuid.uuid4().hex
TOKEN_OTHER = "other-" + uuid.uuid4().hex
TOKENS = [{"name": "ci", "token": TOKEN_ALL, "rights": ["submit", "read", "cancel"]},
          {"name": "dashboard", "token": TOKEN_READ, "rights": ["read"]},
          {"name": "other-ci", "token": TOKEN_OTHER, "rights": ["submit", "read"]}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    """A harness (config, namespace, optional worker) plus a `runner serve` process."""

    harness: RunnerHarness
    url: str
    proc: subprocess.Popen

    def client(self, token: str | None = TOKEN_ALL, timeout: float = 30, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout, **kwargs)

    def wait(self, job_id: str, timeout: float = 180) -> dict:
        with self.client() as c:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                record = c.get(f"/v1/jobs/{job_id}").json()
                if record["status"] not in ("queued", "running"):
                    return record
                time.sleep(0.1)
        raise AssertionError(f"job {job_id} did not finish")

    def job_count(self) -> int:
        return self.harness.store.r.zcard(f"{self.harness.store.ns}:jobs")


def start_stack(services, tmp_path_factory, worker: bool = True, runner: str = RUNNER, **overrides) -> Stack:
    base = {"api": {"tokens": TOKENS, "max_body_bytes": 64 * 1024},
            "git": {"allowed_schemes": ["file", "git", "http", "https"]}}
    h = new_harness(services, tmp_path_factory, **{**base, **overrides})
    if worker:
        h.worker_proc = h.start_worker(runner=runner)
    port = free_port()
    log = (h.workdir / "serve.log").open("w")
    proc = subprocess.Popen([RUNNER, "serve", "--host", "127.0.0.1", "--port", str(port)], env=h.env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return Stack(h, url, proc)
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    stop_stack(Stack(h, url, proc))
    raise RuntimeError(f"runner serve did not come up: {Path(log.name).read_text()[-2000:]}")


def stop_stack(stack: Stack) -> None:
    if stack.proc.poll() is None:
        os.killpg(stack.proc.pid, signal.SIGTERM)
        try:
            stack.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(stack.proc.pid, signal.SIGKILL)
            stack.proc.wait(5)
    if stack.harness.worker_proc is not None:
        stack.harness.stop_worker(stack.harness.worker_proc)
    cleanup_namespace(stack.harness)
    store = stack.harness.store  # queue lists and kombu's permanent bindings, which cleanup_namespace misses
    for pattern in (f"{store.ns}.*", f"_kombu.binding_permanent.{store.ns}.*"):
        for key in store.r.scan_iter(pattern):
            store.r.delete(key)


@pytest.fixture(scope="module")
def stack(services, tmp_path_factory):
    s = start_stack(services, tmp_path_factory, limits={"max_context_bytes": 256 * 1024})
    yield s
    stop_stack(s)


def context_tar(files: dict[str, str | bytes]) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, content in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(content.encode() if isinstance(content, str) else content)
        buffer = io.BytesIO()
        write_tar(root, buffer)
        return buffer.getvalue()


def image_ref(stack: Stack, name: str) -> str:
    return f"{stack.harness.registry()}/api/{name}:{uuid.uuid4().hex[:8]}"


def test_health_and_openapi(stack):
    assert httpx.get(f"{stack.url}/healthz").json() == {"status": "ok"}
    spec = httpx.get(f"{stack.url}/openapi.json").json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/logs", "/v1/jobs/{job_id}/cancel",
            "/v1/jobs/{job_id}/context", "/v1/webhooks/{provider}", "/v1/followers"} <= set(spec["paths"])
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "BuildRequest" in spec["components"]["schemas"]


def test_bearer_auth_and_rights(stack):
    job = {"tags": [image_ref(stack, "auth")]}
    with stack.client(token=None) as anon:
        response = anon.get("/v1/jobs")
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert anon.get("/v1/jobs", headers={"Authorization": "Basic abc"}).status_code == 401
    with stack.client(token="wrong-" + TOKEN_ALL) as wrong:
        assert wrong.get("/v1/jobs").status_code == 401
        assert "api.tokens" in wrong.get("/v1/jobs").json()["message"]
    with stack.client(token=TOKEN_READ) as reader:
        assert reader.get("/v1/jobs").status_code == 200
        denied = reader.post("/v1/jobs", json=job)
        assert denied.status_code == 403 and "'submit'" in denied.json()["message"]
        assert reader.post("/v1/jobs/whatever/cancel").status_code == 403
        assert reader.post("/v1/jobs/x/context", content=b"x").status_code == 403
    with stack.client(token=None) as odd:  # non-ASCII token bytes: refused, never a 500
        assert odd.get("/v1/jobs", headers={"Authorization": "Bearer \xe9\xe9".encode("latin-1")}).status_code == 401


#: what answers without a token: probes, webhooks (signed instead), the schema and its pages, and
#: the dashboard's page shells and static files (they ask the browser for a token)
PUBLIC_ROUTES = {"/healthz", "/metrics", "/readyz", "/v1/webhooks/{provider}", "/openapi.json", "/docs",
                 "/docs/oauth2-redirect", "/redoc", "/", "/jobs/{job_id}", "/fleet", "/ui/static"}


def test_every_route_but_the_public_ones_needs_a_token_with_a_right(stack):
    """Each router's routes, as the app holds them, on the running server: none answers without
    a bearer token unless it is one of PUBLIC_ROUTES (a new route must be placed on one side)."""
    from runner.entry.api import create_app
    from runner.entry.request_metrics import route_methods

    routes = set(route_methods(create_app(stack.harness.settings).routes))
    assert {template for template, _ in routes} >= PUBLIC_ROUTES | {"/v1/jobs", "/ui/jobs/{job_id}/rerun"}
    with stack.client(token=None) as anon:
        for template, method in sorted(routes):
            if template in PUBLIC_ROUTES:
                continue
            path = template.replace("{job_id}", "no-such-job").replace("{provider}", "github")
            response = anon.request(method, path, params={"follow": "true"})
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer", \
                (method, template, response.status_code)


@pytest.mark.parametrize("job, field", [
    ({"tags": []}, "tags"),
    ({"tags": ["no-registry"]}, "tags"),
    ({"tags": ["{reg}/a:1"], "executor": "warp-drive"}, "executor"),
    ({"tags": ["{reg}/a:1"], "surprise": 1}, "surprise"),
    ({"tags": ["forbidden.example.com/a:1"]}, "tags.0"),
    ({"tags": ["{reg}/a:1"], "dockerfile": "../Dockerfile"}, "dockerfile"),
    ({"tags": ["{reg}/a:1"], "timeout": 999999}, "timeout"),
    ({"tags": ["{reg}/a:1"]}, "context"),
    ({"tags": ["{reg}/a:1"], "context": {"type": "git", "url": "ext::sh -c id", "ref": "main"}}, "context.url"),
    ({"tags": ["{reg}/a:1"], "context": {"type": "git", "url": "file:///x"}}, "context.git"),
    ({"tags": ["{reg}/a:1"], "context": {"type": "git", "url": "https://ci:tok@git.example.com/a.git", "ref": "main"}},
     "context.url"),
    ({"tags": ["{reg}/a:1"], "context": {"type": "git", "url": "file:///x", "ref": "main"},
      "callback_url": "ftp://127.0.0.1/x"}, "callback_url"),
    ([1, 2], "request"),
])
def test_invalid_jobs_are_422_naming_the_field(stack, job, field):
    before = stack.job_count()
    body = json.loads(json.dumps(job).replace("{reg}", stack.harness.registry()))
    with stack.client() as c:
        response = c.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field, response.json()
    assert stack.job_count() == before


def test_malformed_bodies_and_queries(stack):
    with stack.client() as c:
        response = c.post("/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
        assert response.status_code == 422 and response.json()["field"] == "body"
        assert c.get("/v1/jobs", params={"limit": "lots"}).json()["field"] == "limit"
        assert c.get("/v1/jobs", params={"status": "sleeping"}).status_code == 422
        assert c.get("/v1/jobs/..%2Fetc").status_code in (404, 422)
        assert c.get("/v1/jobs/no-such-job").status_code == 404
        assert c.get("/v1/jobs/no-such-job/logs").status_code == 404
        assert c.post("/v1/jobs/no-such-job/cancel").status_code == 404


def test_body_limits_are_413(stack):
    before = stack.job_count()
    big = {"tags": [image_ref(stack, "big")], "labels": {"pad": "x" * 60_000, "pad2": "y" * 10_000}}
    with stack.client() as c:
        assert c.post("/v1/jobs", json=big).status_code == 413

        def chunked():  # no Content-Length: the cap holds while streaming
            for _ in range(100):
                yield b" " * 1024

        assert c.post("/v1/jobs", content=chunked(), headers={"Content-Type": "application/json"}).status_code == 413
        job_id = uuid.uuid4().hex
        tar = context_tar({"Dockerfile": "FROM scratch\n", "big.bin": os.urandom(300 * 1024)})
        response = c.post(f"/v1/jobs/{job_id}/context", content=tar)
        assert response.status_code == 413 and "limits.max_context_bytes" in response.json()["message"]
        response = c.post(f"/v1/jobs/{job_id}/context", content=iter([tar[i:i + 65536] for i in range(0, len(tar), 65536)]))
        assert response.status_code == 413
        assert not stack.harness.store.has_context(job_id)
        response = c.post(f"/v1/jobs/{job_id}/context", content=b"this is not a tar" * 100)
        assert response.status_code == 422 and not stack.harness.store.has_context(job_id)
    assert stack.job_count() == before


def test_upload_build_follow_logs_and_duplicate_id(stack, services):
    ref = image_ref(stack, "upload")
    job_id = uuid.uuid4().hex
    tar = context_tar({"Dockerfile": f"FROM {services['RUNNER_DEV_BASE_IMAGE']}\nCOPY msg /msg\n", "msg": "uploaded\n"})
    job = {"id": job_id, "tags": [ref], "executor": "socket"}
    with stack.client() as c:
        assert c.post(f"/v1/jobs/{job_id}/context", content=tar,
                      headers={"Content-Type": "application/x-tar"}).json() == {"id": job_id, "bytes": len(tar)}
        response = c.post("/v1/jobs", json=job)
        assert response.status_code == 202 and response.json()["id"] == job_id
        assert response.headers["location"] == f"/v1/jobs/{job_id}"
        with c.stream("GET", f"/v1/jobs/{job_id}/logs", params={"follow": "true"}, timeout=180) as stream:
            lines = list(stream.iter_lines())
        assert any("running on" in line for line in lines)
        assert lines[-1].startswith("[runner] succeeded"), lines[-5:]
        again = c.post("/v1/jobs", json=job)
        assert again.status_code == 200 and again.json()["created"] is False
        assert c.post(f"/v1/jobs/{job_id}/context", content=tar).status_code == 409
        replay = c.get(f"/v1/jobs/{job_id}/logs").text.splitlines()
        assert replay == lines
    record = stack.wait(job_id)
    assert record["status"] == "succeeded"
    assert record["images"] == [{"ref": ref, "digest": registry_digest(services, ref), "platforms": []}]
    assert run_image(ref, "cat", "/msg") == "uploaded\n"
    with stack.client(token=TOKEN_READ) as reader:
        listed = reader.get("/v1/jobs", params={"status": "succeeded", "limit": 1}).json()
        assert [r["id"] for r in listed] == [job_id]


def test_an_upload_reserves_the_id_for_its_token_and_uploads_have_a_quota(services, tmp_path_factory):
    stack = start_stack(services, tmp_path_factory, worker=False, api={"tokens": TOKENS, "max_pending_uploads_per_token": 3})
    try:
        tar = context_tar({"Dockerfile": "FROM scratch\n"})
        ours, theirs = stack.client(), stack.client(token=TOKEN_OTHER)
        job_id = uuid.uuid4().hex
        assert ours.post(f"/v1/jobs/{job_id}/context", content=tar).status_code == 201
        stolen = theirs.post(f"/v1/jobs/{job_id}/context", content=context_tar({"Dockerfile": "FROM evil\n"}))
        assert stolen.status_code == 409 and "another client" in stolen.json()["message"]
        submitted = theirs.post("/v1/jobs", json={"id": job_id, "tags": [image_ref(stack, "mine")], "executor": "socket"})
        assert submitted.status_code == 409 and "another token" in submitted.json()["message"]
        assert b"".join(stack.harness.store.context_chunks(job_id)) == tar
        assert ours.post(f"/v1/jobs/{job_id}/context", content=tar).status_code == 201  # a retry by the owner is fine
        for _ in range(2):
            assert ours.post(f"/v1/jobs/{uuid.uuid4().hex}/context", content=tar).status_code == 201
        over = ours.post(f"/v1/jobs/{uuid.uuid4().hex}/context", content=tar)
        assert over.status_code == 429 and "max_pending_uploads_per_token" in over.json()["message"]
        assert ours.post("/v1/jobs", json={"id": job_id, "tags": [image_ref(stack, "mine")], "executor": "socket"}).status_code == 202
        assert ours.post(f"/v1/jobs/{uuid.uuid4().hex}/context", content=tar).status_code == 201  # submitting freed a slot
        ours.close()
        theirs.close()
    finally:
        stop_stack(stack)


def test_git_job_through_the_api(stack, services, tmp_path):
    from tests.test_gitsource import commit_files, git

    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    first = commit_files(repo, {"app/Dockerfile": f"FROM {services['RUNNER_DEV_BASE_IMAGE']}\nCOPY v /v\n",
                                "app/v": "first\n"}, "first")
    commit_files(repo, {"app/v": "second\n"}, "second")
    ref = image_ref(stack, "git")
    job = {"tags": [ref], "executor": "socket",
           "context": {"type": "git", "url": f"file://{repo}", "ref": "main", "commit": first, "subdir": "app"}}
    with stack.client() as c:
        response = c.post("/v1/jobs", json=job)
        assert response.status_code == 202, response.text
    record = stack.wait(response.json()["id"])
    assert record["status"] == "succeeded", record["error"]
    assert run_image(ref, "cat", "/v") == "first\n"


def test_cancel_a_running_job(stack, services):
    job_id = uuid.uuid4().hex
    tar = context_tar({"Dockerfile": f"FROM {services['RUNNER_DEV_BASE_IMAGE']}\nRUN sleep 60\n"})
    with stack.client() as c:
        c.post(f"/v1/jobs/{job_id}/context", content=tar).raise_for_status()
        c.post("/v1/jobs", json={"id": job_id, "tags": [image_ref(stack, "cancel")], "executor": "socket"}).raise_for_status()
        deadline = time.monotonic() + 60
        while c.get(f"/v1/jobs/{job_id}").json()["status"] != "running" and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)
        response = c.post(f"/v1/jobs/{job_id}/cancel")
        assert response.status_code == 202 and response.json()["cancel_requested"] is True
    start = time.monotonic()
    assert stack.wait(job_id, timeout=60)["status"] == "cancelled"
    assert time.monotonic() - start < 20


def test_cli_uses_the_api_instead_of_redis(stack, services, tmp_path):
    """The client's config points Redis at a closed port: everything must go through the API."""
    config = tmp_path / "client.yml"
    config.write_text(yaml.safe_dump({"redis_url": "redis://127.0.0.1:1/0", "api": {"url": stack.url}}))
    env = {**os.environ, "RUNNER_CONFIG": str(config), "RUNNER_API_TOKEN": TOKEN_ALL}
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {services['RUNNER_DEV_BASE_IMAGE']}\nARG WHO\nRUN echo \"$WHO\" > /who\n")
    (ctx / ".dockerignore").write_text("junk\n")
    (ctx / "junk").write_text("x" * 400_000)  # over the server's 256 KiB cap unless .dockerignore works
    ref = image_ref(stack, "cli")

    def cli(*args, extra_env=None):
        return subprocess.run([RUNNER, *args], env={**env, **(extra_env or {})}, capture_output=True, text=True, timeout=300)

    result = cli("submit", str(ctx), "-t", ref, "--build-arg", "WHO=api-client", "--follow", "--id", f"cli-{uuid.uuid4().hex[:8]}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"{ref}@{registry_digest(services, ref)}"
    assert run_image(ref, "cat", "/who") == "api-client\n"
    job_id = json.loads(cli("list", "--json", "--limit", "1").stdout)[0]["id"]
    assert json.loads(cli("status", job_id, "--json").stdout)["status"] == "succeeded"
    assert "succeeded" in cli("logs", job_id).stdout
    assert cli("cancel", job_id).stdout.strip() == f"{job_id} succeeded"
    assert cli("status", "no-such-job").returncode == 2
    no_log = cli("logs", "no-such-job")  # one request: the log's 404 says there is no job
    assert no_log.returncode == 2 and "no job 'no-such-job'" in no_log.stderr and no_log.stdout == ""
    denied = cli("status", job_id, extra_env={"RUNNER_API_TOKEN": "nope"})
    assert denied.returncode == 2 and "HTTP 401" in denied.stderr and "Traceback" not in denied.stderr
    invalid = cli("submit", str(ctx), "-t", "forbidden.example.com/x:1", "--detach")
    assert invalid.returncode == 2 and "tags.0" in invalid.stderr
    down = cli("status", job_id, "--api", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 3 and "unreachable" in down.stderr


def test_the_cli_through_the_api_loads_only_the_standard_library(stack, services, tmp_path):
    """With the API given by the environment (no config file), submit --wait, status, list, logs
    and cancel load nothing but the standard library and the runner's own modules (and RE2 to pack
    the context by .dockerignore as Docker does): no pydantic, no requests, no redis, no models
    (the server checks what it is sent)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}, "HOME": str(home),
           "RUNNER_API_URL": stack.url, "RUNNER_API_TOKEN": TOKEN_ALL}
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {services['RUNNER_DEV_BASE_IMAGE']}\nRUN echo light\n")
    ref, job_id = image_ref(stack, "light"), f"light-{uuid.uuid4().hex[:8]}"
    result, modules = run_cli(env, "submit", str(ctx), "-t", ref, "--id", job_id, "--wait", "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["status"] == "succeeded" and record["images"][0]["digest"] == registry_digest(services, ref)
    assert not_ours_nor_stdlib(modules, env) == [] and "runner.core.jobs" not in modules, not_ours_nor_stdlib(modules, env)
    for args in (["status", job_id], ["list", "--limit", "5"], ["logs", job_id], ["cancel", job_id]):
        result, modules = run_cli(env, *args)
        assert result.returncode == 0, (args, result.stderr)
        assert not_ours_nor_stdlib(modules, env) == [] and "runner.core.jobs" not in modules, (args, not_ours_nor_stdlib(modules, env))
        # nor what costs start-up time though it is the standard library's: dataclasses (and inspect) make
        # ~6 ms; the request rules (their regexps, runner.core.platforms) are for checking requests;
        # typing ~2 ms; the idna codec (with unicodedata) ~1 ms for an ASCII host that needs none
        assert not {"dataclasses", "inspect", "runner.core.request_rules", "typing", "encodings.idna"} & modules, args
    assert run_cli(env, "cancel", job_id)[0].stdout.strip() == f"{job_id} succeeded"
    assert "light" in run_cli(env, "logs", job_id)[0].stdout
    refused, modules = run_cli(env, "submit", str(ctx), "-t", "forbidden.example.com/x:1", "--detach")
    assert refused.returncode == 2 and "tags.0" in refused.stderr and not_ours_nor_stdlib(modules, env) == []


# -- schema-driven: no input may produce a 500 ---------------------------------------------------
@pytest.fixture(scope="module")
def idle_stack(services, tmp_path_factory):
    """A server whose namespace has no worker: whatever the fuzzer manages to queue never builds."""
    s = start_stack(services, tmp_path_factory, worker=False)
    yield s
    stop_stack(s)


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_openapi_fuzz_finds_no_server_error(idle_stack, mode):
    """Cases generated from /openapi.json (schemathesis strategies driven by hypothesis),
    valid and invalid, with and without the token: none may get a 5xx."""
    schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (pip install -e .[test])")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error

    schemathesis.serializer.alias("application/x-tar", "application/octet-stream")
    schema = schemathesis.openapi.from_url(f"{idle_stack.url}/openapi.json")
    seen: set[str] = set()

    @given(case=schema.as_strategy(generation_mode=schemathesis.GenerationMode(mode)))
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case):
        seen.add(case.operation.label)
        case.call_and_validate(base_url=idle_stack.url, headers={"Authorization": f"Bearer {TOKEN_ALL}"},
                               checks=[not_a_server_error])

    run()
    assert len(seen) >= 5, f"the fuzzer reached only {sorted(seen)}"

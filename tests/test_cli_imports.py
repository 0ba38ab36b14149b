"""The CLI answers at once because it imports only what a command needs: the module alone
imports nothing but the standard library; the read commands and `submit` never import
Celery, docker-py, FastAPI, requests, sh or an executor; and the message `submit` writes
straight to Redis is the one Celery itself would send."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import tarfile
import uuid

import pytest

from runner.core.jobs import BuildRequest
from runner.worker.queue import enqueue, make_app
from tests.support.cli_modules import run_cli as run_modules

#: what the read commands (status, list, logs, cancel of a finished job) load on top of that: not even the models
MODELS = ("pydantic", "pydantic_core", "annotated_types", "runner.core.jobs", "runner.config.settings", "runner.config.client")
#: heavy packages no CLI command but worker / serve / doctor may load
FORBIDDEN = ("celery", "kombu", "docker", "fastapi", "starlette", "uvicorn", "requests", "sh", "httpx", "typer", "rich",
             "pydantic_settings")
#: the executors modules settings validation may load: the seam, the plugins (name -> class) and each family's config
LIGHT_EXECUTORS = {"executors", "executors.builtin", "executors.base", "executors.plugins", "executors.engine", "executors.engine.config",
                   "executors.dind", "executors.dind.config", "executors.daemonless", "executors.daemonless.config",
                   "executors.registry_cache"}


def run_cli(harness, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    return run_modules(harness.env, *args)


def heavy(modules: set[str]) -> list[str]:
    top = {name.partition(".")[0] for name in modules}
    return sorted([name for name in FORBIDDEN if name in top] +
                  [m for m in modules if m.startswith("executors") and m not in LIGHT_EXECUTORS] +
                  [m for m in modules if m.startswith("runner.worker.") and m != "runner.worker.admission"])


def test_importing_the_cli_imports_only_the_standard_library():
    code = "import sys; before = set(sys.modules); import runner.entry.cli; print('\\n'.join(sorted(set(sys.modules) - before)))"
    new = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    ours = {"runner", "runner.entry", *(f"runner.entry.cli{part}" for part in ("", "_common", "_submit", "_jobs", "_admin"))}
    third_party = [m for m in new if m not in ours and m.partition(".")[0] not in sys.stdlib_module_names]
    assert third_party == [] and not [m for m in new if m.startswith(("runner.", "executors")) and m not in ours], new


@pytest.fixture(scope="module")
def cli_harness(services, tmp_path_factory):
    """A namespace with no worker: what `submit --detach` queues stays on the queue to be read."""
    from tests.conftest import cleanup_namespace, new_harness

    h = new_harness(services, tmp_path_factory)
    yield h
    cleanup_namespace(h)


def test_submit_and_the_read_commands_load_no_heavy_module(cli_harness, tmp_path):
    h = cli_harness
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    job_id = f"imports-{uuid.uuid4().hex[:8]}"
    ref = f"{h.registry()}/imports/a:1"
    submitted, modules = run_cli(h, "submit", str(tmp_path), "-t", ref, "--id", job_id, "--build-arg", "A=hidden",
                                 "--detach")
    assert submitted.returncode == 0 and submitted.stdout.strip() == job_id, submitted.stderr
    assert heavy(modules) == []
    for args in (["status", job_id], ["status", job_id, "--json"], ["list"], ["logs", job_id], ["cancel", job_id]):
        result, modules = run_cli(h, *args)
        assert result.returncode == 0, (args, result.stderr)
        assert heavy(modules) == [], args
    assert h.store.get(job_id).status.value == "cancelled"


def decoded(message: bytes | str) -> dict:
    envelope = json.loads(message)
    envelope["body"] = json.loads(base64.b64decode(envelope["body"]))
    return envelope


def test_submit_writes_the_message_celery_would_send(cli_harness, tmp_path):
    """Same task, id, queue, body and header keys as Celery's own send_task; the build args
    travel only in the body (argsrepr names the job), and the worker accepts it (test_spine)."""
    h = cli_harness
    queue = f"{h.settings.worker.namespace}.socket"
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    job_id = f"shape-{uuid.uuid4().hex[:8]}"
    result, _ = run_cli(h, "submit", str(tmp_path), "-t", f"{h.registry()}/imports/b:1", "--id", job_id,
                        "--build-arg", "A=hidden-value", "--detach")
    assert result.returncode == 0, result.stderr
    ours = decoded(h.store.r.lpop(queue))
    request = BuildRequest.model_validate(ours["body"][0][0])
    assert request.id == job_id and request.build_args == {"A": "hidden-value"}

    enqueue(make_app(h.settings), request, queue)  # Celery's own message for the same job, as the oracle
    celerys = decoded(h.store.r.lpop(queue))
    assert ours["body"] == celerys["body"]
    assert {k: v for k, v in ours.items() if k not in ("headers", "properties")} == \
           {k: v for k, v in celerys.items() if k not in ("headers", "properties")}
    volatile = {"origin", "delivery_tag", "reply_to", "argsrepr", "kwargsrepr"}  # per sender / message, or unused
    for part in ("headers", "properties"):
        assert {k: v for k, v in ours[part].items() if k not in volatile} == \
               {k: v for k, v in celerys[part].items() if k not in volatile}, part
    assert ours["headers"]["argsrepr"] == f"[job {job_id}]" and "hidden-value" not in json.dumps(ours["headers"])
    assert ours["properties"]["delivery_info"]["routing_key"] == queue


def test_the_api_server_sends_jobs_without_celery():
    """`runner serve` writes task messages itself (runner.store.buildqueue): making the app loads no
    Celery or kombu (it used to build a Celery app at start-up and hold a lock per submission)."""
    code = ("import sys; from runner.config.settings import Settings; from runner.entry.api import create_app; "
            "create_app(Settings()); print(sorted(m for m in ('celery', 'kombu') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def models(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m in MODELS or m.partition(".")[0] in MODELS)


def test_the_read_commands_load_no_models(cli_harness, tmp_path):
    """status, list and logs (and cancel of a job that has ended) read the record as plain JSON
    and the client settings plainly (runner.config.client_plain): no pydantic, no settings models."""
    h = cli_harness
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    job_id = f"light-{uuid.uuid4().hex[:8]}"
    submitted, _ = run_cli(h, "submit", str(tmp_path), "-t", f"{h.registry()}/imports/c:1", "--id", job_id, "--detach")
    assert submitted.returncode == 0, submitted.stderr
    h.store.append_log(job_id, ["a line"])
    for args in (["status", job_id], ["status", job_id, "--json"], ["list"], ["list", "--status", "queued", "--json"],
                 ["logs", job_id]):
        result, modules = run_cli(h, *args)
        assert result.returncode == 0, (args, result.stderr)
        assert job_id in result.stdout or args[0] == "logs", args
        assert models(modules) == [] and heavy(modules) == [], (args, models(modules))
        assert "yaml" not in modules, args  # the harness's config is plain YAML: read without PyYAML (runner.config.plain_yaml)
    assert run_cli(h, "logs", job_id)[0].stdout == "a line\n"
    missing, _ = run_cli(h, "logs", f"{job_id}-none")
    assert missing.returncode == 2 and f"no job '{job_id}-none'" in missing.stderr and missing.stdout == ""
    cancelled, modules = run_cli(h, "cancel", job_id)  # a queued job: the record and outbox are written (models)
    assert cancelled.stdout.strip() == f"{job_id} cancelled" and heavy(modules) == []
    again, modules = run_cli(h, "cancel", job_id)  # ended: nothing to write, nothing to load
    assert again.returncode == 0 and again.stdout.strip() == f"{job_id} cancelled"
    assert models(modules) == [] and heavy(modules) == []
    missing, modules = run_cli(h, "status", "no-such-job")
    assert missing.returncode == 2 and "no job" in missing.stderr and models(modules) == []


def test_submit_through_redis_loads_no_models(cli_harness, tmp_path):
    """`runner submit` without --api checks the request by the shared rules (runner.core.plain_request,
    runner.core.admission_rules) on the config read plainly, and writes the record itself: no
    pydantic, no settings models. What it does not read plainly (a source) goes to the models."""
    h = cli_harness
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    job_id = f"plain-{uuid.uuid4().hex[:8]}"
    submitted, modules = run_cli(h, "submit", str(tmp_path), "-t", f"{h.registry()}/imports/d:1", "--id", job_id,
                                 "--build-arg", "A=1", "--secret-build-arg", "TOKEN=env:HOME", "--platform", "linux/amd64",
                                 "--detach")
    assert submitted.returncode == 0 and submitted.stdout.strip() == job_id, submitted.stderr
    assert models(modules) == [] and heavy(modules) == [], models(modules)
    assert "getpass" not in modules and "termios" not in modules  # cli_user names the user itself
    assert "runner.store.outbox" not in modules  # no source, no commit statuses: the store's outbox is never made
    record = h.store.get(job_id)  # the models read what the light path wrote
    assert record.request.build_args == {"A": "1", "TOKEN": "***"} and h.store.load_secrets(job_id) == {"TOKEN": os.environ["HOME"]}
    assert record.executor == "socket" and record.submitted_by.startswith("cli:") and record.request.platforms == ["linux/amd64"]
    refused, modules = run_cli(h, "submit", str(tmp_path), "-t", "other.example:5000/a/b:1", "--detach")
    assert refused.returncode == 2 and "tags.0: registry 'other.example:5000' is not allowed" in refused.stderr
    assert models(modules) == []
    sourced, modules = run_cli(h, "submit", str(tmp_path), "-t", f"{h.registry()}/imports/d:2", "--source-host", "github",
                               "--source-repo", "o/r", "--source-sha", "a" * 40, "--detach")
    assert sourced.returncode == 2 and "statuses.trust_queue_sources" in sourced.stderr  # the models' refusal
    assert "pydantic" in models(modules)


def test_a_bad_client_setting_is_refused_by_the_models_with_their_message(cli_harness, tmp_path):
    """The plain reading hands what it cannot take plainly to ClientSettings, which refuses it."""
    h = cli_harness
    bad = {**h.env, "RUNNER_RETENTION__FINISHED_SECONDS": "-1"}
    result, modules = run_modules(bad, "list")
    assert result.returncode == 2 and "retention.finished_seconds" in result.stderr and "RUNNER_RETENTION__FINISHED_SECONDS" in result.stderr
    typo, _ = run_modules({**h.env, "RUNNER_WORKR__NAMESPACE": "x"}, "list")
    assert typo.returncode == 2 and "RUNNER_WORKR__NAMESPACE: no such setting" in typo.stderr


#: run the CLI, then name every dataclass the runner's modules defined (each is made by generating
#: and exec'ing its methods at import, ~0.2-1 ms apiece on every command)
SHOW_DATACLASSES = """
import atexit, json, sys
def made():
    return sorted(f"{name}.{attr}" for name, module in list(sys.modules.items()) if name.startswith(("runner", "executors"))
                  for attr, value in vars(module).items()
                  if isinstance(value, type) and value.__module__ == name and "__dataclass_fields__" in vars(value))
atexit.register(lambda: sys.stderr.write("\\nDATACLASSES " + json.dumps(made()) + "\\n"))
from runner.entry.cli import main
main(sys.argv[1:])
"""
def test_submit_through_redis_makes_no_dataclass(cli_harness, tmp_path):
    """The records `runner submit` (Redis mode) makes on its way (AdmissionPolicy, Platform,
    IgnoreLimits, the .dockerignore's IgnoreLine, Pattern, GoRegexp, ContextSelection) are
    runner.core.frozen records, not dataclasses: a .dockerignore and a platform exercise them
    all. (The dataclasses module itself is loaded all the same: redis-py imports it.)"""
    h = cli_harness
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / ".dockerignore").write_text("*.log\n!keep.log\n")
    (tmp_path / "keep.log").write_text("kept\n")
    job_id = f"frozen-{uuid.uuid4().hex[:8]}"
    result = subprocess.run([sys.executable, "-c", SHOW_DATACLASSES, "submit", str(tmp_path), "-t", f"{h.registry()}/imports/e:1",
                             "--id", job_id, "--platform", "linux/arm64", "--detach"],
                            env=h.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == job_id, result.stderr
    assert json.loads(result.stderr.rpartition("\nDATACLASSES ")[2]) == []
    assert h.store.get(job_id).request.platforms == ["linux/arm64"]


def test_submit_through_redis_opens_two_connections(make_harness, tmp_path_factory, tmp_path):
    """`runner submit` connects to Redis twice: the probe that fails fast when Redis is down, and
    one data connection for the reservation, the upload and the record (each connection is a
    handshake of its own; the upload used to open a third). Counted by a redis-server of the
    test's own, which nothing else connects to."""
    import redis

    from tests.support.fleet import OwnRedis

    server = OwnRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        h = make_harness(redis_url=server.url)
        (tmp_path / "Dockerfile").write_text("FROM scratch\n")
        (tmp_path / "data.txt").write_text("x" * 100_000)
        counter = redis.Redis.from_url(server.url)
        before = counter.info("stats")["total_connections_received"]
        job_id = f"conns-{uuid.uuid4().hex[:8]}"
        result, _ = run_cli(h, "submit", str(tmp_path), "-t", f"{h.registry()}/imports/f:1", "--id", job_id, "--detach")
        assert result.returncode == 0 and result.stdout.strip() == job_id, result.stderr
        assert counter.info("stats")["total_connections_received"] - before == 2
        context = tarfile.open(fileobj=io.BytesIO(b"".join(h.store.context_chunks(job_id))))
        assert context.extractfile("data.txt").read() == b"x" * 100_000  # the upload landed whole
    finally:
        server.stop()

"""Hostile and careless job input through every door: duplicate ids, raw queue messages that
skip our entry points, secret values left lying around, tags left on a shared engine, ids and
build args that break executors late, and a history that slows everything down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from runner.core.jobs import BuildRequest, JobRecord, Status
from tests.conftest import RUNNER, WRONG_PASSWORD_HOST, cleanup_namespace, new_harness, run_image
from tests.hostile.rawqueue import post_body, post_raw
from tests.support import every_value


def context(root: Path, base: str, body: str = "", files: dict[str, str] | None = None) -> Path:
    root = root / uuid.uuid4().hex[:6]
    root.mkdir()
    (root / "Dockerfile").write_text(f"FROM {base}\n{body}\n")
    for name, text in (files or {}).items():
        (root / name).write_text(text)
    return root


def tar_of(directory: Path) -> bytes:
    return subprocess.run(["tar", "-C", str(directory), "-cf", "-", "."], capture_output=True, check=True).stdout


def ref(h, name: str) -> str:
    return f"{h.registry()}/hostile/{name}:{uuid.uuid4().hex[:8]}"


def wait_finished(h, job_id: str, timeout: float = 120) -> JobRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = h.store.get(job_id)
        if record is not None and record.finished:
            return record
        time.sleep(0.1)
    raise AssertionError(f"{job_id} did not finish in {timeout}s: {h.store.get(job_id)}")


@pytest.fixture(scope="module")
def raw_harness(services, tmp_path_factory, worker_runner):
    """A worker on each Python, for what arrives straight on the queue."""
    h = new_harness(services, tmp_path_factory)
    h.worker_proc = h.start_worker(runner=worker_runner)
    yield h
    h.stop_worker(h.worker_proc)
    cleanup_namespace(h)


def queue_of(h, executor: str = "socket") -> str:
    return f"{h.config['worker']['namespace']}.{executor}"


# -- ids --------------------------------------------------------------------------------------------
def test_a_used_id_never_gets_a_new_context(make_harness, services, tmp_path):
    h = make_harness()
    base = services["RUNNER_DEV_BASE_IMAGE"]
    job_id = f"dup-{uuid.uuid4().hex[:8]}"
    first, second = ref(h, "dup-a"), ref(h, "dup-b")
    a = context(tmp_path, base, "COPY which /which", {"which": "context-A"})
    b = context(tmp_path, base, "COPY which /which", {"which": "context-B"})
    assert h.cli("submit", str(a), "-t", first, "--id", job_id, "--detach").returncode == 0
    stored = b"".join(h.store.context_chunks(job_id))
    again = h.cli("submit", str(b), "-t", second, "--id", job_id, "--detach")
    assert again.returncode == 0 and "already exists" in again.stderr
    assert b"".join(h.store.context_chunks(job_id)) == stored  # B's upload never touched A's job
    h.worker_proc = h.start_worker()
    assert wait_finished(h, job_id).status is Status.succeeded
    assert run_image(first, "cat", "/which") == "context-A"


def test_an_id_another_client_is_submitting_is_refused(harness, services, tmp_path):
    job_id = f"busy-{uuid.uuid4().hex[:8]}"
    assert harness.store.reserve(job_id, "someone-else") == "ok"
    result = harness.cli("submit", str(context(tmp_path, services["RUNNER_DEV_BASE_IMAGE"])), "-t", ref(harness, "busy"),
                         "--id", job_id)
    assert result.returncode == 2 and "being submitted by another client" in result.stderr
    assert harness.store.get(job_id) is None and not harness.store.has_context(job_id)


@pytest.mark.parametrize("job_id", ["x-", "x.", "a...b", "Upper", "a" * 129, "../x"])
def test_one_id_rule_refuses_ids_an_engine_could_not_name(harness, tmp_path, job_id):
    result = harness.cli("submit", str(context(tmp_path, "x")), "-t", ref(harness, "id"), "--id", job_id)
    assert result.returncode == 2 and "not a valid job id" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_build_args_over_the_total_cap_are_refused_before_queueing(harness, tmp_path):
    args = [a for n in range(5) for a in ("--build-arg", f"A{n}={'x' * 60_000}")]
    result = harness.cli("submit", str(context(tmp_path, "x")), "-t", ref(harness, "args"), *args)
    assert result.returncode == 2 and "over the limit of 262,144" in result.stderr


def test_cli_errors_keep_square_brackets(harness, tmp_path):
    result = harness.cli("submit", str(context(tmp_path, "x")), "-t", "[bad]")
    assert result.returncode == 2 and "'[bad]'" in result.stderr


# -- raw queue messages -------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["unconfigured registry", "too many tags", "unknown secret"])
def test_raw_messages_are_admitted_like_any_other(raw_harness, services, tmp_path, case):
    h = raw_harness
    job_id = f"raw-{uuid.uuid4().hex[:10]}"
    tags = {"unconfigured registry": ["forbidden.example.com/a:1"],
            "too many tags": [f"{h.registry()}/hostile/many:{n}" for n in range(40)]}.get(case, [ref(h, "raw")])
    job = {"id": job_id, "tags": tags, "executor": "socket", **({"secrets": ["nope"]} if case == "unknown secret" else {})}
    post_raw(h.store, queue_of(h), job, tar_of(context(tmp_path, services["RUNNER_DEV_BASE_IMAGE"], "RUN echo never")))
    record = wait_finished(h, job_id, 30)
    assert record.status is Status.failed and record.error.kind == "invalid", record
    assert record.error.message.startswith("refused: ") and record.attempts == 0
    set_aside = [json.loads(m) for m in h.store.r.lrange(f"{queue_of(h)}.invalid", 0, -1)]
    assert job_id in [m.get("id") for m in set_aside]
    assert not h.store.has_context(job_id)
    assert "running on" not in "\n".join(h.store.read_log(job_id))
    assert h.worker_proc.poll() is None


def test_a_raw_message_that_is_no_job_is_set_aside(raw_harness, services, tmp_path):
    h = raw_harness
    secret = uuid.uuid4().hex
    post_raw(h.store, queue_of(h), {"id": "Not-A-Valid-Id", "tags": [ref(h, "x")], "build_args": {"T": secret}})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        kept = h.store.r.lrange(f"{queue_of(h)}.invalid", 0, -1)
        if any("Not-A-Valid-Id" in m for m in kept):
            break
        time.sleep(0.1)
    entry = json.loads(next(m for m in kept if "Not-A-Valid-Id" in m))
    assert "not a valid job id" in entry["refused"] and secret not in json.dumps(entry)
    assert h.store.get("Not-A-Valid-Id") is None
    good = f"raw-{uuid.uuid4().hex[:10]}"  # the worker goes on with the next job
    post_raw(h.store, queue_of(h), {"id": good, "tags": [ref(h, "after")], "executor": "socket"},
             tar_of(context(tmp_path, services["RUNNER_DEV_BASE_IMAGE"], "RUN echo fine")))
    assert wait_finished(h, good).status is Status.succeeded


@pytest.mark.parametrize("case, field, words", [
    ("unknown field", "colour", "Extra inputs are not permitted"),
    ("wrong type", "timeout", "valid integer"),
    ("oversize args", "build_args", "over 65536 bytes"),
    ("unreadable tags", "tags", "valid list"),
])
def test_a_raw_message_refused_at_parse_time_fails_its_job(raw_harness, services, tmp_path, case, field, words):
    """A message that names a valid job id but is no valid job: that job gets a failed record
    naming the field, its context goes, the message is set aside and acked."""
    h = raw_harness
    job_id, secret = f"raw-{uuid.uuid4().hex[:10]}", f"s3cr3t-{uuid.uuid4().hex}"
    tags = [ref(h, "parse")]
    job = {"id": job_id, "tags": tags, "executor": "socket", "build_args": {"TOKEN": secret}, "secret_build_args": ["TOKEN"],
           **{"unknown field": {"colour": "blue"}, "wrong type": {"timeout": "soon"},
              "oversize args": {"build_args": {"TOKEN": secret, "BIG": "x" * 70_000}}, "unreadable tags": {"tags": 42}}[case]}
    post_raw(h.store, queue_of(h), job, tar_of(context(tmp_path, services["RUNNER_DEV_BASE_IMAGE"], "RUN echo never")))
    record = wait_finished(h, job_id, 30)
    assert record.status is Status.failed and record.error.kind == "invalid" and record.attempts == 0, record
    assert record.error.message.startswith(f"refused: {field}: ") and words in record.error.message, record.error.message
    assert record.request.tags == (tags if case != "unreadable tags" else ["refused.invalid/unreadable/tags:none"])
    assert not h.store.has_context(job_id)
    set_aside = [json.loads(m) for m in h.store.r.lrange(f"{queue_of(h)}.invalid", 0, -1)]
    assert any(m.get("id") == job_id and m["refused"].startswith(field) for m in set_aside)
    assert secret not in every_value(h.store)
    assert h.store.r.llen(queue_of(h)) == 0 and h.worker_proc.poll() is None


def test_a_message_whose_body_is_no_task_call_is_acked(raw_harness, services, tmp_path):
    """A body kombu takes in but Celery cannot call (not [args, kwargs, embed]): set aside and
    acked, never left in kombu's unacked hash (redelivered after every visibility timeout)."""
    h = raw_harness
    bodies = ['{"a": 1}', '[1]', '"job"', json.dumps([[{"id": "x"}], {}, 5]), json.dumps([[], [], {}])]
    tags = [post_body(h.store, queue_of(h), body) for body in bodies]
    deadline = time.monotonic() + 30
    while any(h.store.r.hexists("unacked", tag) for tag in tags) or \
            sum(tag in m for m in h.store.r.lrange(f"{queue_of(h)}.invalid", 0, -1) for tag in tags) < len(tags):
        assert time.monotonic() < deadline, [(tag, h.store.r.hexists("unacked", tag)) for tag in tags]
        time.sleep(0.1)
    good = f"raw-{uuid.uuid4().hex[:10]}"  # and the worker's slots are free for the next job
    post_raw(h.store, queue_of(h), {"id": good, "tags": [ref(h, "after-garbage")], "executor": "socket"},
             tar_of(context(tmp_path, services["RUNNER_DEV_BASE_IMAGE"], "RUN echo fine")))
    assert wait_finished(h, good).status is Status.succeeded


# -- secret values ----------------------------------------------------------------------------------
def submit_with_secret(h, ctx: Path, secret: str, *args: str) -> str:
    argv = [RUNNER, "submit", str(ctx), "-t", ref(h, "secret"), "--secret-build-arg", "TOKEN", "--detach", *args]
    result = subprocess.run(argv, env={**h.env, "TOKEN": secret}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_secret_values_stay_out_of_queue_messages_and_go_with_a_cancelled_job(make_harness, services, tmp_path):
    h = make_harness()
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    job_id = submit_with_secret(h, context(tmp_path, services["RUNNER_DEV_BASE_IMAGE"], "ARG TOKEN\nRUN true"), secret)
    assert h.store.load_secrets(job_id) == {"TOKEN": secret}
    messages = h.store.r.lrange(queue_of(h), 0, -1)
    assert messages and not any(secret in m or secret in base64_body(m) for m in messages)
    assert h.cli("cancel", job_id).returncode == 0
    assert h.store.load_secrets(job_id) == {} and not h.store.has_context(job_id)
    assert secret not in every_value(h.store, "unacked*")


def base64_body(message: str) -> str:
    import base64

    return base64.b64decode(json.loads(message)["body"]).decode()


def test_a_killed_worker_leaves_no_secret_in_unacked_and_the_rerun_gets_the_value(make_harness, services, tmp_path):
    h = make_harness(worker={"lease_ttl": 3, "recover_interval": 0.5, "concurrency": 1})
    h.worker_proc = h.start_worker()
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    body = (f"ARG TOKEN\nRUN echo {uuid.uuid4().hex} && test \"$TOKEN\" = {secret} && echo token-ok && sleep 4\n"
            "RUN echo second-step")
    job_id = submit_with_secret(h, context(tmp_path, services["RUNNER_DEV_BASE_IMAGE"], body), secret)
    deadline = time.monotonic() + 60
    while "token-ok" not in "\n".join(h.store.read_log(job_id)):
        assert time.monotonic() < deadline, "the build never reached its RUN step"
        time.sleep(0.1)
    os.killpg(h.worker_proc.pid, signal.SIGKILL)
    h.worker_proc.wait(10)
    unacked = h.store.raw.hvals("unacked")
    assert any(job_id.encode() in m for m in unacked)  # the killed attempt's message waits there...
    assert not any(secret.encode() in m or secret.encode() in _body(m) for m in unacked)  # ...without the value
    h.worker_proc = h.start_worker()
    record = wait_finished(h, job_id, 120)
    assert record.status is Status.succeeded, record.error
    assert record.attempts == 2 and "second-step" in "\n".join(h.store.read_log(job_id))
    assert h.store.load_secrets(job_id) == {}


def _body(unacked_entry: bytes) -> bytes:
    import base64

    message = json.loads(unacked_entry)[0]  # [message, exchange, routing key]
    return base64.b64decode(message["body"])


# -- images left on shared engines -------------------------------------------------------------------
def local_image(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0


def test_unpushed_or_failed_tags_never_stay_on_the_shared_engine(harness, services, tmp_path):
    base = services["RUNNER_DEV_BASE_IMAGE"]
    unpushed = ref(harness, "poison")
    result = harness.cli("submit", str(context(tmp_path, base, "RUN echo poisoned > /p")), "-t", unpushed, "--no-push")
    assert result.returncode == 0, result.stderr
    failed = f"{WRONG_PASSWORD_HOST}/hostile/poison:{uuid.uuid4().hex[:8]}"
    result = harness.cli("submit", str(context(tmp_path, base, "RUN echo poisoned > /p")), "-t", failed)
    assert result.returncode == 1
    time.sleep(1)  # clean-up runs just after the record is written
    assert not local_image(unpushed) and not local_image(failed)
    # a later job naming the unpushed ref as its base gets what the registry has (nothing), never the local build
    later = harness.cli("submit", str(context(tmp_path, unpushed, "RUN cat /p")), "-t", ref(harness, "victim"), "--json")
    assert later.returncode == 1 and json.loads(later.stdout)["status"] == "failed"


# -- history --------------------------------------------------------------------------------------------
def test_history_is_indexed_and_expires(make_harness, services, tmp_path):
    h = make_harness(retention={"finished_seconds": 5, "upload_seconds": 60})
    store = h.store
    finished = [JobRecord(id=f"old-{n}", request=BuildRequest(tags=[ref(h, "old")]), executor="socket", queue="q",
                          status=Status.succeeded) for n in range(1000)]
    for record in finished:
        store.create(record)
    running = JobRecord(id="live-1", request=BuildRequest(tags=[ref(h, "live")]), executor="socket", queue="q")
    store.create(running)
    store.update("live-1", lambda r: r.model_copy(update={"status": Status.running}))
    assert store.ids(Status.running) == ["live-1"] and store.r.lrange(store.running_key("socket"), 0, -1) == ["live-1"]
    listed = json.loads(h.cli("list", "--status", "running", "--json").stdout)
    assert [r["id"] for r in listed] == ["live-1"]
    assert 0 < store.r.ttl(f"{store.ns}:job:old-999") <= 5 and store.r.ttl(f"{store.ns}:job:live-1") == -1
    deadline = time.monotonic() + 30
    while store.r.exists(f"{store.ns}:job:old-999"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert store.prune(batch=5000) == 1000
    assert store.count() == 1 and store.count(Status.succeeded) == 0
    job_id = h.cli("submit", str(context(tmp_path, services["RUNNER_DEV_BASE_IMAGE"])), "-t", ref(h, "ttl"), "--detach").stdout.strip()
    assert 0 < store.raw.ttl(f"{store.ns}:ctx:{job_id}") <= h.settings.retention.queued_seconds
    writer = store.context_writer("upload-only", 10**6)
    writer.write(b"x" * 10)
    writer.close()
    assert 0 < store.raw.ttl(f"{store.ns}:ctx:upload-only") <= 60

"""Issue 6 with real processes: cancel, timeouts, SIGKILLed workers, a Redis restart, a
registry that is down, an unreachable engine, graceful shutdown, concurrency and routing.

Each test makes its own harness (own namespace, config and workers) so it can kill and
restart them; all are bounded in time and leave nothing behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import RUNNER, registry_digest, wait_cleaned

SLOW = pytest.mark.slow


def dockerfile(tmp_path: Path, base: str, body: str) -> Path:
    ctx = tmp_path / uuid.uuid4().hex[:6]
    ctx.mkdir()
    # the first RUN is unique so no step of the test's body comes from the build cache
    (ctx / "Dockerfile").write_text(f"FROM {base}\nRUN echo {uuid.uuid4().hex}\n{body}\n")
    return ctx


def record(h, job_id: str) -> dict:
    return h.store.get(job_id).model_dump(mode="json")


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_finished(h, job_id: str, timeout: float = 120) -> dict:
    return wait_for(lambda: (r := h.store.get(job_id)) and r.finished and r.model_dump(mode="json"), timeout, f"{job_id} to finish")


def log_of(h, job_id: str) -> str:
    return "\n".join(h.store.read_log(job_id))


def wait_log(h, job_id: str, text: str, timeout: float = 60) -> None:
    wait_for(lambda: text in log_of(h, job_id), timeout, f"{text!r} in the log of {job_id}")


def detach(h, ctx: Path, *args: str) -> str:
    result = h.cli("submit", str(ctx), "--detach", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def tag(h, name: str) -> str:
    return f"{h.registry()}/reliability/{name}:{uuid.uuid4().hex[:8]}"


def build_processes(marker: str) -> list[str]:
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    return out.stdout.split()


def base(services) -> str:
    return services["RUNNER_DEV_BASE_IMAGE"]


def fast_recovery(**extra) -> dict:
    return {"worker": {"lease_ttl": 3, "recover_interval": 0.5, "reap_interval": 2, "concurrency": 1, **extra}}


# -- 1. cancel ----------------------------------------------------------------------------------
def test_cancel_running_job_kills_the_build(make_harness, services, tmp_path):
    h = make_harness()
    h.worker_proc = h.start_worker()
    marker = f"sleep {600 + os.getpid() % 300}"
    job_id = detach(h, dockerfile(tmp_path, base(services), f"RUN echo started-build && {marker}"), "-t", tag(h, "cancel"))
    wait_log(h, job_id, "started-build")
    wait_for(lambda: build_processes(marker), 20, "the build's sleep to run")
    t0 = time.monotonic()
    out = h.cli("cancel", job_id)
    assert out.returncode == 0, out.stderr
    final = wait_finished(h, job_id, 30)
    wait_for(lambda: not build_processes(marker), 30, "the build's processes to be gone")
    elapsed = time.monotonic() - t0
    print(f"cancel -> build gone in {elapsed:.2f}s")
    assert final["status"] == "cancelled" and final["error"]["kind"] == "cancelled"
    assert "cancelled" in log_of(h, job_id).splitlines()[-1]
    wait_cleaned(h, job_id)
    assert not (Path(h.config["worker"]["workspace"]) / job_id).exists()


def test_cancelled_queued_job_never_starts(make_harness, services, tmp_path):
    h = make_harness()
    job_id = detach(h, dockerfile(tmp_path, base(services), "RUN echo should-not-run"), "-t", tag(h, "qcancel"))
    assert h.cli("cancel", job_id).stdout.strip() == f"{job_id} cancelled"
    h.worker_proc = h.start_worker()
    time.sleep(2)  # give the worker the time it would need to take the message
    final = record(h, job_id)
    assert final["status"] == "cancelled" and final["attempts"] == 0 and final["worker"] is None
    assert "running on" not in log_of(h, job_id)


# -- 2. timeouts ----------------------------------------------------------------------------------
def test_timeout_ends_timed_out_and_kills_the_build(make_harness, services, tmp_path):
    h = make_harness()
    h.worker_proc = h.start_worker()
    marker = f"sleep {900 + os.getpid() % 300}"
    job_id = detach(h, dockerfile(tmp_path, base(services), f"RUN {marker}"), "-t", tag(h, "timeout"), "--timeout", "3")
    final = wait_finished(h, job_id, 60)
    assert final["status"] == "timed_out" and final["error"]["kind"] == "timeout"
    assert "after 3s" in final["error"]["message"]
    wait_for(lambda: not build_processes(marker), 30, "the build's processes to be gone")


def test_default_timeout_comes_from_config(make_harness, services, tmp_path):
    h = make_harness(limits={"default_timeout": 2, "max_timeout": 60})
    h.worker_proc = h.start_worker()
    job_id = detach(h, dockerfile(tmp_path, base(services), "RUN sleep 30"), "-t", tag(h, "deftimeout"))
    final = wait_finished(h, job_id, 60)
    assert final["status"] == "timed_out" and "after 2s" in final["error"]["message"]


# -- 3. worker loss -----------------------------------------------------------------------------------
@SLOW
def test_sigkilled_worker_job_runs_again_exactly_once(make_harness, services, tmp_path):
    h = make_harness(**fast_recovery())
    first = h.start_worker()
    ref = tag(h, "workerloss")
    job_id = detach(h, dockerfile(tmp_path, base(services), "RUN echo attempt-started && sleep 4 && echo built > /built"), "-t", ref)
    wait_log(h, job_id, "attempt-started")
    h.stop_worker(first, signal.SIGKILL)
    assert record(h, job_id)["status"] == "running"  # nobody has noticed yet
    h.worker_proc = h.start_worker()
    final = wait_finished(h, job_id, 120)
    assert final["status"] == "succeeded", final
    assert final["attempts"] == 2 and final["worker"] != first.pid
    log = log_of(h, job_id)
    assert "stopped (no heartbeat" in log and "requeued" in log
    assert log.count("[runner] succeeded") == 1
    assert final["images"][0]["digest"] == registry_digest(services, ref)
    wait_cleaned(h, job_id)
    assert not (Path(h.config["worker"]["workspace"]) / job_id).exists()
    images = subprocess.run(["docker", "images", "-q", f"runner-job/{job_id}"], capture_output=True, text=True).stdout
    assert images.strip() == ""


@SLOW
def test_job_that_keeps_killing_its_worker_ends_failed(make_harness, services, tmp_path):
    h = make_harness(limits={"max_attempts": 2}, **fast_recovery())
    job_id = detach(h, dockerfile(tmp_path, base(services), "RUN echo doomed && sleep 60"), "-t", tag(h, "doomed"))
    for attempt in (1, 2):
        worker = h.start_worker()
        wait_for(lambda attempt=attempt: record(h, job_id)["attempts"] == attempt and "doomed" in log_of(h, job_id), 60,
                 f"attempt {attempt} to run")
        wait_log(h, job_id, "doomed")
        h.stop_worker(worker, signal.SIGKILL)
        if attempt == 1:
            time.sleep(0.1)
    h.worker_proc = h.start_worker()
    final = wait_finished(h, job_id, 60)
    assert final["status"] == "failed" and final["error"]["kind"] == "worker_lost"
    assert "max_attempts" in final["error"]["message"] and final["attempts"] == 2


def test_lease_prevents_two_runs_at_once(harness):
    store = harness.store
    job_id = f"lease-{uuid.uuid4().hex[:6]}"
    assert store.acquire_lease(job_id, "worker-a", 5)
    assert not store.acquire_lease(job_id, "worker-b", 5)
    assert not store.renew_lease(job_id, "worker-b", 5)
    store.release_lease(job_id, "worker-b")  # not the holder: no effect
    assert store.lease_holder(job_id) == "worker-a"
    store.release_lease(job_id, "worker-a")
    assert store.lease_holder(job_id) is None


# -- 4. Redis outage ------------------------------------------------------------------------------------
@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of this test's own (AOF, fsync always) that the test may restart."""
    port = 16390 + os.getpid() % 500
    data = tmp_path / "redis"
    data.mkdir()
    argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data),
            "--appendonly", "yes", "--appendfsync", "always", "--save", ""]

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        wait_for(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() == b"PONG",
                 20, "redis to start")
        return proc

    state = {"proc": start()}

    def restart(down_for: float) -> None:
        subprocess.run(["redis-cli", "-p", str(port), "shutdown"], capture_output=True)
        state["proc"].wait(20)
        time.sleep(down_for)
        state["proc"] = start()

    yield f"redis://127.0.0.1:{port}/0", restart
    state["proc"].terminate()
    state["proc"].wait(20)


@SLOW
def test_redis_restart_loses_nothing_and_misreports_nothing(make_harness, services, tmp_path, private_redis):
    url, restart = private_redis
    h = make_harness(redis_url=url, **fast_recovery(lease_ttl=10))
    h.worker_proc = h.start_worker()
    refs = [tag(h, f"outage{i}") for i in range(3)]
    ids = [detach(h, dockerfile(tmp_path, base(services), f"RUN echo job-{i} && sleep 2"), "-t", ref)
           for i, ref in enumerate(refs)]
    wait_log(h, ids[0], "job-0")
    restart(down_for=2.0)
    finals = [wait_finished(h, job_id, 180) for job_id in ids]
    assert [f["status"] for f in finals] == ["succeeded"] * 3, [f["error"] for f in finals]
    for final, ref in zip(finals, refs, strict=True):
        assert final["images"][0]["digest"] == registry_digest(services, ref)
        assert log_of(h, final["id"]).count("[runner] succeeded") == 1


# -- 5. registry trouble ----------------------------------------------------------------------------------
@pytest.fixture
def spare_registry(services, tmp_path):
    """A second htpasswd registry on its own port, started and stopped by the test."""
    port = 15100 + os.getpid() % 500
    state_dir = Path(services["RUNNER_DEV_STATE"])
    config = tmp_path / "registry.yml"
    config.write_text(f"""version: 0.1
log: {{level: error}}
storage: {{filesystem: {{rootdirectory: {tmp_path / 'data'}}}}}
http: {{addr: 127.0.0.1:{port}}}
auth: {{htpasswd: {{realm: spare, path: {state_dir / 'registry' / 'htpasswd'}}}}}
""")
    procs: list[subprocess.Popen] = []

    def start() -> None:
        procs.append(subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    yield f"127.0.0.1:{port}", start
    for proc in procs:
        proc.terminate()
        proc.wait(20)


def registries_with(services, host: str, **options) -> list[dict]:
    creds = {"username": services["RUNNER_DEV_REGISTRY_USER"], "password": services["RUNNER_DEV_REGISTRY_PASSWORD"]}
    return [{"host": services["RUNNER_DEV_REGISTRY"], **creds}, {"host": host, **creds, **options}]


def test_push_retries_until_the_registry_is_back(make_harness, services, tmp_path, spare_registry):
    host, start_registry = spare_registry
    h = make_harness(registries=registries_with(services, host))
    h.worker_proc = h.start_worker()
    ref = f"{host}/reliability/retry:1"
    job_id = detach(h, dockerfile(tmp_path, base(services), "RUN echo retry > /r"), "-t", ref)
    wait_log(h, job_id, "; attempt 2 in 1 s", 60)
    start_registry()
    final = wait_finished(h, job_id, 60)
    assert final["status"] == "succeeded", final["error"]
    assert final["images"][0]["digest"] == registry_digest(services, ref)


def test_registry_down_fails_as_infrastructure_after_retries(make_harness, services, tmp_path, spare_registry):
    """Retries end once the next attempt would start past push_retry_seconds after the first
    failure: with 3 s, attempts at 0 and 1 s (the next would wait 2 s more)."""
    host, _ = spare_registry
    h = make_harness(registries=registries_with(services, host, push_retry_seconds=3))
    h.worker_proc = h.start_worker()
    job_id = detach(h, dockerfile(tmp_path, base(services), "RUN echo down > /d"), "-t", f"{host}/reliability/down:1")
    final = wait_finished(h, job_id, 90)
    assert final["status"] == "failed" and final["error"]["kind"] == "infrastructure"
    assert re.search(rf"failed after 2 attempt\(s\) \(retried for \d+ s, registries\[{re.escape(host)}\]\.push_retry_seconds is 3\)",
                     final["error"]["message"]), final["error"]["message"]


# -- 6. engine down ------------------------------------------------------------------------------------
def test_engine_down_is_a_clear_infrastructure_error(make_harness, services, tmp_path):
    h = make_harness(executors={"socket": {"enabled": True, "docker_host": "unix:///nonexistent/docker.sock"}})
    h.worker_proc = h.start_worker("--queues", f"{h.config['worker']['namespace']}.socket")
    job_id = detach(h, dockerfile(tmp_path, base(services), "RUN true"), "-t", tag(h, "noengine"))
    final = wait_finished(h, job_id, 60)
    assert final["status"] == "failed" and final["error"]["kind"] == "infrastructure"
    assert "unix:///nonexistent/docker.sock" in final["error"]["message"] and "unreachable" in final["error"]["message"]
    assert final["attempts"] == 1


def test_engine_down_with_requeue_policy_retries_then_fails(make_harness, services, tmp_path):
    h = make_harness(executors={"socket": {"enabled": True, "docker_host": "unix:///nonexistent/docker.sock"}},
                     limits={"max_attempts": 2}, worker={"engine_down_policy": "requeue"})
    h.worker_proc = h.start_worker("--queues", f"{h.config['worker']['namespace']}.socket")
    job_id = detach(h, dockerfile(tmp_path, base(services), "RUN true"), "-t", tag(h, "requeue"))
    final = wait_finished(h, job_id, 60)
    assert final["status"] == "failed" and final["attempts"] == 2
    assert "requeued: infrastructure error" in log_of(h, job_id)


# -- 7. graceful shutdown ---------------------------------------------------------------------------------
@SLOW
def test_sigterm_lets_short_jobs_finish(make_harness, services, tmp_path):
    h = make_harness(worker={"shutdown_grace": 20, "concurrency": 1})
    worker = h.start_worker()
    job_id = detach(h, dockerfile(tmp_path, base(services), "RUN echo short-job && sleep 2"), "-t", tag(h, "short"))
    wait_log(h, job_id, "short-job")
    os.killpg(worker.pid, signal.SIGTERM)
    worker.wait(60)
    assert record(h, job_id)["status"] == "succeeded"


@SLOW
def test_sigterm_requeues_what_outlives_the_grace(make_harness, services, tmp_path):
    h = make_harness(worker={"shutdown_grace": 1, "concurrency": 1})
    worker = h.start_worker()
    job_id = detach(h, dockerfile(tmp_path, base(services), "RUN echo long-job && sleep 6 && echo done > /d"), "-t", tag(h, "long"))
    wait_log(h, job_id, "long-job")
    os.killpg(worker.pid, signal.SIGTERM)
    worker.wait(60)
    after = record(h, job_id)
    assert after["status"] == "queued" and after["attempts"] == 0
    assert "requeued: the worker is shutting down" in log_of(h, job_id)
    h.worker_proc = h.start_worker()
    final = wait_finished(h, job_id, 120)
    assert final["status"] == "succeeded" and final["attempts"] == 1


# -- 8. reaper -------------------------------------------------------------------------------------------
def test_reaper_removes_leftovers_of_finished_jobs_only(make_harness, services, tmp_path):
    from runner.core.jobs import BuildRequest, JobRecord, Status
    from runner.core.labels import LABEL_EXECUTOR, LABEL_JOB, LABEL_NAMESPACE
    from runner.worker.reaper import reap
    from runner.worker.worker import Worker

    h = make_harness(executors={"socket": {"enabled": True}, "dind": {"enabled": True}})
    store, settings, ns = h.store, h.settings, h.config["worker"]["namespace"]
    done, live = f"done-{uuid.uuid4().hex[:6]}", f"live-{uuid.uuid4().hex[:6]}"
    for job_id, status in ((done, Status.failed), (live, Status.running)):
        store.create(JobRecord(id=job_id, request=BuildRequest(tags=[f"{h.registry()}/x/y:1"]), executor="socket",
                               queue="q", status=status))
        (settings.worker.workspace / job_id).mkdir(parents=True)
    store.acquire_lease(live, "some-live-worker", 30)
    names = {}
    for job_id in (done, live):
        names[job_id] = f"reaper-test-{job_id}"
        subprocess.run(["docker", "create", "--name", names[job_id], "--label", f"{LABEL_JOB}={job_id}", "--label", f"{LABEL_EXECUTOR}=dind",
                        "--label", f"{LABEL_NAMESPACE}={ns}", base(services), "true"], check=True, capture_output=True)
    try:
        reaped = reap(Worker(settings, worker_id="test-reaper"))
        assert done in reaped and live not in reaped
        present = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True).stdout.split()
        assert names[done] not in present and names[live] in present
        assert not (settings.worker.workspace / done).exists() and (settings.worker.workspace / live).exists()
    finally:
        subprocess.run(["docker", "rm", "-f", *names.values()], capture_output=True)
        store.release_lease(live, "some-live-worker")


# -- 9. secrets -----------------------------------------------------------------------------------------
def test_secret_build_arg_is_masked_everywhere(harness, services, tmp_path):
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    ctx = dockerfile(tmp_path, base(services), "ARG TOKEN\nRUN echo token is $TOKEN && echo half:${TOKEN%??????????}")
    argv = ["submit", str(ctx), "-t", tag(harness, "secret"), "--secret-build-arg", "TOKEN", "--json"]
    result = subprocess.run([RUNNER, *argv], env={**harness.env, "TOKEN": secret}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    final = json.loads(result.stdout)
    log = log_of(harness, final["id"])
    assert "token is ***" in log
    assert secret not in log and secret not in result.stdout and secret not in result.stderr
    assert final["request"]["build_args"]["TOKEN"] == "***"
    assert secret not in harness.store.r.get(f"{harness.store.ns}:job:{final['id']}")
    assert harness.store.load_secrets(final["id"]) == {}  # the values are gone once the job ends
    refused = harness.cli("submit", str(ctx), "-t", tag(harness, "secret"), "--secret-build-arg", f"TOKEN={secret}")
    assert refused.returncode == 2 and "never on the command line" in refused.stderr and secret not in refused.stderr


def test_masking_survives_chunk_boundaries_and_caps_the_log(harness):
    from runner.store.joblog import JobLog

    job_id = f"mask-{uuid.uuid4().hex[:6]}"
    log = JobLog(harness.store, job_id, ["hunter2-password"], max_bytes=400)
    for chunk in ["line one has hunt", "er2-pass", "word in it\nsecond ", "line\n"]:
        log.write(chunk)
    for n in range(50):
        log.line(f"filler line {n}")
    log.close()
    lines = list(harness.store.read_log(job_id))
    assert lines[0] == "line one has *** in it" and lines[1] == "second line"  # the head stays
    assert sum("only the last" in line for line in lines) == 1  # one marker between head and tail
    assert lines[-2] == "filler line 49" and "were dropped" in lines[-1]  # the tail stays, and says what went
    assert len(lines) < 40 and sum(len(line) + 1 for line in lines) < 400 + 300
    assert not any("hunter2" in line for line in lines)


def test_log_cap_keeps_head_and_tail(make_harness, services, tmp_path):
    h = make_harness(limits={"max_log_bytes": 6000, "max_log_lines": 400})
    h.worker_proc = h.start_worker()
    job_id = detach(h, dockerfile(tmp_path, base(services), "RUN seq 1 5000 | sed 's/^/n=/'"), "-t", tag(h, "biglog"))
    final = wait_finished(h, job_id)
    assert final["status"] == "succeeded"
    lines = log_of(h, job_id).splitlines()
    assert "running on" in lines[0]  # the [runner] header survives
    assert sum("only the last" in line for line in lines) == 1
    numbers = [line.rsplit("n=", 1)[1] for line in lines if "n=" in line and line.rsplit("n=", 1)[1].isdigit()]
    assert "5000" in numbers and "2500" not in numbers  # the end of the output is kept, the middle is not
    assert "succeeded" in lines[-1] and any("were dropped" in line for line in lines[-3:])
    assert len(lines) <= 400 + 30 and sum(len(line) + 1 for line in lines) <= 6000 + 800


# -- 10. hostile input ------------------------------------------------------------------------------------
def test_worker_survives_garbage_messages(harness, services, tmp_path):
    ns = harness.config["worker"]["namespace"]
    queue = f"{ns}.socket"
    garbage = ["not json at all", json.dumps({"body": "!!!", "headers": {"task": "runner.build"}}),
               json.dumps({"body": "W1t7fV0sIHt9LCB7fV0=", "content-encoding": "utf-8", "content-type": "application/json",
                           "headers": {"lang": "py", "task": "runner.build", "id": "garbage-1"},
                           "properties": {"delivery_tag": "g1", "body_encoding": "base64",
                                          "delivery_info": {"exchange": "", "routing_key": queue}}})]
    for message in garbage:
        harness.store.r.lpush(queue, message)
    ref = tag(harness, "aftergarbage")
    result = harness.cli("submit", str(dockerfile(tmp_path, base(services), "RUN echo fine")), "-t", ref)
    assert result.returncode == 0, result.stderr
    assert harness.worker_proc.poll() is None


# -- 11. concurrency, FIFO and routing ---------------------------------------------------------------------
def max_overlap(records: list[dict]) -> int:
    events = sorted([(r["started_at"], 1) for r in records] + [(r["finished_at"], -1) for r in records],
                    key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


@SLOW
def test_concurrency_n_runs_at_most_n_and_fifo(make_harness, services, tmp_path):
    h = make_harness(worker={"concurrency": 2})
    ids = [detach(h, dockerfile(tmp_path, base(services), f"RUN echo c{i} && sleep 2"), "-t", tag(h, f"conc{i}")) for i in range(5)]
    h.worker_proc = h.start_worker()
    finals = [wait_finished(h, job_id, 120) for job_id in ids]
    assert all(f["status"] == "succeeded" for f in finals)
    assert max_overlap(finals) == 2
    starts = [f["started_at"] for f in finals]
    assert starts[0] <= starts[2] and starts[1] <= starts[3] <= starts[4]  # FIFO, two lanes


def test_worker_takes_only_its_queues(make_harness, services, tmp_path):
    h = make_harness(executors={"socket": {"enabled": True}, "img": {"enabled": True}})
    ns = h.config["worker"]["namespace"]
    h.worker_proc = h.start_worker("--queues", f"{ns}.socket")
    other = detach(h, dockerfile(tmp_path, base(services), "RUN true"), "-t", tag(h, "img"), "--executor", "img")
    mine = detach(h, dockerfile(tmp_path, base(services), "RUN true"), "-t", tag(h, "sock"), "--executor", "socket")
    assert wait_finished(h, mine)["status"] == "succeeded"
    assert record(h, other)["status"] == "queued" and h.store.r.llen(f"{ns}.img") == 1


def test_enabled_but_unusable_executor_fails_its_jobs_at_once(make_harness, services, tmp_path):
    """img is enabled but cannot be installed here: its jobs must fail fast, not wait for ever."""
    h = make_harness(executors={"socket": {"enabled": True}, "img": {"enabled": True, "binary": "img-not-installed"}})
    h.worker_proc = h.start_worker()
    job_id = detach(h, dockerfile(tmp_path, base(services), "RUN true"), "-t", tag(h, "noimg"), "--executor", "img")
    final = wait_finished(h, job_id, 30)
    assert final["status"] == "failed" and final["error"]["kind"] == "infrastructure"
    assert "cannot work on this worker" in final["error"]["message"] and "img" in final["error"]["message"]
    assert h.worker_proc.poll() is None


def test_attempt_whose_lease_was_taken_over_stops_without_recording(make_harness, services, tmp_path):
    """After an outage longer than the lease, another worker may have recovered the job: the
    old attempt must stop and leave the record to the new one (no double result)."""
    h = make_harness(**fast_recovery())
    h.worker_proc = h.start_worker()
    job_id = detach(h, dockerfile(tmp_path, base(services), "RUN echo takeover && sleep 30"), "-t", tag(h, "takeover"))
    wait_log(h, job_id, "takeover")
    store = h.store
    store.r.set(f"{store.ns}:lease:{job_id}", "other-worker", px=60_000)
    store.update(job_id, lambda r: r.model_copy(update={"worker": "other-worker"}))
    wait_log(h, job_id, "another worker took the job over", 30)
    time.sleep(1)
    after = record(h, job_id)
    assert after["status"] == "running" and after["worker"] == "other-worker"
    assert "[runner] failed" not in log_of(h, job_id) and "[runner] cancelled" not in log_of(h, job_id)
    from runner.core.jobs import Status
    from runner.entry.control import cancel_job

    store.r.delete(f"{store.ns}:lease:{job_id}")
    cancel_job(store, job_id)  # let the reaper of this harness tidy up; the record is ours to end
    store.update(job_id, lambda r: r.model_copy(update={"status": Status.cancelled}))

"""The spine end to end through the real CLI and a real worker: exit codes, what is queued,
the raw queue message any CI can post, idempotency, and the read commands."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT, registry_digest, run_image


def context(tmp_path: Path, base: str, extra: str = "") -> Path:
    (tmp_path / "Dockerfile").write_text(f"FROM {base}\nARG GREETING=none\nRUN echo \"$GREETING\" > /greeting\n{extra}")
    return tmp_path


def image(harness, name: str) -> str:
    return f"{harness.registry()}/spine/{name}:{uuid.uuid4().hex[:8]}"


def queue_length(harness) -> int:
    store = harness.store
    return sum(store.r.llen(f"{store.ns}.{name}") for name in ("socket", "buildah", "dind", "sysbox", "img"))


def job_count(harness) -> int:
    return harness.store.r.zcard(f"{harness.store.ns}:jobs")


@pytest.mark.parametrize("args, words", [
    (["-t", "no-registry-here"], "tags"),
    ([], "tags"),
    (["-t", "{reg}/a:1", "-f", "../Dockerfile"], "dockerfile"),
    (["-t", "{reg}/a:1", "--executor", "warp-drive"], "unknown executor"),
    (["-t", "{reg}/a:1", "--executor", "img"], "not enabled"),
    (["-t", "forbidden.example.com/a:1"], "not allowed"),
    (["-t", "{reg}/a:1", "--build-arg", "NOEQUALS"], "KEY=VALUE"),
    (["-t", "{reg}/a:1", "--timeout", "999999"], "timeout"),
    (["-t", "{reg}/a:1", "-f", "Missing.Dockerfile"], "not found"),
])
def test_invalid_input_exits_2_and_queues_nothing(harness, tmp_path, args, words):
    before_jobs, before_queue = job_count(harness), queue_length(harness)
    args = [a.replace("{reg}", harness.registry()) for a in args]
    result = harness.cli("submit", str(context(tmp_path, "x")), *args)
    assert result.returncode == 2, result.stderr
    assert words in result.stderr
    assert "Traceback" not in result.stderr
    assert (job_count(harness), queue_length(harness)) == (before_jobs, before_queue)


def test_context_over_the_cap_is_refused(make_harness, tmp_path):
    small = make_harness(limits={"max_context_bytes": 20_000})
    ctx = context(tmp_path, "x")
    (ctx / "big.bin").write_bytes(b"\0" * 50_000)
    result = small.cli("submit", str(ctx), "-t", f"{small.registry()}/spine/big:1")
    assert result.returncode == 2 and "over the limit of 20,000 bytes" in result.stderr
    assert small.store.r.zcard(f"{small.store.ns}:jobs") == 0
    assert not list(small.store.raw.scan_iter(f"{small.store.ns}:ctx:*"))


def test_follow_streams_the_log_and_prints_digests(harness, tmp_path, services):
    ref = image(harness, "follow")
    result = harness.cli("submit", str(context(tmp_path, services["RUNNER_DEV_BASE_IMAGE"])), "-t", ref,
                         "--build-arg", "GREETING=followed", "--follow")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any("running on" in line for line in lines)
    digest = registry_digest(services, ref)
    assert lines[-1] == f"{ref}@{digest}"
    assert run_image(ref, "cat", "/greeting").strip() == "followed"


def test_detach_then_status_logs_list(harness, tmp_path, services):
    ref = image(harness, "detach")
    result = harness.cli("submit", str(context(tmp_path, services["RUNNER_DEV_BASE_IMAGE"])), "-t", ref, "--detach")
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        record = json.loads(harness.cli("status", job_id, "--json").stdout)
        if record["status"] not in ("queued", "running"):
            break
        time.sleep(0.3)
    assert record["status"] == "succeeded"
    assert record["attempts"] == 1 and record["worker"] and record["started_at"] and record["finished_at"]
    assert record["images"][0]["digest"] == registry_digest(services, ref)
    assert "succeeded" in harness.cli("logs", job_id).stdout
    listed = json.loads(harness.cli("list", "--status", "succeeded", "--json").stdout)
    assert job_id in [r["id"] for r in listed]
    assert job_id in harness.cli("list").stdout


def test_same_job_id_twice_builds_once(harness, tmp_path, services):
    job_id = f"dup-{uuid.uuid4().hex[:8]}"
    ctx = context(tmp_path, services["RUNNER_DEV_BASE_IMAGE"])
    first = harness.cli("submit", str(ctx), "-t", image(harness, "dup"), "--id", job_id, "--json")
    second = harness.cli("submit", str(ctx), "-t", image(harness, "dup"), "--id", job_id, "--json")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "already exists" in second.stderr
    # the same message delivered twice to the queue (as a redelivery would) still builds once
    from runner.core.jobs import BuildRequest
    from runner.worker.queue import enqueue, make_app

    record = json.loads(first.stdout)
    enqueue(make_app(harness.settings), BuildRequest.model_validate({**record["request"]}), record["queue"])
    time.sleep(2)
    log = harness.cli("logs", job_id).stdout
    assert log.count("running on") == 1
    assert json.loads(harness.cli("status", job_id, "--json").stdout)["attempts"] == 1


def test_raw_queue_message_from_redis_cli_is_built(harness, tmp_path, services):
    """examples/queue-post.sh is the README's non-Python example: redis-cli, tar, base64."""
    ref = image(harness, "rawpost")
    ctx = context(tmp_path, services["RUNNER_DEV_BASE_IMAGE"])
    ns = harness.settings.worker.namespace
    posted = subprocess.run(["sh", str(ROOT / "examples" / "queue-post.sh"), str(ctx), ref, f"{ns}.socket", ns],
                            capture_output=True, text=True, timeout=30)
    assert posted.returncode == 0, posted.stderr
    job_id = posted.stdout.strip()
    deadline = time.monotonic() + 120
    record = None
    while time.monotonic() < deadline:
        out = harness.cli("status", job_id, "--json")
        if out.returncode == 0 and json.loads(out.stdout)["status"] not in ("queued", "running"):
            record = json.loads(out.stdout)
            break
        time.sleep(0.3)
    assert record and record["status"] == "succeeded", record
    assert record["images"][0]["digest"] == registry_digest(services, ref)
    assert run_image(ref, "cat", "/greeting").strip() == "posted by redis-cli"


def test_config_show_redacts_secrets(harness):
    out = harness.cli("config", "show")
    assert out.returncode == 0
    assert harness.services["RUNNER_DEV_REGISTRY_PASSWORD"] not in out.stdout
    assert "wrong-password" not in out.stdout and "**********" in out.stdout


def test_doctor_reports_each_check(harness, make_harness):
    out = harness.cli("doctor")
    assert out.returncode == 0, out.stdout
    assert "redis" in out.stdout and "docker engine" in out.stdout and f"registry {harness.registry()}" in out.stdout
    assert "executor socket (enabled)" in out.stdout and "root-equivalent" in out.stdout
    assert "FAIL registry localhost:5000: registry localhost:5000 refused our credentials" in out.stdout
    broken = make_harness(executors={"socket": {"enabled": True, "docker_host": "unix:///nonexistent/docker.sock"}})
    out = broken.cli("doctor")
    assert out.returncode == 3 and "FAIL" in out.stdout and "executor socket" in out.stdout  # infrastructure


def test_unreachable_redis_exits_3(make_harness, tmp_path):
    offline = make_harness(redis_url="redis://127.0.0.1:1/0")
    result = offline.cli("submit", str(context(tmp_path, "x")), "-t", f"{offline.registry()}/spine/x:1")
    assert result.returncode == 3 and "unreachable" in result.stderr

"""BuildKit cases of the contract suite, on every engine-backed executor that can run here.

Real CLI, real worker, real Docker Engine: BuildKit is the default builder where the engine
supports it (API >= 1.39 on Linux, as here), so these jobs pass no --builder."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
import uuid

import pytest

from tests.conftest import run_image
from tests.contract.test_contract import base, ref, submit, write
from tests.support import all_support

SUPPORT = all_support()
SECRET_VALUE = "npm-token-" + uuid.uuid4().hex
OTHER_SECRET = "other-token-" + uuid.uuid4().hex


def engine_params():
    for name, support in SUPPORT.items():
        if support.engine:
            reason = support.skip_reason()
            yield pytest.param(name, id=name, marks=[pytest.mark.skip(reason=reason)] if reason else [])


@pytest.fixture(params=list(engine_params()))
def executor(request) -> str:
    return request.param


def job_log(harness, job_id: str) -> str:
    return "\n".join(harness.store.read_log(job_id))


def wait_until(predicate, timeout: float, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(step)
    return predicate()


def running_processes(marker: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line and "ps -eo" not in line]


def test_buildkit_is_the_default_and_logs_read_like_progress_plain(harness, executor, tmp_path):
    ctx = write(tmp_path, {"Dockerfile": f"FROM {base(harness)}\nRUN echo plain-progress-line && echo to-stderr >&2 && echo {uuid.uuid4().hex}\n"})
    result, record = submit(harness, executor, ctx, "-t", ref(harness, executor, "plain"), "--no-push")
    assert result.returncode == 0, result.stderr + result.stdout
    log = job_log(harness, record["id"])
    assert "[runner] building with the buildkit builder" in log
    step = re.search(r"^#(\d+) \[2/2\] RUN echo plain-progress-line", log, re.M)
    assert step, log
    n = step[1]
    assert re.search(rf"^#{n} \d+\.\d{{3}} plain-progress-line$", log, re.M), log
    assert re.search(rf"^#{n} \d+\.\d{{3}} to-stderr$", log, re.M), log
    assert re.search(rf"^#{n} DONE \d+\.\ds$", log, re.M), log
    assert "Step 1/2" not in log  # the classic builder's format


def test_classic_builder_still_chosen_per_job(harness, executor, tmp_path):
    ctx = write(tmp_path, {"Dockerfile": f"FROM {base(harness)}\nRUN echo classic > /c\n"})
    result, record = submit(harness, executor, ctx, "-t", ref(harness, executor, "classic"), "--builder", "classic")
    assert result.returncode == 0, result.stderr + result.stdout
    log = job_log(harness, record["id"])
    assert "[runner] building with the classic builder" in log and "Step 2/2 : RUN echo classic > /c" in log


def test_cache_mount_is_reused_across_builds(harness, executor, tmp_path):
    if SUPPORT[executor].extra.get("engine_per_job"):
        pytest.skip(f"{executor} starts a fresh engine per job, so its BuildKit cache does not outlive a job")
    cache_id, token = uuid.uuid4().hex, uuid.uuid4().hex
    ctx = write(tmp_path, {"Dockerfile": (
        f"FROM {base(harness)}\nARG RUN_NO\n"
        f"RUN --mount=type=cache,target=/cache,id={cache_id} "
        f"if [ -f /cache/seen ]; then echo found-cached-file-$RUN_NO; cp /cache/seen /result; "
        f"else echo cache-empty-$RUN_NO; echo {token} > /cache/seen; echo none > /result; fi\n")})
    image = ref(harness, executor, "cachemount")
    first, record1 = submit(harness, executor, ctx, "-t", image, "--build-arg", "RUN_NO=1")
    assert first.returncode == 0, first.stderr + first.stdout
    assert "cache-empty-1" in job_log(harness, record1["id"])
    second, record2 = submit(harness, executor, ctx, "-t", image, "--build-arg", "RUN_NO=2")
    assert second.returncode == 0, second.stderr + second.stdout
    assert "found-cached-file-2" in job_log(harness, record2["id"])
    assert run_image(image, "cat", "/result").strip() == token  # the file the first build left in the cache


def test_unused_failing_stage_is_skipped(harness, executor, tmp_path):
    ctx = write(tmp_path, {"Dockerfile": (
        f"FROM {base(harness)} AS broken\nRUN echo in-broken-stage && exit 7\n"
        f"FROM {base(harness)} AS final\nRUN echo final-stage > /final\n")})
    image = ref(harness, executor, "skipstage")
    result, record = submit(harness, executor, ctx, "-t", image)
    assert result.returncode == 0, result.stderr + result.stdout
    assert record["status"] == "succeeded"
    log = job_log(harness, record["id"])
    assert "in-broken-stage" not in log and "[broken" not in log
    assert run_image(image, "cat", "/final").strip() == "final-stage"


def test_failing_step_is_named_in_the_error(harness, executor, tmp_path):
    ctx = write(tmp_path, {"Dockerfile": (
        f"FROM {base(harness)} AS build\nRUN echo compiling\nRUN echo about-to-fail && exit 3\n"
        f"FROM {base(harness)}\nCOPY --from=build /bin/sh /sh-copy\n")})
    result, record = submit(harness, executor, ctx, "-t", ref(harness, executor, "bkfails"))
    assert result.returncode == 1
    assert record["status"] == "failed" and record["error"]["kind"] == "build"
    message = record["error"]["message"]
    assert message.startswith("build failed at [build 3/3] RUN echo about-to-fail && exit 3: "), message
    assert "exit code: 3" in message
    log = job_log(harness, record["id"])
    step = re.search(r"^#(\d+) \[build 3/3\] RUN echo about-to-fail && exit 3$", log, re.M)
    assert step, log
    assert re.search(rf"^#{step[1]} ERROR: .*exit code: 3$", log, re.M), log
    assert " > [build 3/3] RUN echo about-to-fail && exit 3:" in log  # the buildx-style failure summary


def test_from_image_only_in_the_registry_is_pulled_with_configured_credentials(harness, executor, tmp_path):
    """The engine pulls FROM through our BuildKit session, which answers with the config's login."""
    source = f"{harness.registry(SUPPORT[executor].registry_key)}/contract/{executor}-pullsrc:{uuid.uuid4().hex[:10]}"
    marker = uuid.uuid4().hex
    built = subprocess.run(["docker", "build", "-q", "-t", source, "-"], input=f"FROM {base(harness)}\nRUN echo {marker} > /marker\n",
                           text=True, capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "0"}, timeout=120)
    assert built.returncode == 0, built.stderr
    try:
        pushed = subprocess.run(["docker", "push", source], capture_output=True, text=True, timeout=120)
        assert pushed.returncode == 0, pushed.stderr
    finally:
        subprocess.run(["docker", "rmi", source], capture_output=True)
    ctx = write(tmp_path, {"Dockerfile": f"FROM {source}\nRUN cat /marker > /copied\n"})
    image = ref(harness, executor, "pulled")
    try:
        result, record = submit(harness, executor, ctx, "-t", image)
    finally:
        subprocess.run(["docker", "rmi", "-f", source], capture_output=True)
    assert result.returncode == 0, result.stderr + result.stdout
    assert run_image(image, "cat", "/copied").strip() == marker


def test_cancel_stops_a_long_run_within_five_seconds(harness, executor, tmp_path):
    marker = f"sleep {1000 + uuid.uuid4().int % 8000}"
    ctx = write(tmp_path, {"Dockerfile": f"FROM {base(harness)}\nRUN echo long-step-started && {marker}\n"})
    result = harness.cli("submit", str(ctx), "--executor", executor, "-t", ref(harness, executor, "cancel"), "--detach")
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert wait_until(lambda: "long-step-started" in job_log(harness, job_id), 120), job_log(harness, job_id)
    assert wait_until(lambda: running_processes(marker), 10), "the RUN step's process never showed up"
    started = time.monotonic()
    assert harness.cli("cancel", job_id).returncode == 0
    record = wait_until(lambda: (r := harness.store.get(job_id)) and r.finished and r, 10)
    took = time.monotonic() - started
    assert record and record.status.value == "cancelled", record
    assert took < 5, f"cancel took {took:.1f}s"
    assert wait_until(lambda: not running_processes(marker), 5), running_processes(marker)
    assert "stopping BuildKit build" in job_log(harness, job_id)


def test_timeout_stops_a_long_run(harness, executor, tmp_path):
    marker = f"sleep {1000 + uuid.uuid4().int % 8000}"
    ctx = write(tmp_path, {"Dockerfile": f"FROM {base(harness)}\nRUN echo slow && {marker}\n"})
    started = time.monotonic()
    result, record = submit(harness, executor, ctx, "-t", ref(harness, executor, "timeout"), "--timeout", "4")
    took = time.monotonic() - started
    assert record and record["status"] == "timed_out" and record["error"]["kind"] == "timeout", result.stderr
    assert took < 4 + 8, f"timeout took {took:.1f}s"
    assert wait_until(lambda: not running_processes(marker), 5), running_processes(marker)


@pytest.fixture
def secret_harness(make_harness):
    h = make_harness(build_secrets={"npmrc": SECRET_VALUE, "deploy_key": OTHER_SECRET})
    h.worker_proc = h.start_worker()
    return h


def image_bytes_contain(image: str, needle: bytes) -> bool:
    """Pull the pushed image and search every byte of it (layers, config, history)."""
    subprocess.run(["docker", "pull", image], capture_output=True, check=True, timeout=120)
    try:
        saved = subprocess.run(["docker", "save", image], capture_output=True, check=True, timeout=120).stdout
    finally:
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True)
    return needle in saved


def test_build_secret_reaches_the_run_mount_and_nothing_else(secret_harness, executor, tmp_path):
    h = secret_harness
    ctx = write(tmp_path, {"Dockerfile": (
        f"FROM {base(h)}\nRUN echo {uuid.uuid4().hex} > /nonce\n"  # no layer cache: BuildKit keys no secret content
        "RUN --mount=type=secret,id=npmrc busybox sha256sum /run/secrets/npmrc | cut -c1-64 > /secret.sha "
        "&& cat /run/secrets/npmrc && echo\n"
        "RUN cat /run/secrets/npmrc 2>/dev/null || echo secret-gone-in-next-step\n")})
    image = ref(h, executor, "secret")
    result, record = submit(h, executor, ctx, "-t", image, "--secret", "id=npmrc")
    assert result.returncode == 0, result.stderr + result.stdout
    assert run_image(image, "cat", "/secret.sha").strip() == hashlib.sha256(SECRET_VALUE.encode()).hexdigest()
    log = job_log(h, record["id"])
    assert SECRET_VALUE not in log and "***" in log  # the cat printed it; the log masks it
    assert "secret-gone-in-next-step" in log
    assert SECRET_VALUE not in json.dumps(h.store.get(record["id"]).model_dump(mode="json"))
    assert not image_bytes_contain(image, SECRET_VALUE.encode())


def test_a_job_gets_only_the_secrets_it_names(secret_harness, executor, tmp_path):
    h = secret_harness
    ctx = write(tmp_path, {"Dockerfile": (
        f"FROM {base(h)}\nRUN echo {uuid.uuid4().hex} > /nonce\n"
        "RUN --mount=type=secret,id=deploy_key,required=true cat /run/secrets/deploy_key\n")})
    result, record = submit(h, executor, ctx, "-t", ref(h, executor, "secretscope"), "--secret", "id=npmrc")
    assert result.returncode == 1, result.stdout
    assert record["status"] == "failed" and record["error"]["kind"] == "build"
    assert "deploy_key" in record["error"]["message"] and "not found" in record["error"]["message"]
    assert OTHER_SECRET not in job_log(h, record["id"])

"""Decompression and header bombs against a real buildah worker (venv Python and Debian's
python3): each is refused as `invalid` with a message naming the limit, a cancel stops a long
check, and the worker builds the next job. Refusal time, peak RSS and disk are measured by
bench/bench_hostile.py, not asserted here."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import RunnerHarness, cleanup_namespace, new_harness, registry_digest, wait_cleaned
from tests.hostile.context_support import post_raw, start_api, stop, wait_finished, wait_status
from tests.hostile.context_tars import (
    empty_members,
    file,
    global_header_flood,
    gzip_member_bomb,
    pax_header_bomb,
    tar_of,
)
from tests.support.buildah import skip_reason

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")

TOKEN = "bombs-" + uuid.uuid4().hex
MAX_BYTES = 2 * 1024**3  # room for the long check below; the bombs go far past it
MAX_FILES = 1000


@pytest.fixture(scope="module")
def bombs(services, tmp_path_factory, worker_runner) -> Iterator[tuple[RunnerHarness, str]]:
    harness = new_harness(services, tmp_path_factory, default_executor="buildah",
                          limits={"max_context_bytes": MAX_BYTES, "max_context_files": MAX_FILES},
                          api={"tokens": [{"name": "ci", "token": TOKEN, "rights": ["submit", "read", "cancel"]}]})
    harness.worker_proc = harness.start_worker("--queues", f"{harness.settings.worker.namespace}.buildah",
                                               runner=worker_runner)
    api, url = start_api(harness)
    try:
        yield harness, url
    finally:
        stop(api)
        harness.stop_worker(harness.worker_proc)
        cleanup_namespace(harness)


def job(harness: RunnerHarness, name: str) -> dict:
    return {"id": f"{name}-{uuid.uuid4().hex[:12]}", "executor": "buildah",
            "tags": [f"{harness.registry()}/bombs/{name}:{uuid.uuid4().hex[:8]}"]}


def refused(harness: RunnerHarness, job_id: str, *words: str) -> dict:
    record = wait_finished(harness.store, job_id)
    assert record["status"] == "failed" and record["error"]["kind"] == "invalid", record
    for word in words:
        assert word in record["error"]["message"], record["error"]["message"]
    assert str(harness.workdir) not in record["error"]["message"]
    assert harness.worker_proc.poll() is None, "the worker died"
    wait_cleaned(harness, job_id)
    assert not (harness.settings.worker.workspace / job_id).exists()  # nothing left on disk
    return record


def test_a_10_gib_gzip_member_is_refused(bombs):
    harness, _ = bombs
    bomb = gzip_member_bomb(10 * 1024**3)  # ~10 MB of multi-member gzip
    assert len(bomb) < 16 * 1024**2
    posted = job(harness, "gzip-bomb")
    post_raw(harness.store, posted, harness.settings.queue_for("buildah"), [bomb])
    refused(harness, posted["id"], f"over the limit of {MAX_BYTES:,} bytes uncompressed",
            "'zeros.bin' alone declares 10,737,418,240", "(limits.max_context_bytes)")


def test_a_1_gib_pax_header_uploaded_through_the_api_is_refused(bombs):
    harness, url = bombs
    bomb = pax_header_bomb(1024**3)  # ~1 MB of gzip
    posted = job(harness, "pax-bomb")
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as client:
        assert client.post(f"/v1/jobs/{posted['id']}/context", content=bomb).status_code == 201
        assert client.post("/v1/jobs", json=posted).status_code == 202
    refused(harness, posted["id"], "PAX header data of 1,073,741,824 bytes", "(limits.max_context_header_bytes)")


def test_many_empty_members_are_refused(bombs):
    harness, _ = bombs
    posted = job(harness, "members")
    post_raw(harness.store, posted, harness.settings.queue_for("buildah"), empty_members(50 * MAX_FILES, per_block=5000))
    refused(harness, posted["id"], f"more than {MAX_FILES:,} members (limits.max_context_files)")


def test_cancel_stops_a_long_check(bombs):
    """1.5 GiB of global PAX headers (within the limits, nothing written) then a Dockerfile:
    cancelled while the check runs, the job ends `cancelled` and never reaches the build."""
    harness, _ = bombs
    posted = job(harness, "cancel")
    post_raw(harness.store, posted, harness.settings.queue_for("buildah"), global_header_flood(1_500_000))
    wait_status(harness.store, posted["id"], "running")
    assert harness.cli("cancel", posted["id"]).returncode == 0
    record = wait_finished(harness.store, posted["id"])
    assert record["status"] == "cancelled", record
    log = harness.cli("logs", posted["id"]).stdout
    assert "running on" in log and "[runner] context:" not in log  # stopped inside the check
    assert harness.worker_proc.poll() is None


def test_the_worker_still_builds_the_next_job(bombs, services):
    harness, _ = bombs
    posted = job(harness, "next")
    dockerfile = f"FROM {services['RUNNER_DEV_BASE_IMAGE']}\nCOPY . /ctx\nRUN cat /ctx/ok.txt\n".encode()
    post_raw(harness.store, posted, harness.settings.queue_for("buildah"),
             [tar_of([file("Dockerfile", dockerfile), file("ok.txt", b"fine\n")])])
    record = wait_finished(harness.store, posted["id"])
    assert record["status"] == "succeeded", record
    assert record["images"][0]["digest"] == registry_digest(services, posted["tags"][0])

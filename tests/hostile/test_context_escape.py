"""CVE-2025-4517 link chains against a real buildah worker (on the venv's Python and on
Debian's python3), for short and long workspace paths, through the raw queue, the API upload
and `runner submit`. A canary folder around the workspace holds a file the attacker wants to
overwrite; after every job nothing in it has changed, and the worker still builds."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunnerHarness, cleanup_namespace, new_harness, registry_digest
from tests.hostile.context_support import post_raw, start_api, stop, wait_finished
from tests.hostile.context_tars import CHAIN_STEPS, chunked, cve_chain, file, tar_of
from tests.support.buildah import skip_reason

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")

TOKEN = "hostile-" + uuid.uuid4().hex
FLAG = "the file an attacker wants to overwrite\n"
MARKER = "pwned"


@dataclass
class Hostile:
    harness: RunnerHarness
    base: Path  # holds the canary and the workspace; searched for MARKER files
    canary: Path
    workspace: Path
    flag: Path
    before: dict
    worker: subprocess.Popen
    api: str

    def intact(self) -> None:
        """Nothing changed around the workspace, and no marker file exists anywhere below base."""
        assert self.flag.read_text() == FLAG
        assert snapshot(self.canary, skip=self.workspace) == self.before
        found = subprocess.run(["find", str(self.base), "-name", f"{MARKER}*"], capture_output=True, text=True).stdout
        assert found == ""
        assert self.worker.poll() is None, "the worker died"


def snapshot(root: Path, skip: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        for name in dirnames + filenames:
            st = Path(dirpath, name).lstat()
            out[os.path.join(dirpath, name)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def padded_workspace(canary: Path, length: int) -> Path:
    """canary/<padding>/work, `length` characters long (padding in 200-character names)."""
    left = length - len(str(canary)) - len("/work") - 1
    names = []
    while left > 201:
        names.append("p" * 200)
        left -= 201
    if left == 201:
        names.append("p" * 199)
        left = 1
    names.append("q" * left)
    workspace = Path(str(canary), *names, "work")
    assert len(str(workspace)) == length
    return workspace


@pytest.fixture(scope="module", params=[60, 1500], ids=["workspace-60", "workspace-1500"])
def hostile(request, services, tmp_path_factory, worker_runner) -> Iterator[Hostile]:
    base = Path(tempfile.mkdtemp(prefix="hc", dir="/var/tmp"))
    canary = base / "canary"
    workspace = padded_workspace(canary, request.param)
    workspace.mkdir(parents=True)
    flag = workspace.parent / "flag"  # where `escape` (three folders above the extraction root) leads
    flag.write_text(FLAG)
    (canary / "beside").mkdir()
    (canary / "beside" / "file").write_text("also watched")
    harness = new_harness(services, tmp_path_factory, default_executor="buildah", worker={"workspace": str(workspace)},
                          api={"tokens": [{"name": "ci", "token": TOKEN, "rights": ["submit", "read", "cancel"]}]})
    worker = harness.start_worker("--queues", f"{harness.settings.worker.namespace}.buildah", runner=worker_runner)
    api, url = start_api(harness)
    try:
        yield Hostile(harness, base, canary, workspace, flag, snapshot(canary, skip=workspace), worker, url)
    finally:
        stop(api)
        harness.stop_worker(worker)
        cleanup_namespace(harness)
        shutil.rmtree(base, ignore_errors=True)


def new_job(hostile: Hostile, name: str) -> dict:
    ref = f"{hostile.harness.registry()}/hostile/{name}:{uuid.uuid4().hex[:8]}"
    return {"id": f"{name}-{uuid.uuid4().hex[:12]}", "tags": [ref], "executor": "buildah"}


def wait(hostile: Hostile, job_id: str) -> dict:
    return wait_finished(hostile.harness.store, job_id)


def extraction_root_length(hostile: Hostile, job_id: str) -> int:
    return len(str(hostile.workspace / job_id / "buildah-context"))


def assert_refused(record: dict, hostile: Hostile, *words: str) -> None:
    assert record["status"] == "failed", record
    error = record["error"]
    assert error["kind"] == "invalid", error
    assert "context tar member" in error["message"]
    for word in words:
        assert word in error["message"], error["message"]
    assert str(hostile.base) not in error["message"] and "Traceback" not in error["message"]
    hostile.intact()


@pytest.mark.parametrize("variant", ["file", "hardlink", "symlink"])
@pytest.mark.parametrize("through_links", [True, False], ids=["via-step-links", "via-real-folders"])
def test_chain_through_the_raw_queue_is_refused(hostile, variant, through_links):
    job = new_job(hostile, f"raw-{variant}")
    data = cve_chain(extraction_root_length(hostile, job["id"]), variant, MARKER, ups=3, through_links=through_links)
    post_raw(hostile.harness.store, job, hostile.harness.settings.queue_for("buildah"), chunked(data, 4096))
    record = wait(hostile, job["id"])
    words = ("inside 'a', which the archive made a symlink",) if through_links else ("'escape' is a symlink whose target",)
    assert_refused(record, hostile, *words)


def test_chain_through_the_api_upload_is_refused(hostile):
    job = new_job(hostile, "api")
    data = gzip.compress(cve_chain(extraction_root_length(hostile, job["id"]), "hardlink", MARKER, ups=3))
    with httpx.Client(base_url=hostile.api, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as client:
        upload = client.post(f"/v1/jobs/{job['id']}/context", content=data,
                             headers={"Content-Type": "application/x-tar"})
        assert upload.status_code == 201, upload.text
        queued = client.post("/v1/jobs", json=job)
        assert queued.status_code == 202, queued.text
    assert_refused(wait(hostile, job["id"]), hostile, "inside 'a', which the archive made a symlink")


def test_escaping_links_in_a_directory_through_runner_submit_are_refused(hostile, tmp_path):
    """On disk the chain can only be built through real folders (tar does not follow links)."""
    root = tmp_path / "ctx"
    path = root
    path.mkdir()
    (root / "Dockerfile").write_text("FROM scratch\n")
    for step in CHAIN_STEPS:
        (path / "ddd").mkdir()
        (path / step).symlink_to("ddd")
        path = path / "ddd"
    (path / ("l" * 254)).symlink_to("/".join([".."] * len(CHAIN_STEPS)))
    (root / "escape").symlink_to("/".join(["ddd"] * len(CHAIN_STEPS) + ["l" * 254, "..", "..", ".."]))
    job = new_job(hostile, "submit")
    result = hostile.harness.cli("submit", str(root), "-t", job["tags"][0], "--executor", "buildah", "--id", job["id"],
                                 "--json")
    assert result.returncode == 1, result.stderr
    assert_refused(json.loads(result.stdout), hostile, "'escape' is a symlink whose target")


def test_the_worker_still_builds_the_next_job(hostile, services):
    job = new_job(hostile, "next")
    dockerfile = f"FROM {services['RUNNER_DEV_BASE_IMAGE']}\nCOPY message.txt /message.txt\nRUN cat /message.txt\n"
    data = tar_of([file("Dockerfile", dockerfile.encode()), file("message.txt", b"still building\n")])
    post_raw(hostile.harness.store, job, hostile.harness.settings.queue_for("buildah"), [data])
    record = wait(hostile, job["id"])
    assert record["status"] == "succeeded", record
    assert record["images"][0]["digest"] == registry_digest(services, job["tags"][0])
    hostile.intact()

"""Git jobs end to end on a real worker (buildah), against real git servers on loopback:
what `COPY .` sees of `.git`, compared with BuildKit (the Debian docker CLI with
DOCKER_BUILDKIT=1 building the same git URL); and a job's own git mistake failing as
`invalid`, without the worker's paths, and never requeued by `engine_down_policy: requeue`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from runner.core.jobs import BuildRequest
from runner.entry.submission import submit
from runner.worker.admission import QUEUE
from tests.conftest import cleanup_namespace, new_harness
from tests.test_gitsource import GIT_ENV, commit_files, free_port, git, wait_port

DOCKER_CLI = "/usr/bin/docker"  # Debian's docker.io CLI: builds with BuildKit when DOCKER_BUILDKIT=1
#: prints what `COPY . /c` brought of .git, between markers (busybox has no git)
SHOW = ("RUN echo '<<<' && ls -a /c && (cat /c/.git/HEAD /c/.git/shallow && ls /c/.git/refs/heads "
        "&& ls /c/.git/refs/tags) 2>/dev/null; echo '>>>'")


@pytest.fixture(scope="module")
def worker(services, tmp_path_factory):
    """A buildah worker that may clone file:// and git:// URLs and requeues infrastructure errors."""
    h = new_harness(services, tmp_path_factory, git={"allowed_schemes": ["file", "git"]},
                    worker={"engine_down_policy": "requeue"}, limits={"max_attempts": 2})
    h.worker_proc = h.start_worker("--queues", f"{h.config['worker']['namespace']}.buildah")
    yield h
    h.stop_worker(h.worker_proc)
    cleanup_namespace(h)


@pytest.fixture(scope="module")
def served(services, tmp_path_factory):
    """A repository (main, a second branch, a tag) under `git daemon` on loopback: (root, url, commit)."""
    root = tmp_path_factory.mktemp("git-served")
    repo = root / "app"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit_files(repo, {"Dockerfile": f"FROM {services['RUNNER_DEV_BASE_IMAGE']}\nCOPY . /c\n{SHOW}\n", "f": "one\n"}, "one")
    git(repo, "tag", "v1")
    git(repo, "branch", "other")
    commit = commit_files(repo, {"f": f"two {uuid.uuid4().hex}\n"}, "two")  # new content: no step from the build cache
    port = free_port()
    daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", f"--base-path={root}", "--export-all", "--listen=127.0.0.1",
                               f"--port={port}", str(root)], env=GIT_ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    wait_port(port)
    yield root, f"git://127.0.0.1:{port}/app", commit
    daemon.terminate()
    daemon.wait(10)


def run_job(h, **request) -> tuple[dict, str]:
    """Submit a job to the worker's store and wait for its end: (record, log)."""
    job = BuildRequest(executor="buildah", tags=[f"{h.registry()}/git-jobs/app:{uuid.uuid4().hex[:8]}"], **request)
    submit(job, h.settings, h.store, QUEUE)
    deadline = time.monotonic() + 300
    while not ((record := h.store.get(job.id)) and record.finished):
        assert time.monotonic() < deadline, f"job {job.id} did not finish"
        time.sleep(0.2)
    return record.model_dump(mode="json"), "\n".join(h.store.read_log(job.id))


def shown(log: str) -> list[str]:
    """The lines SHOW printed, without BuildKit's `#N 0.123 ` prefixes."""
    lines = [re.sub(r"^#\d+ \d+\.\d+ ", "", line) for line in log.splitlines()]
    start = lines.index("<<<")
    return lines[start + 1:lines.index(">>>", start)]


def buildkit(url: str, *args: str) -> list[str]:
    tag = f"runner-test-oracle:{uuid.uuid4().hex[:8]}"
    out = subprocess.run([DOCKER_CLI, "build", "--no-cache", "--progress=plain", "-t", tag, *args, url],
                         env={**os.environ, "DOCKER_BUILDKIT": "1"}, capture_output=True, text=True, timeout=300)
    subprocess.run([DOCKER_CLI, "rmi", "-f", tag], capture_output=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return shown(out.stderr)


def test_copy_of_a_git_context_has_no_git_dir_unless_asked_as_in_buildkit(worker, served):
    _, url, commit = served
    context = {"type": "git", "url": url, "ref": "refs/heads/main", "commit": commit}
    record, log = run_job(worker, context=context)
    assert record["status"] == "succeeded", record["error"]
    assert shown(log) == [".", "..", "Dockerfile", "f"]

    record, log = run_job(worker, context=context, build_args={"BUILDKIT_CONTEXT_KEEP_GIT_DIR": "1"})
    assert record["status"] == "succeeded", record["error"]
    ours = shown(log)
    assert ours == [".", "..", ".git", "Dockerfile", "f", commit, commit, "main"]  # HEAD, shallow, refs/heads; no tag

    if shutil.which(DOCKER_CLI) is None:
        pytest.skip(f"{DOCKER_CLI} (Debian's docker.io CLI) is not installed: no BuildKit to compare with")
    assert buildkit(f"{url}#main") == [".", "..", "Dockerfile", "f"]
    theirs = buildkit(f"{url}#main", "--build-arg", "BUILDKIT_CONTEXT_KEEP_GIT_DIR=1")
    # Engine 20.10's BuildKit also names the commit as a tag `main` (a quirk later BuildKit dropped)
    assert theirs[:len(ours)] == ours and theirs[len(ours):] in ([], ["main"]), theirs


def test_a_git_mistake_fails_invalid_without_worker_paths_and_is_not_requeued(worker, tmp_path):
    """engine_down_policy is requeue here: an `invalid` failure must still end the job at once."""
    lib = tmp_path / "lib"
    outer = tmp_path / "outer"
    for repo in (lib, outer):
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
    commit_files(lib, {"lib.txt": "lib\n"}, "lib")
    commit_files(outer, {"Dockerfile": "FROM scratch\nCOPY . /\n"}, "outer")
    subprocess.run(["git", "-c", "protocol.file.allow=always", "submodule", "add", "-q", f"file://{lib}", "vendor/lib"],
                   cwd=outer, env=GIT_ENV, check=True, capture_output=True)
    git(outer, "commit", "-q", "-m", "add lib")
    shutil.rmtree(lib)  # the submodule's repository is gone
    record, log = run_job(worker, context={"type": "git", "url": f"file://{outer}", "ref": "main", "submodules": True})
    assert record["status"] == "failed" and record["error"]["kind"] == "invalid", record["error"]
    assert record["error"]["message"].startswith(f"git: cannot fetch submodule 'vendor/lib': repository file://{lib} not found")
    assert record["attempts"] == 1 and "requeued" not in log
    workspace = str(Path(worker.config["worker"]["workspace"]))
    for text in (record["error"]["message"], log):
        assert workspace not in text and os.path.realpath(workspace) not in text

    # a host that cannot resolve (a label longer than DNS allows: nothing is sent anywhere)
    record, log = run_job(worker, context={"type": "git", "url": f"git://{'a' * 64}.example/app", "ref": "main"})
    assert record["status"] == "failed" and record["error"]["kind"] == "invalid", record["error"]
    assert record["attempts"] == 1 and "requeued" not in log

    # the git host down is the host's trouble: requeued once (max_attempts 2), then failed
    record, log = run_job(worker, context={"type": "git", "url": f"git://127.0.0.1:{free_port()}/app", "ref": "main"})
    assert record["error"]["kind"] == "infrastructure" and record["attempts"] == 2, record
    assert "requeued: infrastructure error" in log

"""Reuse through the entry points, on every executor that can run here: a real `runner serve`
and `runner worker`, signed GitHub push webhooks for a repository of the test's (one per
executor), and the HTTP API.

- a push on main builds; a tag pushed on that commit reuses: the same digest under the tag's
  image (read back with skopeo), `reused_from` the main job, no build in its log (no executor
  output, the reuse line), `runner status` and the status description;
- a repository with `reuse: false` and an API job with `"reuse": false` build again.
The in-process cases (what moves the key, jobs at once, a deleted manifest) are in
tests/test_reuse.py."""

from __future__ import annotations

import uuid

import pytest

from runner.core.jobs import JobRecord
from runner.worker.notify.statuses import describe
from tests.conftest import registry_digest
from tests.contract.test_contract import executor_params
from tests.contract.test_signing import base_for
from tests.support import all_support
from tests.test_api import start_stack, stop_stack
from tests.test_gitsource import commit_files, git
from tests.test_webhooks import GITHUB_SECRET, github, github_push

SUPPORT = all_support()
EXECUTORS = [p.values[0] for p in executor_params() if not p.marks]
#: what a build's own output looks like in a job log: BuildKit's steps, buildah's and the classic builder's
BUILD_OUTPUT = ("#1 ", "STEP 1/", "Step 1/")


@pytest.fixture(params=list(executor_params()))
def executor(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def stack(services, tmp_path_factory):
    repositories = {}
    for name in EXECUTORS:
        reg = services[SUPPORT[name].registry_key]
        hook = {"images": [f"{reg}/reuse-hooks/{{repo}}:{{branch}}", f"{reg}/reuse-hooks/{{repo}}:{{tag}}"],
                "executor": name, "tags": ["v*"], "build_args": {"BASE": base_for(services, name)}}
        repositories[f"acme/reuse-{name}"] = hook
        repositories[f"acme/always-{name}"] = {**hook, "reuse": False}
    s = start_stack(services, tmp_path_factory, webhooks={"github": {"secret": GITHUB_SECRET}, "repositories": repositories})
    yield s
    stop_stack(s)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    path = tmp_path_factory.mktemp("reuse-hooked") / "app"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    return path


def pushed(stack, repo, commit: str, repository: str, ref: str) -> tuple[dict, str]:
    payload = github_push((repo, []), commit, ref)
    payload["repository"]["full_name"], payload["repository"]["name"] = repository, repository.split("/")[1]
    response = github(stack, payload)
    assert response.status_code == 202, response.text
    job = response.json()["job"]
    record = stack.wait(job, timeout=300)
    log = "\n".join(stack.harness.store.read_log(job))
    assert record["status"] == "succeeded", (record["error"], log[-3000:])
    return record, log


def built(log: str) -> bool:
    return any(line.startswith(BUILD_OUTPUT) for line in log.splitlines())


def new_commit(repo) -> str:
    dockerfile = "ARG BASE=none\nFROM ${BASE}\nCOPY app.txt /app.txt\n"
    return commit_files(repo, {"Dockerfile": dockerfile, "app.txt": f"{uuid.uuid4().hex}\n"}, "app")


def test_a_tag_pushed_on_a_built_commit_reuses_its_image(stack, repo, executor, services):
    commit = new_commit(repo)
    main, main_log = pushed(stack, repo, commit, f"acme/reuse-{executor}", "refs/heads/main")
    assert main["reused_from"] is None and built(main_log), main_log[-2000:]
    release, log = pushed(stack, repo, commit, f"acme/reuse-{executor}", "refs/tags/v1.0")
    assert release["reused_from"] == main["id"], (main["inputs"], release["inputs"], log[-1500:])
    assert not built(log), log
    assert f"reused the image built by job {main['id']} for the same inputs" in log
    [image] = release["images"]
    assert image["ref"].endswith(f"/reuse-{executor}:v1.0")
    assert image["digest"] == main["images"][0]["digest"] == registry_digest(services, image["ref"])
    status = stack.harness.cli("status", release["id"])
    assert f"reused: the image built by job {main['id']} for the same inputs" in status.stdout, status.stdout + status.stderr
    text = describe("finished", JobRecord.model_validate(release), {})
    assert text.startswith(f"reused the image built by job {main['id']} for the same inputs")


def test_reuse_false_builds_again(stack, repo, executor, services):
    commit = new_commit(repo)
    first, _ = pushed(stack, repo, commit, f"acme/always-{executor}", "refs/heads/main")
    again, log = pushed(stack, repo, commit, f"acme/always-{executor}", "refs/tags/v1.0")
    assert again["reused_from"] is None and built(log) and "reuse is off for acme/always-" in log, log[-2000:]
    # the API's field: the same inputs as the first job (reused otherwise), asked to build
    reg = services[SUPPORT[executor].registry_key]
    job = {"tags": [f"{reg}/reuse-api/{executor}:{uuid.uuid4().hex[:8]}"], "executor": executor, "reuse": False,
           "context": {"type": "git", "url": f"file://{repo}", "ref": "refs/heads/main", "commit": commit},
           "build_args": {"BASE": base_for(services, executor)}}
    with stack.client() as client:
        queued = client.post("/v1/jobs", json=job)
        assert queued.status_code == 202, queued.text
    record = stack.wait(queued.json()["id"], timeout=300)
    api_log = "\n".join(stack.harness.store.read_log(record["id"]))
    assert record["status"] == "succeeded" and record["reused_from"] is None and built(api_log)
    assert record["request"]["reuse"] is False
    # and without it, the same request reuses
    job["reuse"], job["tags"] = True, [f"{reg}/reuse-api/{executor}:{uuid.uuid4().hex[:8]}"]
    with stack.client() as client:
        queued = client.post("/v1/jobs", json=job)
    reused = stack.wait(queued.json()["id"], timeout=300)
    assert reused["reused_from"] in (first["id"], again["id"], record["id"])

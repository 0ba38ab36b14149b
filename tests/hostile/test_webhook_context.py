"""Hostile repositories behind a signed git-push webhook: what a webhook-triggered build
clones is packed and checked like any upload, on a worker on each Python."""

from __future__ import annotations

import os
import uuid

import pytest

from tests.hostile.context_tars import CHAIN_STEPS
from tests.test_api import start_stack, stop_stack
from tests.test_gitsource import commit_files, git
from tests.test_webhooks import GITHUB_SECRET, github, github_push


@pytest.fixture(scope="module")
def stack(services, tmp_path_factory, worker_runner):
    reg = services["RUNNER_DEV_REGISTRY"]
    s = start_stack(services, tmp_path_factory, runner=worker_runner, webhooks={
        "github": {"secret": GITHUB_SECRET},
        "repositories": {"acme/hello-app": {"images": [f"{reg}/hostile-hook/{{repo}}:{{short_sha}}"],
                                            "executor": "buildah"}}})
    yield s
    stop_stack(s)


def repository(root, services, links: dict[str, str], files: dict[str, str] | None = None) -> tuple:
    path = root / f"repo-{uuid.uuid4().hex[:6]}"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    for name, target in links.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, path / name)
    content = {"Dockerfile": f"FROM {services['RUNNER_DEV_BASE_IMAGE']}\nCOPY . /ctx\n", **(files or {})}
    return path, [commit_files(path, content, "hostile")]


def chain() -> tuple[dict[str, str], dict[str, str]]:
    """The CVE-2025-4517 chain as a git tree: long folders (each holding a file, as git keeps
    no empty folder), a symlink per step, the long link, and `escape` climbing out of it."""
    component, path, links, files = "d" * 200, "", {}, {}
    for step in CHAIN_STEPS:
        files[os.path.join(path, component, "keep")] = "x"
        links[os.path.join(path, step)] = component
        path = os.path.join(path, component)
    long_link = os.path.join(*CHAIN_STEPS, "l" * 254)
    links[os.path.join(path, "l" * 254)] = os.path.join(*[".."] * len(CHAIN_STEPS))
    links["escape"] = os.path.join(long_link, "..", "..", "..")
    return links, files


@pytest.mark.parametrize("case", ["absolute link", "climbing link", "cve chain"])
def test_a_pushed_repository_cannot_reach_outside_its_context(stack, services, tmp_path, case):
    if case == "cve chain":
        links, files = chain()
    else:
        links, files = {"escape": "/etc" if case == "absolute link" else "../../../../../../etc"}, {}
    repo = repository(tmp_path, services, links, files)
    response = github(stack, github_push(repo, repo[1][0]))
    assert response.status_code == 202, response.text
    record = stack.wait(response.json()["job"])
    assert record["status"] == "failed" and record["error"]["kind"] == "invalid", record
    assert "escape" in record["error"]["message"] and str(tmp_path) not in record["error"]["message"]
    assert stack.harness.worker_proc.poll() is None

"""Git contexts get the same guarantee as uploads: the subdir is walked with lstat (a
symlinked component is refused, never resolved), and the packed checkout goes through the
same check into the canonical tar. Real git, file:// repositories."""

from __future__ import annotations

import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from runner.config.sections import GitConfig
from runner.core.cancel import CancelToken
from runner.core.errors import InvalidJob
from runner.core.jobs import BuildRequest
from runner.sources.git import prepare_git_context
from runner.store.joblog import JobLog

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "T", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "T",
           "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """Files, an inside symlink, symlinks to folders inside and outside, and an escape chain."""
    repo = tmp_path_factory.mktemp("repos") / "hostile"
    (repo / "sub" / "inner").mkdir(parents=True)
    (repo / "Dockerfile").write_text("FROM scratch\nCOPY . /\n")
    (repo / "sub" / "Dockerfile").write_text("FROM scratch\n")
    (repo / "sub" / "inner" / "Dockerfile").write_text("FROM scratch\n")
    (repo / "sub" / "lib.txt").write_text("lib\n")
    (repo / "sub" / "link-to-lib").symlink_to("lib.txt")
    (repo / "app").symlink_to("sub")
    (repo / "etc").symlink_to("/etc")
    (repo / "passwd").mkdir()
    (repo / "passwd" / "Dockerfile").symlink_to("/etc/passwd")
    chain = repo / "chain"
    chain.mkdir()
    (chain / "Dockerfile").write_text("FROM scratch\n")
    path = chain
    for step in "abcdefgh":
        (path / "ddd").mkdir()
        (path / step).symlink_to("ddd")
        path = path / "ddd"
    (path / ("l" * 254)).symlink_to("/".join([".."] * 8))
    (chain / "escape").symlink_to("/".join(["ddd"] * 8 + ["l" * 254, "..", ".."]))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "hostile")
    return repo


@pytest.fixture
def prepare(make_harness, tmp_path, repo):
    harness = make_harness()

    def run(subdir: str = "", dockerfile: str = "Dockerfile"):
        cfg = harness.settings.model_copy(update={"git": GitConfig(allowed_schemes=["file"])})
        request = BuildRequest(context={"type": "git", "url": f"file://{repo}", "ref": "main", "subdir": subdir},
                               dockerfile=dockerfile, tags=["127.0.0.1:5000/x/y:1"])
        joblog = JobLog(harness.store, request.id)
        try:
            return prepare_git_context(request, tmp_path / "ws" / request.id, joblog, CancelToken(), cfg)
        finally:
            joblog.flush()

    return run


@pytest.mark.parametrize("subdir, words", [
    ("app", "subdir 'app' is a symlink"),
    ("app/inner", "subdir 'app/inner' is not a directory (or passes through a symlink)"),
    ("etc", "subdir 'etc' is a symlink"),
    ("etc/ssl", "passes through a symlink"),
    ("missing", "is not a directory"),
])
def test_symlinked_or_missing_subdirs_are_refused_without_resolving(prepare, subdir, words):
    with pytest.raises(InvalidJob, match=re.escape(words)) as caught:
        prepare(subdir)
    assert "/etc" not in caught.value.message.replace("'etc", "")


def test_a_dockerfile_that_is_a_symlink_is_not_followed(prepare):
    with pytest.raises(InvalidJob, match="Dockerfile 'Dockerfile' not found"):
        prepare("passwd")


def test_an_escaping_link_in_the_repository_is_refused(prepare):
    with pytest.raises(InvalidJob, match="'escape' is a symlink whose target"):
        prepare("chain")


def test_a_good_checkout_becomes_the_canonical_tar(prepare):
    ctx = prepare("sub")
    with tarfile.open(ctx.tar_path) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert {"Dockerfile", "lib.txt", "link-to-lib", "inner", "inner/Dockerfile"} <= set(members)
    assert members["link-to-lib"].issym() and members["link-to-lib"].linkname == "lib.txt"
    assert all(m.uid == 0 and m.gid == 0 for m in members.values())
    assert sorted(p.name for p in ctx.workspace.iterdir()) == ["context.tar"]  # the packed tar is gone
    out = ctx.extract_to(ctx.workspace / "out")
    assert (out / "link-to-lib").read_text() == "lib\n"

"""What a git context fetches, and how long it takes: the runner's fetch (runner/sources/git.py,
GitFetch.checkout: init, fetch, checkout) against fetching every branch and tag (what the
runner did before with `git.shallow: false`, or when a server refused a fetch by commit id),
measured in the same run on the same repository and server.

The repository: main with 40 commits, each rewriting a 100 KiB file that does not compress;
20 other branches with a 512 KiB file each, 20 tags. Served over smart HTTP on loopback by
`git http-backend` (tests/test_gitsource.GitHttp), speaking protocol v2, or v0 only (where
git refuses a commit by its id unless a ref points at it, as older servers do). The job
wants main's 30th commit, with ref refs/heads/main.

Run:  .venv/bin/python bench/bench_git_fetch.py [--rounds 5]
Needs git. Prints a table (median seconds of the rounds, MiB of objects in the clone).
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import load_line  # noqa: E402
from runner.config.sections import GitConfig  # noqa: E402
from runner.config.settings import Settings  # noqa: E402
from runner.core.cancel import CancelToken  # noqa: E402
from runner.core.jobs import BuildRequest  # noqa: E402
from runner.sources.git import GitFetch  # noqa: E402
from tests.support import ListLog  # noqa: E402
from tests.test_gitsource import GIT_ENV, TOKEN, GitHttp, git, http_server  # noqa: E402


class Log(ListLog):
    def mask(self, text: str) -> str:
        return text


def make_repository(root: Path) -> str:
    repo = root / "app"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "Dockerfile").write_text("FROM scratch\nCOPY . /\n")
    commits = []
    for i in range(40):
        (repo / "data.bin").write_bytes(os.urandom(100 * 1024))
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", f"main {i}")
        commits.append(git(repo, "rev-parse", "HEAD"))
    for i in range(20):
        git(repo, "checkout", "-q", "-b", f"feature-{i}", commits[i])
        (repo / f"feature-{i}.bin").write_bytes(os.urandom(512 * 1024))
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", f"feature {i}")
        git(repo, "tag", f"v{i}")
    git(repo, "checkout", "-q", "main")
    return commits[29]


def objects_mib(clone: Path) -> float:
    total = sum(p.stat().st_size for p in (clone / ".git" / "objects").rglob("*") if p.is_file())
    return total / 1024 / 1024


def every_branch_and_tag(url: str, commit: str, work: Path) -> tuple[float, float]:
    """The baseline: init, fetch every branch and tag, check out the commit."""
    clone = work / uuid.uuid4().hex
    started = time.perf_counter()
    subprocess.run(["git", "init", "-q", str(clone)], env=GIT_ENV, check=True)
    subprocess.run(["git", "-C", str(clone), "fetch", "-q", url, "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"],
                   env=GIT_ENV, check=True)
    subprocess.run(["git", "-C", str(clone), "-c", "advice.detachedHead=false", "checkout", "-q", "--detach", commit],
                   env=GIT_ENV, check=True)
    took = time.perf_counter() - started
    size = objects_mib(clone)
    shutil.rmtree(clone)
    return took, size


def runners_fetch(url: str, commit: str, work: Path, shallow: bool) -> tuple[float, float]:
    settings = Settings(git=GitConfig(allowed_schemes=["http"], shallow=shallow))
    request = BuildRequest(context={"type": "git", "url": url, "ref": "refs/heads/main", "commit": commit},
                           tags=["127.0.0.1:5000/bench/git:1"])
    fetch = GitFetch(request.context, work / request.id, Log(), CancelToken(), settings)
    started = time.perf_counter()
    try:
        assert fetch.checkout() == commit
        took = time.perf_counter() - started
        return took, objects_mib(fetch.src)
    finally:
        fetch.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    work = Path(tempfile.mkdtemp(prefix="bgf-", dir="/tmp"))
    try:
        commit = make_repository(work / "served")
        rows = []
        for protocol_v2 in (True, False):
            handler = type("Handler", (GitHttp,), {"root": work / "served", "protocol_v2": protocol_v2})
            with http_server(handler) as port:
                url = f"http://ci:{TOKEN}@127.0.0.1:{port}/app"
                ways = [("every branch and tag (baseline)", every_branch_and_tag, ()),
                        ("runner, git.shallow: true", runners_fetch, (True,)),
                        ("runner, git.shallow: false", runners_fetch, (False,))]
                for name, way, extra in ways:
                    results = [way(url, commit, work, *extra) for _ in range(rounds)]
                    rows.append(("v2" if protocol_v2 else "v0 only", name, statistics.median(r[0] for r in results),
                                 statistics.median(r[1] for r in results)))
        print(f"git fetch of one commit, median of {rounds} rounds")
        print(f"| {'server':8} | {'fetch':34} | {'seconds':>8} | {'MiB in .git/objects':>19} |")
        print(f"|{'-' * 10}|{'-' * 36}|{'-' * 9}:|{'-' * 20}:|")
        for server, name, seconds, mib in rows:
            print(f"| {server:8} | {name:34} | {seconds:8.3f} | {mib:19.2f} |")
        print(load_line())
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The fidelity case of the contract suite: the same file tree on every executor.

One context — modes 0444, 0755, 4755, 2755, a 1777 folder, a 0555 folder with children,
relative and dangling symlinks, unicode and space names, 2,000 files, a 25 MB file, and a
.dockerignore with exceptions that also ignores itself (Docker sends it anyway; `COPY .` must
not see it) — is built `FROM <base>` + `COPY . /ctx` by the real CLI and a real worker on
every executor that can run here, and the /ctx tree of the pushed image (read back with
`docker pull` + `docker create` + `docker export`) must equal the oracle's: Debian's docker
CLI building the same Dockerfile with BuildKit, exported as a tar (`-o type=tar`). Compared:
path, type, mode, size, content hash, link target. The Dockerfile is the same text for all
(the base comes as a build arg), so its own copy in /ctx is compared too.

A Dockerfile the patterns ignore is a second case: docker build sends it but `COPY .` does
not see it. The daemonless executors match that; an engine given a tar reads the Dockerfile
from that tar, so there COPY sees it (a known difference, docs/executors.md).

img cannot be installed here: its case runs with a FAKE `img` that builds the folder img
would be handed with the Docker Engine's BuildKit (which, like img's, re-applies any
.dockerignore left in that folder) and pushes with the docker CLI and the DOCKER_CONFIG the
executor wrote. sysbox skips, naming sysbox-runc, where the runtime is absent.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "dockerignore"))

import harness as oracle  # noqa: E402

from tests.support import all_support  # noqa: E402

SUPPORT = all_support()
DOCKER = oracle.DOCKER
BIG = 25 * 1024 * 1024
MANY = 2000
IGNORE = ".dockerignore\n*.log\n!keep.log\nbuild\n!build/keep.txt\n"
DOCKERFILE = "ARG BASE\nFROM $BASE\nCOPY . /ctx\n"

FAKE_IMG = '''#!{python}
# FAKE img (img cannot be installed here). `build` builds the folder it is handed with the
# Docker Engine's BuildKit (Debian's docker CLI, DOCKER_BUILDKIT=1), which reads that folder as
# img's BuildKit does; `push` and `rm` use the docker CLI with the DOCKER_CONFIG the executor wrote.
import os, subprocess, sys
args = sys.argv[1:]
while args and args[0] in ("-s", "-b"):
    args = args[2:]
docker, env = ["{docker}"], dict(os.environ, DOCKER_BUILDKIT="1")
if args[0] == "version":
    print("img fake-0.5.11")
elif args[0] == "build":
    passed = [x for i, arg in enumerate(args) if i and args[i - 1] in ("-t", "--build-arg") for x in (args[i - 1], arg)]
    command = docker + ["build", "-f", args[args.index("-f") + 1], *passed, args[-1]]
    sys.exit(subprocess.run(command, env=env).returncode)
elif args[0] == "push":
    sys.exit(subprocess.run(docker + ["push", args[-1]], env=env).returncode)
elif args[0] == "rm":
    subprocess.run(docker + ["rmi", *args[1:]], env=env, capture_output=True)
'''


def executor_params():
    for name, support in SUPPORT.items():
        if name == "img":
            yield pytest.param(name, id="img-fake")
            continue
        reason = support.skip_reason()
        yield pytest.param(name, id=name, marks=[pytest.mark.skip(reason=reason)] if reason else [])


# -- the context ----------------------------------------------------------------------------------
def make_context(root: Path) -> Path:
    ctx = root / "ctx"
    files: dict[str, tuple[bytes, int]] = {
        "modes/read-only.txt": (b"read only\n", 0o444), "modes/run.sh": (b"#!/bin/sh\necho hi\n", 0o755),
        "modes/setuid": (b"setuid\n", 0o4755), "modes/setgid": (b"setgid\n", 0o2755), "modes/plain": (b"plain\n", 0o644),
        "shared/inside.txt": (b"in a sticky folder\n", 0o644),
        "readonly/a.txt": (b"a\n", 0o644), "readonly/sub/b.txt": (b"b\n", 0o600),
        "ünïcödé/日本 語.txt": ("ünïcödé ✓\n".encode(), 0o644), "dir with space/file with space.txt": (b"spaces\n", 0o644),
        "emoji 😀.txt": (b"emoji\n", 0o640),
        "debug.log": (b"ignored\n", 0o644), "keep.log": (b"kept by an exception\n", 0o644),
        "build/keep.txt": (b"re-included\n", 0o644), "build/drop.txt": (b"ignored\n", 0o644),
        ".dockerignore": (IGNORE.encode(), 0o644), "Dockerfile": (DOCKERFILE.encode(), 0o644),
    }
    for n in range(MANY):
        files[f"many/{n // 100:02d}/f{n:04d}.txt"] = (f"file {n}\n".encode(), 0o644)
    files["big/blob.bin"] = (random.Random(12).randbytes(BIG), 0o644)
    for name, (data, mode) in files.items():
        path = ctx / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
    (ctx / "links").mkdir()
    (ctx / "links/relative").symlink_to("../modes/plain")
    (ctx / "links/dangling").symlink_to("no/such/file")
    (ctx / "links/to-folder").symlink_to("../readonly")
    for folder, mode in (("readonly/sub", 0o555), ("readonly", 0o555), ("shared", 0o1777), ("build", 0o750)):
        (ctx / folder).chmod(mode)
    return ctx


def oracle_tree(ctx: Path, base: str) -> dict[str, list]:
    """/ctx as Debian's docker CLI builds it with BuildKit."""
    built = subprocess.run([DOCKER, "build", "-q", "--build-arg", f"BASE={base}", "-o", "type=tar,dest=-", str(ctx)],
                           env={**os.environ, "DOCKER_BUILDKIT": "1"}, capture_output=True, timeout=600)
    assert built.returncode == 0, built.stderr.decode()[-2000:]
    return oracle.tree_from_tar(built.stdout)


@pytest.fixture(scope="module")
def fidelity(tmp_path_factory, services) -> tuple[Path, dict[str, list]]:
    """The context and the /ctx tree the oracle builds from it."""
    reason = oracle.docker_available()
    if reason:
        pytest.skip(reason)
    ctx = make_context(tmp_path_factory.mktemp("fidelity"))
    tree = oracle_tree(ctx, services["RUNNER_DEV_BASE_IMAGE"])
    assert len(tree) > MANY and ".dockerignore" not in tree and "build/drop.txt" not in tree and "keep.log" in tree
    assert tree["modes/setuid"][1] == "0o4755" and tree["shared"][1] == "0o1777" and tree["build"][1] == "0o750"
    return ctx, tree


def image_tree(ref: str) -> dict[str, list]:
    """The /ctx tree of the image the registry holds for `ref` (pulled, created, exported)."""
    subprocess.run([DOCKER, "pull", "-q", ref], check=True, capture_output=True, timeout=300)
    container = subprocess.run([DOCKER, "create", ref, "true"], check=True, capture_output=True, text=True).stdout.strip()
    try:
        exported = subprocess.run([DOCKER, "export", container], check=True, capture_output=True, timeout=300).stdout
    finally:
        subprocess.run([DOCKER, "rm", "-f", container], capture_output=True)
        subprocess.run([DOCKER, "rmi", "-f", ref], capture_output=True)
    return oracle.tree_from_tar(exported)


def differences(ours: dict[str, list], expected: dict[str, list]) -> str:
    missing, extra = sorted(set(expected) - set(ours)), sorted(set(ours) - set(expected))
    changed = [f"{p}: {ours[p]} != {expected[p]}" for p in sorted(set(ours) & set(expected)) if ours[p] != expected[p]]
    return f"missing {missing[:20]}\nextra {extra[:20]}\nchanged {changed[:20]}"


@pytest.fixture
def runner_for(harness, make_harness, tmp_path):
    """The harness whose worker takes jobs for `executor` (img: a worker of its own with the fake)."""
    def get(executor: str):
        if executor != "img":
            return harness
        fake = tmp_path / "fake-img"
        fake.write_text(FAKE_IMG.format(python=sys.executable, docker=DOCKER))
        fake.chmod(0o755)
        h = make_harness(executors={"img": {"enabled": True, "binary": str(fake), "state_dir": str(tmp_path / "img-state")}})
        h.worker_proc = h.start_worker("--queues", h.settings.queue_for("img"))
        return h
    return get


def build_tree(h, executor: str, ctx: Path, name: str) -> dict[str, list]:
    """Build `ctx` on `executor` through the CLI and a worker; the pushed image's /ctx tree."""
    support = SUPPORT[executor]
    base = support.base_image(h.services) if support.base_image else h.services["RUNNER_DEV_BASE_IMAGE"]
    ref = f"{h.registry(support.registry_key)}/contract/{executor}-{name}:{uuid.uuid4().hex[:10]}"
    result = h.cli("submit", str(ctx), "--executor", executor, "--build-arg", f"BASE={base}", "-t", ref, "--json", timeout=900)
    record = json.loads(result.stdout) if result.stdout.strip().startswith("{") else None
    assert result.returncode == 0 and record and record["status"] == "succeeded", (result.stdout + result.stderr)[-3000:]
    return image_tree(ref)


@pytest.mark.parametrize("executor", list(executor_params()))
def test_every_executor_copies_the_tree_docker_build_copies(fidelity, runner_for, executor):
    ctx, expected = fidelity
    ours = build_tree(runner_for(executor), executor, ctx, "fidelity")
    assert ours == expected, differences(ours, expected)


def ignored_dockerfile_params():
    for param in executor_params():
        executor = param.values[0]
        if SUPPORT[executor].engine and not param.marks:
            param = pytest.param(executor, id=param.id, marks=[pytest.mark.xfail(strict=True, reason=(
                "an engine given a tar reads the Dockerfile from it, so COPY sees it; Docker sends it through a "
                "BuildKit session instead (docs/executors.md)"))])
        yield param


@pytest.mark.parametrize("executor", list(ignored_dockerfile_params()))
def test_an_ignored_dockerfile_is_not_copied(runner_for, services, tmp_path, executor):
    ctx = tmp_path / "ignored-dockerfile"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    (ctx / ".dockerignore").write_text("Dockerfile\n")
    (ctx / "app.txt").write_text("app\n")
    expected = oracle_tree(ctx, services["RUNNER_DEV_BASE_IMAGE"])
    assert sorted(expected) == [".dockerignore", "app.txt"]
    ours = build_tree(runner_for(executor), executor, ctx, "ignored-dockerfile")
    assert ours == expected, differences(ours, expected)

"""dind in the contract suite: sidecars from a dind image built here (scripts/dind-image.sh,
cached by tag; no image can be pulled on these machines), with the capability profile these
hosts need because they refuse --privileged, and the registry reached by name through the
host gateway (inside a sidecar, 127.0.0.1 is the sidecar itself)."""

from __future__ import annotations

import functools
import os
import subprocess
import uuid
from pathlib import Path

from tests.support import ExecutorSupport
from tests.support import ListLog as Sink  # noqa: F401 - imported by the dind tests

ROOT = Path(__file__).resolve().parents[2]
IMAGE_SCRIPT = ROOT / "scripts" / "dind-image.sh"

#: what works on hosts whose capability bounding set lacks CAP_SYS_RESOURCE (ENVIRONMENT.md)
PROFILE = {
    "privileged": False,
    "cap_add": ["ALL"],
    "cap_drop": ["SYS_RESOURCE"],
    "security_opt": ["seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"],
    "mount_cgroup": True,
}


@functools.cache
def image() -> str:
    """The local dind image's tag, built on first use (about a minute), instant afterwards."""
    out = subprocess.run(["bash", str(IMAGE_SCRIPT)], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"scripts/dind-image.sh failed: {out.stderr[-2000:]}")
    return out.stdout.strip().splitlines()[-1]


def registry_name(env: dict) -> str:
    return env["RUNNER_DEV_REGISTRY_NAME"]


def config(env: dict, **overrides) -> dict:
    host = registry_name(env).rsplit(":", 1)[0]
    return {"enabled": True, "image": image(), **PROFILE, "extra_hosts": {host: "host-gateway"},
            "insecure_registries": [registry_name(env)], "ready_timeout": 30, **overrides}


def base_image(env: dict) -> str:
    """The base image services.sh pushed, by the registry's name (same registry, same tag)."""
    return f"{registry_name(env)}/base/busybox:1"


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "dind tests need root: debootstrap builds the dind image (scripts/dind-image.sh)"
    return None


SUPPORT = ExecutorSupport(name="dind", config=config, skip_reason=skip_reason, registry_key="RUNNER_DEV_REGISTRY_NAME",
                          engine=True, base_image=base_image, extra={"engine_per_job": True})


# -- helpers for tests/test_dind.py and tests/test_sysbox.py -----------------------------------
def settings(env: dict, socket_dir: Path, executor: str = "dind", **overrides):
    """Settings with one sidecar executor enabled, the registry (by name) configured and a
    namespace of its own (so a reaper in another test session never takes its sidecars)."""
    from runner.config.settings import Settings

    section = config(env, socket_dir=str(socket_dir), **overrides)
    if executor == "sysbox":
        section = {k: v for k, v in section.items() if k not in PROFILE}
    return Settings(executors={executor: section}, worker={"namespace": f"test-{uuid.uuid4().hex[:8]}"}, registries=[{
        "host": registry_name(env), "username": env["RUNNER_DEV_REGISTRY_USER"],
        "password": env["RUNNER_DEV_REGISTRY_PASSWORD"], "insecure": True}])


def build_context(root: Path, dockerfile: str, files: dict[str, str] | None = None):
    """A BuildContext (a tar on disk) holding `dockerfile` and `files`."""
    import tarfile

    from runner.context.build_context import BuildContext

    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    for name, text in {"Dockerfile": dockerfile, **(files or {})}.items():
        (src / name).write_text(text)
    tar_path = root / "context.tar"
    with tarfile.open(tar_path, "w") as tar:
        for path in sorted(src.iterdir()):
            tar.add(path, arcname=path.name)
    return BuildContext(tar_path=tar_path, workspace=root, size=tar_path.stat().st_size)


def docker_ids(kind: str, *labels: str) -> list[str]:
    """Ids/names of containers, volumes or networks with all `labels` (read with the docker CLI)."""
    cmd = {"container": ["docker", "ps", "-a", "-q"], "volume": ["docker", "volume", "ls", "-q"],
           "network": ["docker", "network", "ls", "-q"]}[kind]
    for label in labels:
        cmd += ["--filter", f"label={label}"]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()


def leftovers(*labels: str) -> dict[str, list[str]]:
    return {kind: ids for kind in ("container", "volume", "network") if (ids := docker_ids(kind, *labels))}

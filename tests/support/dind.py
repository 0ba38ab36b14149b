"""dind in the contract suite: sidecars from a dind image built here (scripts/dind-image.sh,
cached by tag; no image can be pulled on these machines), with the capability profile these
hosts need because they refuse --privileged, and the registry reached by name through the
host gateway (inside a sidecar, 127.0.0.1 is the sidecar itself)."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

from tests.support import ExecutorSupport

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

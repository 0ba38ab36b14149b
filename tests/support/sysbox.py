"""sysbox in the contract suite: runs only where the host engine has the sysbox-runc runtime
(it cannot be installed on these machines, so here every sysbox case skips, saying why)."""

from __future__ import annotations

import json
import subprocess

from tests.support import ExecutorSupport
from tests.support.dind import base_image, image, registry_name

RUNTIME = "sysbox-runc"


def runtimes() -> list[str]:
    try:
        out = subprocess.run(["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:  # no engine reachable (it prints "null" then)
        return []
    try:
        return sorted(json.loads(out.stdout or "{}"))
    except ValueError:
        return []


def skip_reason() -> str | None:
    if RUNTIME not in runtimes():
        return f"{RUNTIME} is not installed: the host Docker Engine has no {RUNTIME} runtime (sysbox cannot be installed here)"
    return None


def config(env: dict) -> dict:
    host = registry_name(env).rsplit(":", 1)[0]
    return {"enabled": True, "image": image(), "extra_hosts": {host: "host-gateway"},
            "insecure_registries": [registry_name(env)], "ready_timeout": 30}


SUPPORT = ExecutorSupport(name="sysbox", config=config, skip_reason=skip_reason, registry_key="RUNNER_DEV_REGISTRY_NAME",
                          engine=True, base_image=base_image, extra={"engine_per_job": True})

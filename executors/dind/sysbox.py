"""sysbox executor: the dind executor with the sysbox-runc runtime and never privileged mode.

Sysbox gives the sidecar a user-namespaced root and a virtualised /proc, /sys and cgroups, so
dockerd runs inside without host privileges. check() refuses when the host engine has no
sysbox-runc runtime registered."""

from __future__ import annotations

from typing import ClassVar

from executors.dind.config import SysboxConfig
from executors.dind.executor import DindExecutor

RISK = ("each job runs in a sidecar under sysbox-runc, unprivileged: root inside is an unprivileged "
        "user on the host; escaping needs a kernel or sysbox bug")


class SysboxExecutor(DindExecutor):
    name: ClassVar[str] = "sysbox"
    risk: ClassVar[str] = RISK
    Config = SysboxConfig
    force_unprivileged: ClassVar[bool] = True

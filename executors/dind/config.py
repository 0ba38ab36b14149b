"""The dind and sysbox executors' settings (light: the settings import them)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from executors.base import ExecutorConfig
from executors.registry_cache import CacheRepo, cache_repo_field


class DindConfig(ExecutorConfig):
    """executors.dind: one Docker-in-Docker sidecar per job."""

    docker_host: str = Field(default="unix:///var/run/docker.sock", description="the host engine that runs the sidecars")
    image: str = Field(default="docker:dind", description="sidecar image running dockerd (scripts/dind-image.sh builds one offline)")
    privileged: bool = Field(default=True, description="run the sidecar privileged; where the host refuses, set false and use the profile below")
    cap_add: list[str] = Field(default_factory=list, description="capabilities to add when not privileged, e.g. [ALL]")
    cap_drop: list[str] = Field(default_factory=list, description="capabilities to drop, e.g. [SYS_RESOURCE]")
    security_opt: list[str] = Field(default_factory=list, description="e.g. [seccomp=unconfined, apparmor=unconfined, systempaths=unconfined]")
    mount_cgroup: bool = Field(default=False, description="bind-mount /sys/fs/cgroup read-write into the sidecar")
    extra_hosts: dict[str, str] = Field(default_factory=dict, description="NAME: IP or NAME: host-gateway, for the sidecar")
    insecure_registries: list[str] = Field(default_factory=list, description="extra --insecure-registry for the inner daemon")
    registry_mirrors: list[str] = Field(default_factory=list, description="--registry-mirror URLs for the inner daemon")
    mtu: int | None = Field(default=None, description="--mtu of the inner daemon's bridge")
    cpus: float | None = Field(default=None, description="CPU limit of the sidecar")
    memory: str | None = Field(default=None, description="memory limit of the sidecar, e.g. 4g")
    connection: Literal["unix", "tls"] = Field(default="unix", description="unix socket in a per-job directory, or mutual TLS made per sidecar")
    isolate_network: bool = Field(default=True, description="a network per sidecar, so sidecars cannot reach each other")
    socket_dir: Path = Field(default=Path("/var/run/runner/dind"), description="where per-sidecar socket directories go (keep the path short)")
    ready_timeout: float = Field(default=30.0, description="seconds to wait for the inner daemon before failing with its log")
    warm_pool: int = Field(default=0, ge=0, description="idle ready sidecars kept per worker; each serves one job")
    repo_cache: bool = Field(default=False, description="a layer-cache volume per job cache_key, mounted as the sidecar's /var/lib/docker")
    repo_cache_max_bytes: int = Field(default=20 * 1024**3, description="total size of cache volumes before least recently used ones go")
    repo_cache_wait: float = Field(default=0.0, description="seconds a job waits for a busy cache volume before building uncached")
    reuse: Literal["never", "per_cache_key"] = Field(
        default="never", description="per_cache_key: keep a sidecar after a job for the next job with the same cache_key "
        "(its build cache warm; containers, networks and volumes removed between jobs); never: one sidecar per job")
    reuse_idle_seconds: float = Field(default=300.0, gt=0, description="a kept sidecar no job took for this long is removed")
    reuse_max_jobs: int = Field(default=20, ge=1, description="jobs one kept sidecar serves before it is replaced by a fresh one")
    cache_repo: CacheRepo = cache_repo_field()
    runtime: str | None = Field(default=None, description="OCI runtime of the sidecar (sysbox: sysbox-runc)")


class SysboxConfig(DindConfig):
    """executors.sysbox: dind under the sysbox-runc runtime, never privileged."""

    privileged: bool = Field(default=False, description="never privileged: sysbox isolates the sidecar without it")
    runtime: str | None = Field(default="sysbox-runc", description="the sysbox OCI runtime registered with the host engine")

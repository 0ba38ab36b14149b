"""The daemonless executors' settings (light: the settings import them)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from executors.base import ExecutorConfig
from executors.registry_cache import CacheRepo, cache_repo_field


class BuildahConfig(ExecutorConfig):
    """executors.buildah: daemonless builds with buildah."""

    binary: str = Field(default="buildah", description="the buildah binary")
    storage_driver: Literal["auto", "overlay", "vfs"] = Field(
        default="auto", description="auto: overlay when the kernel allows it here, else vfs")
    isolation: Literal["auto", "oci", "chroot", "rootless"] = Field(
        default="auto", description="auto: oci as root on a host, chroot without CAP_SYS_ADMIN, rootless as non-root")
    storage_root: Path = Field(default=Path("/var/lib/runner/buildah"), description="persistent image and layer-cache store")
    run_root: Path = Field(default=Path("/run/runner/buildah"), description="buildah's runtime state (--runroot)")
    layers: bool = Field(default=True, description="cache every step (--layers)")
    format: Literal["oci", "docker"] = Field(default="oci", description="image and manifest format: oci, or docker (v2s2)")
    cache_repo: CacheRepo = cache_repo_field()
    keep_images: bool = Field(default=False, description="also name the image in the store with the job's tags (and keep it)")


class ImgConfig(ExecutorConfig):
    """executors.img: daemonless builds with img (where it is installed)."""

    binary: str = Field(default="img", description="the img binary")
    state_dir: Path = Field(default=Path("/var/lib/runner/img"), description="img's state and layer cache (-s)")
    backend: Literal["auto", "native", "overlayfs", "fuse-overlayfs"] = Field(default="auto", description="img's snapshotter (-b)")
    cache_repo: CacheRepo = cache_repo_field()
    keep_images: bool = Field(default=False, description="keep the job's tags in img's state after the job")

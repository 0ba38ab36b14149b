"""The socket executor's settings (light: the settings import it)."""

from __future__ import annotations

from pydantic import Field

from executors.base import ExecutorConfig
from executors.builtin import ENABLED_BY_DEFAULT
from executors.registry_cache import CacheRepo, cache_repo_field


class SocketConfig(ExecutorConfig):
    """executors.socket: builds on the host's Docker Engine through its socket."""

    enabled: bool = Field(default=ENABLED_BY_DEFAULT, description="off by default: a job on the host engine is root-equivalent on the host")
    docker_host: str = Field(default="unix:///var/run/docker.sock", description="the Docker Engine API endpoint (unix:// or tcp://)")
    keep_images: bool = Field(default=False, description="keep the built image in the engine after the push")
    cache_repo: CacheRepo = cache_repo_field()

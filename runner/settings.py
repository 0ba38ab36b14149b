"""One typed settings tree: a YAML file (RUNNER_CONFIG) with RUNNER_* env overrides.

Nested keys use a double underscore in env vars, e.g. RUNNER_REDIS_URL,
RUNNER_EXECUTORS__SOCKET__ENABLED=true, RUNNER_LIMITS__MAX_CONTEXT_BYTES=1000000.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from runner.settings_api import ApiConfig, CallbacksConfig, GitConfig, WebhooksConfig


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegistryConfig(Strict):
    """A registry jobs may push to, and how to log in to it."""

    host: str = Field(description="host[:port] exactly as it appears in image references")
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    insecure: bool = Field(default=False, description="plain HTTP (or TLS without verification)")
    ca_file: Path | None = Field(default=None, description="PEM CA bundle for a private CA")

    @model_validator(mode="after")
    def _one_password_source(self) -> RegistryConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError(f"registry {self.host}: give password or password_file, not both")
        return self

    def secret(self) -> str | None:
        """The password, read from the file at use time so rotation needs no restart."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            try:
                return self.password_file.read_text().strip()
            except OSError as exc:
                raise ValueError(f"registry {self.host}: cannot read password_file: {exc.strerror}") from None
        return None


class SocketExecutorConfig(Strict):
    enabled: bool = Field(
        default=False,
        description="Off by default: a job on the host engine is root-equivalent on the host.",
    )
    docker_host: str = "unix:///var/run/docker.sock"
    keep_images: bool = False


class BuildahExecutorConfig(Strict):
    enabled: bool = False
    binary: str = "buildah"
    storage_driver: Literal["auto", "overlay", "vfs"] = Field(
        default="auto", description="auto: overlay when the kernel allows it here, else vfs")
    isolation: Literal["auto", "oci", "chroot", "rootless"] = Field(
        default="auto", description="auto: oci as root on a host, chroot without CAP_SYS_ADMIN, rootless as non-root")
    storage_root: Path = Field(default=Path("/var/lib/runner/buildah"), description="persistent image and layer-cache store")
    run_root: Path = Path("/run/runner/buildah")
    layers: bool = Field(default=True, description="cache every step (--layers)")
    format: Literal["oci", "docker"] = "oci"
    cache_repo: str | None = Field(default=None, description="registry repo for --cache-from/--cache-to")
    keep_images: bool = False


class ImgExecutorConfig(Strict):
    enabled: bool = False
    binary: str = "img"
    state_dir: Path = Path("/var/lib/runner/img")
    backend: Literal["auto", "native", "overlayfs", "fuse-overlayfs"] = "auto"
    cache_repo: str | None = Field(default=None, description="registry repo for --cache-from/--cache-to")
    keep_images: bool = False


class DindExecutorConfig(Strict):
    enabled: bool = False
    docker_host: str = Field(default="unix:///var/run/docker.sock", description="the host engine that runs the sidecars")
    image: str = "docker:dind"
    privileged: bool = True
    cap_add: list[str] = Field(default_factory=list)
    cap_drop: list[str] = Field(default_factory=list)
    security_opt: list[str] = Field(default_factory=list)
    mount_cgroup: bool = False
    extra_hosts: dict[str, str] = Field(default_factory=dict)
    insecure_registries: list[str] = Field(default_factory=list)
    registry_mirrors: list[str] = Field(default_factory=list)
    mtu: int | None = None
    cpus: float | None = None
    memory: str | None = None
    connection: Literal["unix", "tls"] = "unix"
    isolate_network: bool = Field(default=True, description="a network per sidecar, so sidecars cannot reach each other")
    socket_dir: Path = Path("/var/run/runner/dind")
    ready_timeout: float = 30.0
    warm_pool: int = 0
    repo_cache: bool = False
    repo_cache_max_bytes: int = 20 * 1024**3
    repo_cache_wait: float = 0.0
    runtime: str | None = None


class SysboxExecutorConfig(DindExecutorConfig):
    privileged: bool = False
    runtime: str | None = "sysbox-runc"


class ExecutorsConfig(Strict):
    socket: SocketExecutorConfig = Field(default_factory=SocketExecutorConfig)
    buildah: BuildahExecutorConfig = Field(default_factory=BuildahExecutorConfig)
    img: ImgExecutorConfig = Field(default_factory=ImgExecutorConfig)
    dind: DindExecutorConfig = Field(default_factory=DindExecutorConfig)
    sysbox: SysboxExecutorConfig = Field(default_factory=SysboxExecutorConfig)
    plugins: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="settings for third-party executors, by name"
    )


class LimitsConfig(Strict):
    max_context_bytes: int = 512 * 1024**2
    max_log_bytes: int = 16 * 1024**2
    max_log_lines: int = 200_000
    max_tags: int = 32
    default_timeout: int = 3600
    max_timeout: int = 4 * 3600
    max_attempts: int = Field(default=3, description="attempts before a job that kills its worker is failed")


class WorkerConfig(Strict):
    concurrency: int = 2
    namespace: str = Field(default="runner", description="prefix of every Redis key and queue name")
    shutdown_grace: float = 60.0
    reap_interval: float = 300.0
    workspace: Path = Path("/var/tmp/runner/work")
    engine_down_policy: Literal["requeue", "fail"] = Field(
        default="fail", description="on an infrastructure error: fail the job, or requeue it (up to limits.max_attempts)")
    lease_ttl: float = Field(default=30.0, description="seconds without a heartbeat before a running job counts as lost")
    recover_interval: float = Field(default=10.0, description="how often a worker looks for jobs whose worker died")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RUNNER_", env_nested_delimiter="__", extra="forbid")

    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    default_executor: str = "buildah"
    registries: list[RegistryConfig] = Field(default_factory=list)
    executors: ExecutorsConfig = Field(default_factory=ExecutorsConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    builder: Literal["auto", "buildkit", "classic"] = "auto"
    build_secrets: dict[str, SecretStr] = Field(default_factory=dict, description="id -> value for --secret")
    api: ApiConfig = Field(default_factory=ApiConfig)
    webhooks: WebhooksConfig = Field(default_factory=WebhooksConfig)
    git: GitConfig = Field(default_factory=GitConfig)
    callbacks: CallbacksConfig = Field(default_factory=CallbacksConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, YamlSource(settings_cls))

    def registry_for(self, host: str) -> RegistryConfig | None:
        return next((r for r in self.registries if r.host == host), None)

    def queue_for(self, executor: str) -> str:
        return f"{self.worker.namespace}.{executor}"


class YamlSource(PydanticBaseSettingsSource):
    """Reads the file named by RUNNER_CONFIG (missing variable: no file, defaults apply)."""

    def get_field_value(self, field, field_name):  # pragma: no cover - unused by __call__
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("RUNNER_CONFIG")
        if not path:
            return {}
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise SettingsError(f"cannot read config file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise SettingsError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise SettingsError(f"config file {path} must hold a mapping at the top level")
        return data


class SettingsError(Exception):
    pass


def load_settings(**overrides: Any) -> Settings:
    return Settings(**overrides)

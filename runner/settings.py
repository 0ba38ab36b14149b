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
    username: str | None = Field(default=None, description="login user; leave empty for an anonymous registry")
    password: SecretStr | None = Field(default=None, description="login password or token (prefer password_file)")
    password_file: Path | None = Field(default=None, description="file holding the password, read at each use")
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
    docker_host: str = Field(default="unix:///var/run/docker.sock", description="the Docker Engine API endpoint (unix:// or tcp://)")
    keep_images: bool = Field(default=False, description="keep the built image in the engine after the push")


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
    enabled: bool = Field(default=False, description="take jobs for the img executor (img must be installed)")
    binary: str = Field(default="img", description="the img binary")
    state_dir: Path = Field(default=Path("/var/lib/runner/img"), description="img's state and layer cache (-s)")
    backend: Literal["auto", "native", "overlayfs", "fuse-overlayfs"] = Field(default="auto", description="img's snapshotter (-b)")
    cache_repo: str | None = Field(default=None, description="registry repo for --cache-from/--cache-to")
    keep_images: bool = False


class DindExecutorConfig(Strict):
    enabled: bool = Field(default=False, description="take jobs for this executor: one Docker-in-Docker sidecar per job")
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
    runtime: str | None = Field(default=None, description="OCI runtime of the sidecar (sysbox: sysbox-runc)")


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
        default_factory=dict, description="settings for third-party executors (entry-point group runner.executors), by name; "
        "{enabled: true} turns one on")


class LimitsConfig(Strict):
    max_context_bytes: int = Field(default=512 * 1024**2, description="largest build context, uncompressed (uploaded tar or "
                                   "git checkout); also caps the upload itself")
    max_context_files: int = Field(default=500_000, ge=1, description="most members (files, folders, links) in a build context")
    max_context_path_bytes: int = Field(default=4096, ge=1, description="longest member path or link target in a build "
                                        "context, in bytes")
    max_context_header_bytes: int = Field(default=1024**2, ge=1, description="largest PAX / GNU long-name header data "
                                          "before one member of a context tar")
    max_log_bytes: int = Field(default=16 * 1024**2, description="log kept per job; past it one truncation line, the build goes on")
    max_log_lines: int = Field(default=200_000, description="cap on log stream entries per job")
    max_tags: int = Field(default=32, description="most image references one job may push")
    default_timeout: int = Field(default=3600, description="seconds a job may run when it names no timeout")
    max_timeout: int = Field(default=4 * 3600, description="largest timeout a job may ask for")
    max_attempts: int = Field(default=3, description="attempts before a job that kills its worker is failed")


class RetentionConfig(Strict):
    """How long Redis keeps what jobs leave behind; nothing is kept for ever."""

    finished_seconds: int = Field(default=7 * 24 * 3600, gt=0, description="records and logs of finished jobs; "
                                  "the job list forgets them after this")
    upload_seconds: int = Field(default=3600, gt=0, description="an uploaded context whose job was never submitted")
    queued_seconds: int = Field(default=7 * 24 * 3600, gt=0, description="a queued job's context and secret values: "
                                "a job still queued after this fails for want of them")


class WorkerConfig(Strict):
    concurrency: int = Field(default=2, ge=1, description="builds one worker runs at once")
    namespace: str = Field(default="runner", description="prefix of every Redis key and queue name")
    shutdown_grace: float = Field(default=60.0, description="seconds running jobs get after SIGTERM before they are requeued")
    reap_interval: float = Field(default=300.0, description="seconds between sweeps for leftovers of finished jobs")
    workspace: Path = Field(default=Path("/var/tmp/runner/work"), description="per-job scratch directories (contexts, clones)")
    engine_down_policy: Literal["requeue", "fail"] = Field(
        default="fail", description="on an infrastructure error: fail the job, or requeue it (up to limits.max_attempts)")
    lease_ttl: float = Field(default=30.0, description="seconds without a heartbeat before a running job counts as lost")
    recover_interval: float = Field(default=10.0, description="how often a worker looks for jobs whose worker died")
    metrics_port: int = Field(default=9464, ge=0, le=65535, description="the worker's HTTP port for /metrics, /healthz and "
                              "/readyz (0: off)")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RUNNER_", env_nested_delimiter="__", extra="forbid")

    redis_url: SecretStr = Field(default=SecretStr("redis://127.0.0.1:6379/0"), description="broker and job store (redis://[:password@]host:port/db)")
    default_executor: str = Field(default="buildah", description="executor for jobs that name none")
    registries: list[RegistryConfig] = Field(default_factory=list, description="registries jobs may push to; a tag on any other is refused")
    executors: ExecutorsConfig = Field(default_factory=ExecutorsConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    builder: Literal["auto", "buildkit", "classic"] = Field(default="auto", description="BuildKit where the engine has it (auto), or force one")
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

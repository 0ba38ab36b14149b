"""One typed settings tree: a YAML file (--config, RUNNER_CONFIG or a default location) with
RUNNER_* env overrides.

Nested keys use a double underscore in env vars, e.g. RUNNER_REDIS_URL,
RUNNER_EXECUTORS__SOCKET__ENABLED=true, RUNNER_LIMITS__MAX_CONTEXT_BYTES=1000000.
`load_settings` reads both (runner/config/loader.py) and validates once; `Settings(...)`
alone is just the model (defaults plus what it is given).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, SecretStr, ValidationError, field_validator

from executors.base import ExecutorConfig
from executors.builtin import DEFAULT_EXECUTOR
from runner.config.client import ClientSettings, ClientWorker, RetentionConfig
from runner.config.loader import SettingsError, load
from runner.config.sections import ApiConfig, CallbacksConfig, DeliveriesConfig, GitConfig, StatusesConfig, WebhooksConfig
from runner.config.signing import SigningConfig
from runner.context.limits import ContextLimits
from runner.core.admission_rules import MAX_PLATFORMS, MAX_TAGS, MAX_TIMEOUT, AdmissionPolicy
from runner.core.models import Strict
from runner.core.registry_config import RegistryAuthConfig, RegistryConfig
from runner.core.validation import first_error

__all__ = ["LimitsConfig", "RetentionConfig", "Settings", "SettingsError", "WorkerConfig", "load_settings"]


#: seconds after limits.max_timeout that a draining worker still waits: a build timed out at its
#: deadline is still being stopped and cleaned up
DRAIN_MARGIN = 60


class LimitsConfig(ContextLimits):
    """The context's limits (runner.context.limits) and those on logs, tags and timeouts."""

    max_log_bytes: int = Field(default=16 * 1024**2, description="log kept per job; past it one truncation line, the build goes on")
    max_log_lines: int = Field(default=200_000, description="cap on log stream entries per job")
    max_tags: int = Field(default=MAX_TAGS, description="most image references one job may push")
    max_platforms: int = Field(default=MAX_PLATFORMS, ge=1, description="most target platforms one job may build (each is a build of "
                               "its own; an emulated one is several times slower than a native one)")
    default_timeout: int = Field(default=3600, description="seconds a job may run when it names no timeout")
    max_timeout: int = Field(default=MAX_TIMEOUT, description="largest timeout a job may ask for")
    max_attempts: int = Field(default=3, description="attempts before a job that kills its worker is failed")


class StrictRetention(RetentionConfig):
    model_config = ConfigDict(extra="forbid")


class WorkerConfig(ClientWorker):
    model_config = ConfigDict(extra="forbid")

    concurrency: int = Field(default=2, ge=1, description="builds one worker runs at once")
    shutdown_grace: float | None = Field(
        default=None, gt=0, description="seconds running builds get to finish after SIGTERM (the drain) before they are "
        "cancelled and requeued. Unset: limits.max_timeout plus a minute, so a build is never cut short: it ends, "
        "or its own timeout ends it. Set it below your platform's stop timeout when that is shorter (compose's "
        "stop_grace_period, Kubernetes' terminationGracePeriodSeconds, systemd's TimeoutStopSec)")
    max_jobs: int = Field(default=0, ge=0, description="builds this worker runs before it drains and exits (0: no "
                          "limit); 1 with a Kubernetes Job per build (KEDA ScaledJob): one build, then the pod ends. "
                          "Caps the build slots at this number")
    idle_exit: float = Field(default=0, ge=0, description="seconds without a build after which the worker drains and "
                             "exits (0: never); with max_jobs, a pod whose job another took does not wait for ever")
    reap_interval: float = Field(default=300.0, description="seconds between sweeps for leftovers of finished jobs")
    workspace: Path = Field(default=Path("/var/tmp/runner/work"), description="per-job scratch directories (contexts, clones)")
    engine_down_policy: Literal["requeue", "fail"] = Field(
        default="fail", description="on an infrastructure error: fail the job, or requeue it (up to limits.max_attempts)")
    lease_ttl: float = Field(default=30.0, description="seconds without a heartbeat before a running job counts as lost")
    recover_interval: float = Field(default=10.0, description="how often a worker looks for jobs whose worker died")
    metrics_port: int = Field(default=9464, ge=0, le=65535, description="the worker's HTTP port for /metrics, /healthz and "
                              "/readyz (0: off)")
    metrics_host: str = Field(default="0.0.0.0", description="address that HTTP server listens on: every interface by "
                              "default (a pod's probes and Prometheus reach it from outside); 127.0.0.1 keeps it on the host")


class LogConfig(Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="the least severe line the worker and `runner serve` write (`runner worker "
        "--loglevel` wins); each job's end is one line: INFO succeeded or cancelled, WARNING failed by the build, "
        "ERROR failed by the infrastructure, its credentials, a lost worker, or timed out")
    format: Literal["text", "json"] = Field(
        default="text", description="the worker's and `runner serve`'s own log lines: text, or one JSON object per line "
        "(time, level, logger, message; job_id, executor and worker on lines logged while a job runs). Secrets are "
        "masked in both")


class Settings(ClientSettings):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    default_executor: str = Field(default=DEFAULT_EXECUTOR, description="executor for jobs that name none")
    registries: list[RegistryConfig] = Field(default_factory=list, description="registries jobs may push to; a tag on any other is refused")
    registry_auth: RegistryAuthConfig = Field(
        default_factory=RegistryAuthConfig, description="where registry logins come from, the first that has one winning: a "
        "registry's own username + password or password_file, its credential_helper, then each docker_config file "
        "(credHelpers, credsStore, auths); else anonymous. Also the logins for pulling FROM images of registries not "
        "listed under registries:")
    executors: dict[str, ExecutorConfig] = Field(
        default_factory=dict, validate_default=True,
        description="each executor's own settings, by name (built-ins: socket, dind, sysbox, buildah, img; "
        "other packages add theirs through the entry-point group runner.executors); {enabled: true} turns one on")
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    retention: StrictRetention = Field(default_factory=StrictRetention)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    builder: Literal["auto", "buildkit", "classic"] = Field(default="auto", description="BuildKit where the engine has it (auto), or force one")
    build_secrets: dict[str, SecretStr] = Field(default_factory=dict, description="id -> value for --secret")
    api: ApiConfig = Field(default_factory=ApiConfig)
    webhooks: WebhooksConfig = Field(default_factory=WebhooksConfig)
    git: GitConfig = Field(default_factory=GitConfig)
    callbacks: CallbacksConfig = Field(default_factory=CallbacksConfig)
    statuses: StatusesConfig = Field(default_factory=StatusesConfig)
    deliveries: DeliveriesConfig = Field(default_factory=DeliveriesConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    reuse: bool = Field(default=True, description="a job whose inputs (context files, Dockerfile, args, labels, "
                        "platforms, executor, base images by digest) equal a pushed job's gets that image under its "
                        "tags instead of a build; false: every job builds (README: reusing images)")
    signing: SigningConfig = Field(default_factory=SigningConfig, description="signatures and provenance for every pushed "
                                   "image (docs/signing.md)")

    @field_validator("executors", mode="before")
    @classmethod
    def _executor_configs(cls, raw: Any) -> dict[str, ExecutorConfig]:
        """Each section validated by its executor's own Config (an unknown name is an error);
        every built-in gets its defaults when the file does not mention it."""
        from executors.plugins import BUILTIN, ExecutorRegistry, UnknownExecutor

        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ValueError("executors must map executor names to their settings")
        registry, configs = ExecutorRegistry(), {}
        for name, section in raw.items():
            try:
                config_class = registry.config_class(name)
            except UnknownExecutor as exc:
                raise ValueError(str(exc)) from None
            if isinstance(section, ExecutorConfig):
                configs[name] = section
                continue
            try:
                configs[name] = config_class.model_validate(section or {})
            except ValidationError as exc:
                first = first_error(exc)
                raise ValueError(f"{'.'.join((name, *first.path))}: {first.message}") from None
        for name in BUILTIN:
            if name not in configs:
                configs[name] = registry.config_class(name)()
        return configs

    def admission_policy(self) -> AdmissionPolicy:
        """What admission checks a request against, as plain values (runner.core.admission_rules)."""
        return AdmissionPolicy(self.limits.max_tags, self.limits.max_platforms, self.limits.max_timeout,
                               tuple(r.host for r in self.registries), self.default_executor,
                               {name: config.enabled for name, config in self.executors.items()},
                               frozenset(self.build_secrets))

    def enabled_executors(self) -> list[str]:
        return sorted(name for name, config in self.executors.items() if config.enabled)

    def queue_for(self, executor: str) -> str:
        return f"{self.worker.namespace}.{executor}"

    def shutdown_grace(self) -> float:
        """Seconds a draining worker's running builds get before they are requeued
        (worker.shutdown_grace, else limits.max_timeout + DRAIN_MARGIN)."""
        configured = self.worker.shutdown_grace
        return configured if configured is not None else self.limits.max_timeout + DRAIN_MARGIN


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """The whole settings tree from `config` (else RUNNER_CONFIG, else a default location:
    runner.config.loader.config_source) and RUNNER_* env. Raises SettingsError naming what was wrong."""
    return load(Settings, overrides, config)

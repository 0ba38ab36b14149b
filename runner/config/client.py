"""What a client of the runner needs from the settings — where Redis (or the API) is, the
namespace and the retention of what it writes — and nothing else. `Settings` extends these
models; the CLI's read commands load only these, so they start fast and a mistake elsewhere in
the file (say, an executor's section) never stops `runner status`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from runner.config.redis_target import RedisTarget, SentinelSet, TlsFiles, parse_node


class Lenient(BaseModel):
    """Reads the keys it knows and leaves the rest to the full settings."""

    model_config = ConfigDict(extra="ignore")


class RetentionConfig(Lenient):
    """How long Redis keeps what jobs leave behind; nothing is kept for ever."""

    finished_seconds: int = Field(default=7 * 24 * 3600, gt=0, description="records and logs of finished jobs; "
                                  "the job list forgets them after this")
    upload_seconds: int = Field(default=3600, gt=0, description="an uploaded context whose job was never submitted")
    queued_seconds: int = Field(default=7 * 24 * 3600, gt=0, description="a queued job's context and secret values: "
                                "a job still queued after this fails for want of them")


class ClientWorker(Lenient):
    namespace: str = Field(default="runner", description="prefix of every Redis key and queue name")


class ClientApi(Lenient):
    url: str | None = Field(default=None, description="client side: the CLI talks to this API instead of Redis")
    token: SecretStr | None = Field(default=None, description="client side: bearer token (env RUNNER_API_TOKEN wins)")


class ClientDeliveries(Lenient):
    recover_after: float = Field(default=30.0, gt=0, description="seconds a delivery's task message may go untaken "
                                 "before a worker sends it again (it was lost with a worker that died holding it)")


class RedisTlsConfig(BaseModel):
    """TLS towards Redis: on for a rediss:// URL, and for the sentinels and the master when
    redis_sentinel.tls is true."""

    model_config = ConfigDict(extra="forbid")

    ca_file: Path | None = Field(default=None, description="the CA (PEM) that signed Redis's certificate; default: "
                                 "the system's trust store (what managed Redis services need)")
    cert_file: Path | None = Field(default=None, description="a client certificate (PEM), for a Redis that asks for "
                                   "one (tls-auth-clients)")
    key_file: Path | None = Field(default=None, description="the client certificate's private key (default: inside "
                                  "cert_file)")
    check_hostname: bool = Field(default=True, description="the certificate must name the host connected to")

    @model_validator(mode="after")
    def _key_needs_cert(self) -> RedisTlsConfig:
        if self.key_file and not self.cert_file:
            raise ValueError("key_file is set without cert_file")
        return self


class RedisSentinelConfig(BaseModel):
    """Redis with failover: the master is asked of the sentinels at each connection, and every
    process reconnects when they announce a new one."""

    model_config = ConfigDict(extra="forbid")

    master: str = Field(min_length=1, description="the master's name in the sentinels' config (sentinel monitor NAME ...)")
    sentinels: list[str] = Field(min_length=1, description="HOST:PORT of each sentinel (port 26379 when left out)")
    password: SecretStr | None = Field(default=None, description="the master's and replicas' password (default: "
                                       "redis_password or redis_password_file)")
    sentinel_password: SecretStr | None = Field(default=None, description="the sentinels' own password (their requirepass)")
    db: int = Field(default=0, ge=0, description="the database number")
    tls: bool = Field(default=False, description="the sentinels and the master speak TLS (with the files of redis_tls)")

    @field_validator("sentinels")
    @classmethod
    def _nodes(cls, value: list[str]) -> list[str]:
        for node in value:
            parse_node(node)
        return value


class ClientSettings(Lenient):
    redis_url: SecretStr = Field(default=SecretStr("redis://127.0.0.1:6379/0"),
                                 description="broker and job store: redis://[[user]:password@]host:port/db, or "
                                 "rediss://... for TLS (see redis_tls); unused with redis_sentinel")
    redis_username: str | None = Field(default=None, description="ACL user (default: the URL's, else `default`)")
    redis_password: SecretStr | None = Field(default=None, description="the ACL user's password (default: the URL's)")
    redis_password_file: Path | None = Field(default=None, description="a file holding the password, read at each "
                                             "connection (a rotation needs no restart)")
    redis_tls: RedisTlsConfig = Field(default_factory=RedisTlsConfig)
    redis_sentinel: RedisSentinelConfig | None = Field(default=None, description="find the master through Redis "
                                                        "Sentinel instead of redis_url: {master, sentinels: [host:port, "
                                                        "...], password, sentinel_password, db, tls}")
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    worker: ClientWorker = Field(default_factory=ClientWorker)
    api: ClientApi = Field(default_factory=ClientApi)
    deliveries: ClientDeliveries = Field(default_factory=ClientDeliveries)

    @model_validator(mode="after")
    def _one_password(self) -> ClientSettings:
        if self.redis_password is not None and self.redis_password_file is not None:
            raise ValueError("redis_password and redis_password_file are both set: choose one")
        return self

    def redis_target(self) -> RedisTarget:
        """How every process of the runner reaches Redis (runner/config/redis_target.py)."""
        tls = self.redis_tls
        files = TlsFiles(_text(tls.ca_file), _text(tls.cert_file), _text(tls.key_file), tls.check_hostname)
        sentinel, password = None, self.redis_password
        if (config := self.redis_sentinel) is not None:
            secret = config.sentinel_password.get_secret_value() if config.sentinel_password else None
            sentinel = SentinelSet(config.master, tuple(parse_node(n) for n in config.sentinels), secret, config.db, config.tls)
            password = config.password or password
        return RedisTarget(url=self.redis_url.get_secret_value(), username=self.redis_username,
                           password=password.get_secret_value() if password else None,
                           password_file=_text(self.redis_password_file),
                           tls=files, sentinel=sentinel)


def _text(path: Path | None) -> str | None:
    return str(path) if path else None


#: every top-level setting of the full tree (runner.config.settings.Settings; a test keeps the
#: two equal), so that a client loading its part still refuses a RUNNER_* variable naming none
SETTINGS_KEYS = frozenset({
    "redis_url", "redis_username", "redis_password", "redis_password_file", "redis_tls", "redis_sentinel",
    "retention", "worker", "api", "deliveries", "default_executor", "registries", "executors", "limits", "builder",
    "build_secrets", "webhooks", "git", "callbacks", "statuses", "log", "registry_auth", "signing", "reuse",
})


def load_client_settings(config: str | Path | None = None, **overrides: Any) -> ClientSettings:
    """The client's part of the config file (`config`, else RUNNER_CONFIG, else a default
    location: runner.config.loader.config_source) and RUNNER_* env, validated."""
    from runner.config.loader import load

    return load(ClientSettings, overrides, config, known=SETTINGS_KEYS)

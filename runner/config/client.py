"""What a client of the runner needs from the settings — where Redis (or the API) is, the
namespace and the retention of what it writes — and nothing else. `Settings` extends these
models; the CLI's read commands load only these, so they start fast and a mistake elsewhere in
the file (say, an executor's section) never stops `runner status`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr


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


class ClientSettings(Lenient):
    redis_url: SecretStr = Field(default=SecretStr("redis://127.0.0.1:6379/0"),
                                 description="broker and job store (redis://[:password@]host:port/db)")
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    worker: ClientWorker = Field(default_factory=ClientWorker)
    api: ClientApi = Field(default_factory=ClientApi)
    deliveries: ClientDeliveries = Field(default_factory=ClientDeliveries)


def load_client_settings(**overrides: Any) -> ClientSettings:
    """The client's part of the file named by RUNNER_CONFIG and RUNNER_* env, validated."""
    from runner.config.loader import load

    return load(ClientSettings, overrides)

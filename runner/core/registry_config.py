"""A registry jobs may push to, and where registry credentials come from, as configured.
Light (pydantic only): the settings import it. runner.core.registry_auth resolves them."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator

from runner.core.docker_config import HELPER_NAME
from runner.core.models import Strict, read_secret


class RegistryConfig(Strict):
    """A registry jobs may push to, and how to log in to it."""

    host: str = Field(description="host[:port] exactly as it appears in image references")
    username: str | None = Field(default=None, description="login user; leave empty for an anonymous registry")
    password: SecretStr | None = Field(default=None, description="login password or token (prefer password_file)")
    password_file: Path | None = Field(default=None, description="file holding the password, read at each job's use "
                                       "(a rotated password needs no restart)")
    credential_helper: str | None = Field(default=None, description="NAME of a Docker credential helper: "
                                          "`docker-credential-NAME get` on the worker's PATH is asked for this registry's "
                                          "login (ecr-login, gcr, acr-env, ...); its answer is kept for "
                                          "registry_auth.cache_seconds. Instead of username/password")
    insecure: bool = Field(default=False, description="plain HTTP (or TLS without verification)")
    ca_file: Path | None = Field(default=None, description="PEM CA bundle for a private CA")
    push_retry_seconds: float = Field(default=90.0, ge=0, description="a push failing on a connection error or a 5xx is "
                                      "tried again (after 1, 2, 4, 8, then every 10 s) while the next attempt starts "
                                      "within this many seconds of the first failure; 0: never")

    @model_validator(mode="after")
    def _one_password_source(self) -> RegistryConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError(f"registry {self.host}: give password or password_file, not both")
        if self.credential_helper is not None:
            if not HELPER_NAME.match(self.credential_helper):
                raise ValueError(f"registry {self.host}: credential_helper {self.credential_helper[:40]!r} is not a helper "
                                 "name (NAME of docker-credential-NAME, no path)")
            if self.username or self.password is not None or self.password_file is not None:
                raise ValueError(f"registry {self.host}: give credential_helper or username/password, not both "
                                 "(the helper answers with the username)")
        return self

    def secret(self) -> str | None:
        """The password, read from the file at use time so rotation needs no restart."""
        return read_secret(self.password, self.password_file, f"registry {self.host}: password_file")

    def credentials(self) -> tuple[str, str] | None:
        """(username, password) this entry itself holds, or None (no username: the registry's
        login comes from elsewhere, or it is anonymous). Raises ValueError (naming the registry,
        never the secret) when password_file cannot be read."""
        if not self.username:
            return None
        secret = self.secret()
        return (self.username, secret) if secret is not None else None

    @property
    def plain_http(self) -> bool:
        """Spoken to over plain HTTP: marked insecure, or on this host's loopback."""
        return self.insecure or is_loopback(self.host)


class RegistryAuthConfig(Strict):
    """Where registry logins come from besides `registries:` entries, and how long answers last."""

    docker_config: list[Path] = Field(default_factory=list, description="Docker CLI config files (config.json, a mounted "
                                      "kubernetes.io/dockerconfigjson secret, or a directory holding config.json), read as "
                                      "the Docker CLI reads them: credHelpers, then credsStore, then auths. A file is read "
                                      "again when it changes on disk (no restart). The first file that answers for a "
                                      "registry wins; a registry's own username/password or credential_helper wins over them")
    cache_seconds: float = Field(default=300.0, ge=0, description="how long a credential helper's answer is used before "
                                 "the helper is asked again (a registry refusing it has it asked again at once); "
                                 "0: asked at every use")
    helper_timeout: float = Field(default=30.0, gt=0, le=600, description="seconds a credential helper may take to answer; "
                                  "one that takes longer is stopped and the job fails as infrastructure")

    @field_validator("docker_config", mode="before")
    @classmethod
    def _one_or_more(cls, value: object) -> object:
        return [value] if isinstance(value, str | Path) else value


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name in ("localhost", "::1", "[::1]") or name.startswith("127.")

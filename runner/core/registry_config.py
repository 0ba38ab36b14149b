"""A registry jobs may push to, as configured. Light (pydantic only): the settings import it."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from runner.core.models import Strict, read_secret


class RegistryConfig(Strict):
    """A registry jobs may push to, and how to log in to it."""

    host: str = Field(description="host[:port] exactly as it appears in image references")
    username: str | None = Field(default=None, description="login user; leave empty for an anonymous registry")
    password: SecretStr | None = Field(default=None, description="login password or token (prefer password_file)")
    password_file: Path | None = Field(default=None, description="file holding the password, read at each use")
    insecure: bool = Field(default=False, description="plain HTTP (or TLS without verification)")
    ca_file: Path | None = Field(default=None, description="PEM CA bundle for a private CA")
    push_retry_seconds: float = Field(default=90.0, ge=0, description="a push failing on a connection error or a 5xx is "
                                      "tried again (after 1, 2, 4, 8, then every 10 s) while the next attempt starts "
                                      "within this many seconds of the first failure; 0: never")

    @model_validator(mode="after")
    def _one_password_source(self) -> RegistryConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError(f"registry {self.host}: give password or password_file, not both")
        return self

    def secret(self) -> str | None:
        """The password, read from the file at use time so rotation needs no restart."""
        return read_secret(self.password, self.password_file, f"registry {self.host}: password_file")

    def credentials(self) -> tuple[str, str] | None:
        """(username, password) to log in with, or None for an anonymous registry. Raises
        ValueError (naming the registry, never the secret) when password_file cannot be read."""
        if not self.username:
            return None
        secret = self.secret()
        return (self.username, secret) if secret is not None else None

    @property
    def plain_http(self) -> bool:
        """Spoken to over plain HTTP: marked insecure, or on this host's loopback."""
        return self.insecure or is_loopback(self.host)


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name in ("localhost", "::1", "[::1]") or name.startswith("127.")

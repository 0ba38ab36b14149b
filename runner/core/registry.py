"""A registry jobs may push to, as configured. Light (pydantic only): the settings import it."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


class RegistryConfig(BaseModel):
    """A registry jobs may push to, and how to log in to it."""

    model_config = ConfigDict(extra="forbid")

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


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name in ("localhost", "::1", "[::1]") or name.startswith("127.")

"""What every settings model shares: no unknown keys, and secrets given inline or by file."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr


class Strict(BaseModel):
    """A settings model that refuses keys it does not know (a typo is an error, not a no-op)."""

    model_config = ConfigDict(extra="forbid")


def read_secret(value: SecretStr | None, path: Path | None, what: str) -> str | None:
    """The secret from `value` or the file at `path` (stripped, read at each use so rotation
    needs no restart); None if neither is set."""
    if value is not None:
        return value.get_secret_value()
    if path is not None:
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ValueError(f"{what}: cannot read it: {exc.strerror}") from None
    return None

"""What settings and job models share: no unknown keys, secrets given inline or by file, base URLs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, SecretStr

HTTP_URL = re.compile(r"^https?://[^/@\s?#]+(?:/[^\s?#]*)?$")
MAX_URL = 2048


class Strict(BaseModel):
    """A settings model that refuses keys it does not know (a typo is an error, not a no-op)."""

    model_config = ConfigDict(extra="forbid")


def base_url(url: str | None) -> str | None:
    """An http(s) base URL (no credentials, query or fragment; at most MAX_URL characters),
    without its trailing slash."""
    if url is not None and (len(url) > MAX_URL or not HTTP_URL.match(url)):
        raise ValueError(f"{url[:100]!r} is not an http(s) URL without credentials, query or fragment "
                         f"of at most {MAX_URL} characters")
    return url.rstrip("/") if url else url


BaseUrl = Annotated[str | None, AfterValidator(base_url)]


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

"""Docker CLI config files (`~/.docker/config.json`, a Kubernetes `kubernetes.io/dockerconfigjson`
secret) as a credential source, read the way the Docker CLI reads them (docker/cli
`cli/config/configfile` and `cli/config/credentials`):

- the key for Docker Hub is `https://index.docker.io/v1/`; every other registry's key is its
  `host[:port]`;
- `credHelpers[key]` names the helper for one registry; else `credsStore` is the helper for
  every registry; else `auths` answers: its entry under the exact key, else the first entry
  whose key, stripped of scheme and path (`ConvertToHostname`), is the key;
- an `auths` entry holds `auth` (base64 `user:password`, which wins over `username` and
  `password`), `username` / `password`, or `identitytoken` (an OAuth2 refresh token).

Also the legacy `.dockercfg` layout (the entries at the top level, no `auths`), which
`kubernetes.io/dockercfg` secrets hold. A file is parsed again only when it changed on disk
(a rotated secret is a new file), never for every lookup."""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

#: the key Docker keeps Docker Hub's credentials under
INDEX_SERVER = "https://index.docker.io/v1/"
#: what Docker Hub is called in image references, by BuildKit and by the distribution API
HUB_NAMES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
#: a helper's name is the suffix of an executable on PATH: no path, nothing a shell would read
HELPER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class DockerConfigError(ValueError):
    """A docker config file that cannot be read or is not one; the message names the file's
    setting and what is wrong, never a value from it."""


def auth_key(host: str) -> str:
    """The key Docker stores `host`'s credentials under (getAuthConfigKey; BuildKit's
    `registry-1.docker.io` counts as Docker Hub too)."""
    return INDEX_SERVER if host in HUB_NAMES else host


def convert_to_hostname(maybe_url: str) -> str:
    """docker/cli's ConvertToHostname: a registry URL (legacy config keys carry a scheme and a
    path) reduced to `host[:port]`, as Go's url.Parse then Hostname/Port would."""
    if "://" in maybe_url:
        rest = maybe_url.split("://", 1)[1]
        host = re.split(r"[/?#]", rest, maxsplit=1)[0].rpartition("@")[2]
        if host.startswith("["):  # a bracketed IPv6 literal, with or without a port
            literal, _, after = host[1:].partition("]")
            if after.startswith(":") and after[1:].isdigit():
                return f"[{literal}]:{after[1:]}"
            return literal if not after else host
        elif host.count(":") > 1:  # an unbracketed IPv6 literal: url.Parse refuses it (hostFromURLFallback)
            address, _, port = host.rpartition(":")
            return f"[{address}]:{port}" if address and port.isdigit() else host
        elif host:
            return host
    return maybe_url.split("/", 1)[0]


def decode_auth(encoded: str) -> tuple[str, str]:
    """(username, password) of an `auth` field: base64 of `user:password` (decodeAuth)."""
    try:
        decoded = base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, ValueError):
        raise ValueError("its auth is not base64 of user:password") from None
    username, colon, password = decoded.partition(":")
    if not colon or not username:
        raise ValueError("its auth is not base64 of user:password")
    return username, password.strip("\x00")


@dataclass(frozen=True)
class AuthEntry:
    """One `auths` entry: a login, or an identity token (the username is then unused)."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)

    @property
    def empty(self) -> bool:
        return not (self.username or self.password or self.identity_token)


@dataclass(frozen=True)
class DockerConfig:
    """A parsed config file: what it says about credentials, nothing else."""

    auths: dict[str, AuthEntry] = field(default_factory=dict)
    creds_store: str | None = None
    cred_helpers: dict[str, str] = field(default_factory=dict)

    def helper_for(self, host: str) -> str | None:
        """The helper that answers for `host` (getConfiguredCredentialStore), or None: `auths` answers."""
        return self.cred_helpers.get(auth_key(host)) or self.creds_store

    def entry_for(self, host: str) -> AuthEntry | None:
        """The `auths` entry for `host` (the file store's Get), or None."""
        key = auth_key(host)
        if key in self.auths:
            return self.auths[key]
        return next((entry for name, entry in self.auths.items() if convert_to_hostname(name) == key), None)


def parse(text: str, where: str) -> DockerConfig:
    """A config.json (or legacy .dockercfg) document; DockerConfigError naming `where`."""
    try:
        document = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        line = getattr(exc, "lineno", None)
        raise DockerConfigError(f"{where}: not valid JSON" + (f" (line {line})" if line else "")) from None
    if not isinstance(document, dict):
        raise DockerConfigError(f"{where}: not a JSON object")
    if "auths" not in document and document and all(isinstance(v, dict) for v in document.values()) \
            and not {"credsStore", "credHelpers"} & document.keys():
        document = {"auths": document}  # the legacy .dockercfg layout
    auths = document.get("auths") or {}
    helpers = document.get("credHelpers") or {}
    store = document.get("credsStore") or None
    if not isinstance(auths, dict) or not all(isinstance(v, dict) for v in auths.values()):
        raise DockerConfigError(f"{where}: auths must map registries to objects")
    if not isinstance(helpers, dict) or not all(isinstance(v, str) for v in helpers.values()):
        raise DockerConfigError(f"{where}: credHelpers must map registries to helper names")
    for name in [*helpers.values(), *([store] if store is not None else [])]:
        if not isinstance(name, str) or not HELPER_NAME.match(name):
            raise DockerConfigError(f"{where}: {str(name)[:40]!r} is not a credential helper name "
                                    "(the suffix of docker-credential-NAME on PATH)")
    return DockerConfig(auths={key: _entry(value, where, key) for key, value in auths.items()},
                        creds_store=store, cred_helpers=dict(helpers))


def _entry(value: dict, where: str, key: str) -> AuthEntry:
    fields = {name: value.get(name) or "" for name in ("auth", "username", "password", "identitytoken")}
    if not all(isinstance(v, str) for v in fields.values()):
        raise DockerConfigError(f"{where}: auths[{key[:100]!r}]: auth, username, password and identitytoken must be strings")
    username, password = fields["username"], fields["password"]
    if fields["auth"]:
        try:
            username, password = decode_auth(fields["auth"])
        except ValueError as exc:
            raise DockerConfigError(f"{where}: auths[{key[:100]!r}]: {exc}") from None
    return AuthEntry(username=username, password=password, identity_token=fields["identitytoken"])


class DockerConfigFile:
    """A config file on disk, parsed again when it changes (its inode, size or times: a
    Kubernetes secret is rotated by swapping a symlink, an editor writes a new file). A file
    that is missing, unreadable or not a config raises DockerConfigError on every read."""

    def __init__(self, path: Path, where: str):
        self.path, self.where = path, where
        self._lock = threading.Lock()
        self._seen: tuple | None = None
        self._parsed: DockerConfig | DockerConfigError | None = None

    def _file(self) -> Path:
        return self.path / "config.json" if self.path.is_dir() else self.path  # a DOCKER_CONFIG directory works too

    def read(self) -> DockerConfig:
        path = self._file()
        try:
            st = os.stat(path)
        except OSError as exc:
            raise DockerConfigError(f"{self.where}: cannot read it: {exc.strerror}") from None
        signature = (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with self._lock:
            if signature != self._seen:
                try:
                    self._parsed = parse(path.read_text(), self.where)
                except OSError as exc:
                    self._parsed = DockerConfigError(f"{self.where}: cannot read it: {exc.strerror}")
                except DockerConfigError as exc:
                    self._parsed = exc
                self._seen = signature
            parsed = self._parsed
        if isinstance(parsed, DockerConfigError):
            raise parsed
        assert parsed is not None
        return parsed

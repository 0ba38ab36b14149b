"""Which login a registry gets, from the sources the config names, in this order (the first
that has one wins):

1. the registry's own entry under `registries:`: `username` with `password` or
   `password_file` (the file read at each lookup, so a rotated password needs no restart);
2. the registry's own `credential_helper` (`docker-credential-NAME get`);
3. each `registry_auth.docker_config` file in the order listed, read as the Docker CLI reads
   it (runner.core.docker_config): `credHelpers` for that registry, else `credsStore`, else
   `auths`;
4. nothing: the registry is used anonymously.

A helper's answer is kept for `registry_auth.cache_seconds` (the protocol has no expiry of its
own), and forgotten at once when a registry refuses it (`forget`), so the next lookup asks
again. Docker config files are parsed again when they change on disk. Every secret handed out
is remembered for masking (runner.core.process_log). One resolver per process, shared by its
executors through runner.core.registry_client.Registries."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial

from runner.core import credential_helper
from runner.core.credential_helper import HelperAnswer, HelperFailed
from runner.core.docker_config import (
    HUB_NAMES,
    INDEX_SERVER,
    DockerConfig,
    DockerConfigError,
    DockerConfigFile,
    auth_key,
    convert_to_hostname,
)
from runner.core.errors import InfrastructureError
from runner.core.process_log import remember_secret
from runner.core.registry_config import RegistryAuthConfig, RegistryConfig

#: what hosts not under `registries:` are called when a docker config names Docker Hub
HUB = "docker.io"


class CredentialsUnavailable(InfrastructureError):
    """A source that should answer cannot: an unreadable password_file, a broken docker
    config file, a helper that failed. Names the registry and the source, never a secret."""


@dataclass(frozen=True)
class Credentials:
    """A registry login. With `identity_token`, `secret` is an OAuth2 refresh token (Docker's
    `identitytoken`) for the registry's token service, and the username is unused."""

    username: str
    secret: str = field(repr=False)
    #: where it came from, for `runner doctor` and messages (never the value)
    source: str = ""
    identity_token: bool = False

    def basic(self) -> str:
        """base64 of `username:secret`: the `auth` field of Docker and containers auth files."""
        return base64.b64encode(f"{self.username}:{self.secret}".encode()).decode()


def _given(credentials: Credentials) -> Credentials:
    return credentials


def canonical_host(name: str) -> str:
    """A docker config key (`https://index.docker.io/v1/`, `https://host:port/v2/`, `host`) as a registry host."""
    host = convert_to_hostname(name)
    return HUB if name == INDEX_SERVER or host in HUB_NAMES else host


class CredentialResolver:
    def __init__(self, registries: Iterable[RegistryConfig] = (), auth: RegistryAuthConfig | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.registries = list(registries)
        self.auth = auth or RegistryAuthConfig()
        self.files = [DockerConfigFile(path, f"registry_auth.docker_config[{index}]")
                      for index, path in enumerate(self.auth.docker_config)]
        self.clock = clock
        self._answers: dict[tuple[str, str], tuple[float, HelperAnswer | None]] = {}  # (helper, server) -> (until, answer)
        self._asking: dict[tuple[str, str], threading.Lock] = {}
        self._listed: dict[str, tuple[float, list[str]]] = {}  # credsStore -> (until, servers it lists)
        self._lock = threading.Lock()

    # -- one registry -----------------------------------------------------------------------------
    def configured(self, host: str) -> RegistryConfig | None:
        """The `registries:` entry for `host` (Docker Hub under any of its names)."""
        names = HUB_NAMES | {HUB} if host in HUB_NAMES else {host}
        return next((r for r in self.registries if r.host in names), None)

    def lookup(self, host: str) -> Credentials | None:
        """The login for `host` from the first source that has one (module doc), or None.
        Raises CredentialsUnavailable when a source that should answer cannot."""
        for _, fetch in self._sources(host):
            found = fetch()
            if found is not None:
                remember_secret(found.secret)
                remember_secret(found.basic())
                return found
        return None

    def source(self, host: str) -> str:
        """Where `host`'s login comes from, without asking any helper (for `runner doctor`)."""
        try:
            return next((source for source, _ in self._sources(host)), "none (anonymous)")
        except CredentialsUnavailable as exc:
            return exc.message

    def _sources(self, host: str) -> Iterator[tuple[str, Callable[[], Credentials | None]]]:
        """(source, fetch) of each source that may answer for `host`, in the order they win."""
        config = self.configured(host)
        if config is not None and config.credential_helper:
            source = f"credential helper {config.credential_helper}"
            yield source, partial(self._ask, config.credential_helper, host, source)
        elif config is not None and config.username and (config.password is not None or config.password_file is not None):
            source = "password_file" if config.password_file else "password"
            yield source, partial(self._explicit, config, source)
        for file in self.files:
            docker_config = self._read(file, host)
            if helper := docker_config.helper_for(host):
                kind = "credHelpers" if docker_config.cred_helpers.get(auth_key(host)) else "credsStore"
                source = f"{file.where} ({kind}: {helper})"
                yield source, partial(self._ask, helper, host, source)
            elif (entry := docker_config.entry_for(host)) is not None and not entry.empty:
                found = Credentials(entry.username, entry.identity_token or entry.password, f"{file.where} (auths)",
                                    identity_token=bool(entry.identity_token))
                yield found.source, partial(_given, found)

    @staticmethod
    def _explicit(config: RegistryConfig, source: str) -> Credentials | None:
        try:
            explicit = config.credentials()
        except ValueError as exc:  # an unreadable password_file: says which, never the path
            raise CredentialsUnavailable(str(exc)) from None
        return Credentials(*explicit, source=source) if explicit is not None else None

    def forget(self, host: str) -> bool:
        """Drop the helper answers kept for `host` (the registry refused one): the next lookup
        asks again. True when there was one to drop."""
        server = auth_key(host)
        with self._lock:
            stale = [key for key in self._answers if key[1] == server]
            for key in stale:
                del self._answers[key]
        return bool(stale)

    def forget_all(self) -> None:
        """Drop every kept helper answer (a job failed on refused credentials somewhere)."""
        with self._lock:
            self._answers.clear()
            self._listed.clear()

    # -- every registry ---------------------------------------------------------------------------
    def everything(self, warn: Callable[[str], None]) -> dict[str, Credentials]:
        """A login for every registry a build may pull from or push to: each under
        `registries:`, and each a docker config file names (its auths and credHelpers, and what
        its credsStore lists), as the Docker CLI's GetAllCredentials gathers them. A registry
        whose source fails is left out, with a `warn` line (a job pushing there has already
        failed on it: see `lookup`)."""
        hosts = [canonical_host(r.host) for r in self.registries]
        for file in self.files:
            try:
                docker_config = file.read()
            except DockerConfigError as exc:
                warn(str(exc))
                continue
            hosts += [canonical_host(key) for key in [*docker_config.auths, *docker_config.cred_helpers]]
            if docker_config.creds_store:
                try:
                    hosts += [canonical_host(server) for server in self._list(docker_config.creds_store)]
                except HelperFailed as exc:
                    warn(exc.message)
        found: dict[str, Credentials] = {}
        for host in dict.fromkeys(hosts):
            try:
                credentials = self.lookup(host)
            except InfrastructureError as exc:
                warn(f"{exc.message}; pulling from or pushing to {host} will fail")
                continue
            if credentials is not None:
                found[host] = credentials
        return found

    # -- helpers and files ------------------------------------------------------------------------
    @staticmethod
    def _read(file: DockerConfigFile, host: str) -> DockerConfig:
        try:
            return file.read()
        except DockerConfigError as exc:
            raise CredentialsUnavailable(f"registry {host}: {exc}") from None

    def _ask(self, helper: str, host: str, source: str) -> Credentials | None:
        """The helper's answer for `host`, kept for cache_seconds; one call at a time per helper and server."""
        key = (helper, auth_key(host))
        with self._lock:
            asking = self._asking.setdefault(key, threading.Lock())
        with asking:
            with self._lock:
                kept = self._answers.get(key)
            if kept is not None and kept[0] > self.clock():
                answer = kept[1]
            else:
                answer = credential_helper.get(helper, key[1], self.auth.helper_timeout, registry=host)
                if self.auth.cache_seconds > 0:
                    with self._lock:
                        self._answers[key] = (self.clock() + self.auth.cache_seconds, answer)
        if answer is None:
            return None
        return Credentials(answer.username, answer.secret, source, identity_token=answer.identity_token)

    def _list(self, helper: str) -> list[str]:
        with self._lock:
            kept = self._listed.get(helper)
        if kept is not None and kept[0] > self.clock():
            return kept[1]
        servers = credential_helper.list_servers(helper, self.auth.helper_timeout)
        with self._lock:
            self._listed[helper] = (self.clock() + self.auth.cache_seconds, servers)
        return servers

"""Talks to registries over the distribution HTTP API: which digest a tag holds, and whether
our credentials work. Used by every executor to confirm a push, and by `runner doctor`."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator

import requests

from runner.core.errors import InfrastructureError, RegistryAuthFailed
from runner.core.jobs import ImageRef
from runner.core.registry import RegistryConfig, is_loopback

MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])
TIMEOUT = 10


class RegistryClient:
    def __init__(self, config: RegistryConfig):
        self.config = config
        plain = config.insecure or is_loopback(config.host)
        self.base = f"{'http' if plain else 'https'}://{config.host}"
        self.session = requests.Session()
        if config.ca_file:
            self.session.verify = str(config.ca_file)
        self._auth_header: str | None = None

    def _credentials(self) -> tuple[str, str] | None:
        secret = self.config.secret()
        if self.config.username and secret is not None:
            return self.config.username, secret
        return None

    def _request(self, method: str, path: str, scope: str | None, **kwargs) -> requests.Response:
        headers = kwargs.pop("headers", {})
        try:
            if self._auth_header:
                headers["Authorization"] = self._auth_header
            response = self.session.request(method, self.base + path, headers=headers, timeout=TIMEOUT, **kwargs)
            if response.status_code == 401:
                self._auth_header = self._authenticate(response.headers.get("WWW-Authenticate", ""), scope)
                headers["Authorization"] = self._auth_header
                response = self.session.request(method, self.base + path, headers=headers, timeout=TIMEOUT, **kwargs)
        except requests.RequestException as exc:
            raise InfrastructureError(f"registry {self.config.host} is unreachable: {type(exc).__name__}") from None
        if response.status_code == 401:
            raise RegistryAuthFailed(f"registry {self.config.host} refused our credentials (401): check username/password in the config")
        if response.status_code == 403:
            raise RegistryAuthFailed(f"registry {self.config.host} denied access (403) to {path}")
        return response

    def _authenticate(self, challenge: str, scope: str | None) -> str:
        creds = self._credentials()
        scheme = challenge.split(" ", 1)[0].lower()
        if scheme == "basic":
            if creds is None:
                raise RegistryAuthFailed(f"registry {self.config.host} needs credentials; none are configured")
            return requests.auth._basic_auth_str(*creds)
        if scheme == "bearer":
            params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
            query = {"service": params.get("service", "")}
            if scope:
                query["scope"] = scope
            try:
                token = self.session.get(params["realm"], params=query, auth=creds, timeout=TIMEOUT)
            except (KeyError, requests.RequestException):
                raise InfrastructureError(f"registry {self.config.host}: token service unreachable") from None
            if token.status_code in (401, 403):
                raise RegistryAuthFailed(f"registry {self.config.host} refused our credentials at its token service")
            body = token.json()
            return "Bearer " + (body.get("token") or body.get("access_token", ""))
        raise RegistryAuthFailed(f"registry {self.config.host} asks for unsupported auth {scheme!r}")

    def ping(self) -> None:
        """Raise unless /v2/ answers 200 with our credentials."""
        response = self._request("GET", "/v2/", None)
        if response.status_code != 200:
            raise InfrastructureError(f"registry {self.config.host} answered {response.status_code} at /v2/")

    def manifest_digest(self, ref: ImageRef) -> str | None:
        """The digest the registry holds for ref's tag, or None if the tag is absent."""
        response = self._request(
            "HEAD", f"/v2/{ref.repository}/manifests/{ref.tag}", f"repository:{ref.repository}:pull",
            headers={"Accept": MANIFEST_TYPES},
        )
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise InfrastructureError(f"registry {self.config.host} answered {response.status_code} for {ref}")
        return response.headers.get("Docker-Content-Digest")


class Registries:
    """The registries jobs may push to, and one client per registry for this process, so its
    connection and auth header are reused from job to job (a fresh client pays a 401 round
    trip on every request). Made once per worker and shared by its executors."""

    def __init__(self, configs: Iterable[RegistryConfig] = ()):
        self.configs = list(configs)
        self._clients: dict[str, RegistryClient] = {}
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[RegistryConfig]:
        return iter(self.configs)

    def configured(self, host: str) -> RegistryConfig | None:
        return next((r for r in self.configs if r.host == host), None)

    def config(self, host: str) -> RegistryConfig:
        """The configured registry, or an anonymous one for a host not configured."""
        return self.configured(host) or RegistryConfig(host=host)

    def client(self, host: str) -> RegistryClient:
        with self._lock:
            if host not in self._clients:
                self._clients[host] = RegistryClient(self.config(host))
            return self._clients[host]

    def confirm_digest(self, ref: ImageRef, digest: str) -> None:
        """Raise unless the registry holds exactly `digest` under ref's tag."""
        held = self.client(ref.registry).manifest_digest(ref)
        if held is None:
            raise InfrastructureError(f"push of {ref} reported success but the registry has no such tag")
        if held != digest:
            raise InfrastructureError(f"push of {ref} reported {digest} but the registry holds {held}")

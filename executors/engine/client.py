"""The one adapter over docker-py. Public calls go through `EngineClient.api` (a
docker.APIClient); every call that needs docker-py's private parts — raw endpoints, the
socket under the HTTP client, its auth configs — lives here and nowhere else."""

from __future__ import annotations

import socket
import ssl
from urllib.parse import urlparse

import docker
import docker.auth
import docker.errors
import requests

from runner.core.errors import InfrastructureError

DIAL_TIMEOUT = 10.0
CANCEL_TIMEOUT = 5


class OnlyThese(docker.auth.AuthConfig):
    """docker-py's auth configs that never count as empty: an empty one makes docker-py load
    the worker user's own ~/.docker/config.json (and run its helpers) before a build or push."""

    @property
    def is_empty(self) -> bool:
        return False


class TransportUnsupported(Exception):
    """The engine is reached through a transport we cannot open a raw connection on (ssh, npipe)."""


def short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 300 else text[:300] + "…"


class EngineClient:
    """A connection to one Docker Engine."""

    def __init__(self, api: docker.APIClient):
        self.api = api

    @classmethod
    def connect(cls, base_url: str, timeout: int | None = 60, version: str | None = None, **kwargs) -> EngineClient:
        """A client; without `version`, the engine is asked for its API version (a round trip)."""
        try:
            return cls(docker.APIClient(base_url=base_url, version=version or "auto", timeout=timeout, **kwargs))
        except docker.errors.DockerException as exc:
            raise InfrastructureError(f"Docker Engine at {base_url} is unreachable: {short(exc)}") from None

    @property
    def api_version(self) -> str:
        return self.api.api_version

    @classmethod
    def at(cls, base_url: str, version: str, timeout: int | None, tls=None) -> EngineClient:
        """A client at a known API version (no round trip to make it), ignoring the proxy and CA
        variables of the environment: a sidecar's engine is local, with its own CA."""
        api = docker.APIClient(base_url=base_url, version=version, timeout=timeout, tls=tls or False)
        api.trust_env = False  # requests would let REQUESTS_CA_BUNDLE replace the sidecar's own CA
        return cls(api)

    def close(self) -> None:
        self.api.close()

    @property
    def key(self) -> str:
        """Which engine this is: unix-socket clients all have base_url http+docker://localhost."""
        return getattr(getattr(self.api, "_custom_adapter", None), "socket_path", None) or self.api.base_url

    # -- raw endpoints ------------------------------------------------------------------------------
    def ping(self, timeout: float = 10) -> requests.Response:
        """GET /_ping (unversioned); its headers carry Api-Version and Ostype."""
        return self.api._get(self.api._url("/_ping", versioned_api=False), timeout=timeout)

    def version_and_os(self) -> tuple[str, str]:
        response = self.ping()
        version, os_type = response.headers.get("Api-Version"), response.headers.get("Ostype")
        if not version or not os_type:
            info = self.api.version(api_version=False)
            version, os_type = info.get("ApiVersion", "0"), info.get("Os", "")
        return version, os_type

    def post_build(self, params: dict[str, str], body) -> requests.Response:
        """POST /build with the context as the body; the response streams JSON lines.
        Raises docker's APIError on 4xx/5xx."""
        response = self.api._post(self.api._url("/build"), params=params, data=body,
                                  headers={"Content-Type": "application/x-tar"}, stream=True, timeout=None)
        self.api._raise_for_status(response)
        return response

    def cancel_build(self, build_id: str) -> None:
        try:
            self.api._post(self.api._url("/build/cancel"), params={"id": build_id}, timeout=CANCEL_TIMEOUT).close()
        except Exception:  # noqa: BLE001 - the engine may be gone already; the stream tells the outcome
            pass

    def session_path(self) -> str:
        return urlparse(self.api._url("/session")).path

    def use_auth(self, auth: dict[str, dict[str, str]]) -> None:
        """Credentials builds send the engine for pulling FROM images: exactly these, never
        whatever the worker's own ~/.docker/config.json holds."""
        configs = OnlyThese({})
        for host, entry in auth.items():
            configs.add_auth(host, entry)
        self.api._auth_configs = configs

    def dial(self) -> socket.socket:
        """A fresh raw connection to this engine (for the BuildKit session's h2c upgrade)."""
        api = self.api
        socket_path = getattr(getattr(api, "_custom_adapter", None), "socket_path", None)
        if api.base_url.startswith("http+docker://localhost") and socket_path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(DIAL_TIMEOUT)
            sock.connect(socket_path)
            return sock
        url = urlparse(api.base_url)
        if url.scheme not in ("http", "https"):
            raise TransportUnsupported(f"cannot open a raw connection over {url.scheme}://")
        secure = url.scheme == "https"
        sock = socket.create_connection((url.hostname, url.port or (443 if secure else 80)), timeout=DIAL_TIMEOUT)
        if not secure:
            return sock
        verify = getattr(api, "verify", True)
        context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
        if verify is False:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        cert = getattr(api, "cert", None)
        if cert:
            context.load_cert_chain(*cert) if isinstance(cert, tuple) else context.load_cert_chain(cert)
        return context.wrap_socket(sock, server_hostname=url.hostname)

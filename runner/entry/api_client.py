"""The CLI's client for the HTTP API (`runner --api URL ...`), for CI hosts that cannot reach Redis.

It offers the read methods the CLI uses on a JobStore (`view`, `views`, `read_log`) plus
`cancel` and `submit_directory`, so a command can take either. Token: env RUNNER_API_TOKEN,
else `api.token` in the config; URL: --api, env RUNNER_API_URL, else `api.url`.

Standard library only (http.client, json, tarfile through runner.context.pack): the server
checks what it is sent, so the client needs neither the models nor requests, and starts fast.
One connection, kept alive, carries every request of a command.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from runner.core.jobview import JobView
from runner.core.status import Status, new_job_id

TYPE_CHECKING = False  # not typing's: the light path leaves typing out (see runner.entry.cli)
if TYPE_CHECKING:
    from typing import Any, NoReturn

    from runner.config.client_plain import PlainClientSettings

EXIT_INVALID, EXIT_INFRA = 2, 3


class ApiFailure(Exception):
    def __init__(self, message: str, exit_code: int, status: int | None = None):
        super().__init__(message)
        self.message, self.exit_code, self.status = message, exit_code, status


def _raise(message: str, exit_code: int) -> NoReturn:
    raise ApiFailure(message, exit_code)


def _address_problem(parts: Any) -> str | None:
    """Why the URL's host or port cannot be connected to (else None): found here, not as a
    traceback from the socket module when the first request connects."""
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as exc:
        return f"has an invalid port: {exc}"
    host = parts.hostname
    if ":" not in host and not _valid_name(host):  # an IPv6 literal has no labels
        return f"has an invalid host name {host!r} (an empty label, or one longer than 63 characters)"
    return None


def _valid_name(host: str) -> bool:
    """What the idna codec checks (no empty label, none over 63 characters; one trailing dot
    allowed), without loading it for an ASCII name (~1 ms of every command)."""
    if not host.isascii():
        try:
            host.encode("idna")
        except UnicodeError:
            return False
        return True
    labels = host.removesuffix(".").split(".")
    return all(0 < len(label) < 64 for label in labels)


def _create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
    """socket.create_connection with an ASCII host given as bytes: getaddrinfo encodes a str
    host with the idna codec, which costs its import on every command."""
    host, port = address
    name = host.encode("ascii") if host.isascii() else host
    return socket.create_connection((name, port), *args, **kwargs)  # type: ignore[arg-type]  # bytes: as getaddrinfo takes


class ApiClient:
    def __init__(self, url: str, token: str | None, fail: Callable[[str, int], NoReturn] = _raise, timeout: float = 60):
        self.base, self.fail, self.timeout = url.rstrip("/"), fail, timeout
        parts = urlsplit(self.base)
        self.scheme, self.netloc, self.prefix = parts.scheme, parts.netloc.rpartition("@")[2], parts.path.rstrip("/")
        #: the URL as messages show it: without a user or password it may hold
        self.shown = parts._replace(netloc=self.netloc).geturl()
        if parts.scheme not in ("http", "https") or not parts.hostname:
            fail(f"the runner API URL {self.shown!r} is not an http:// or https:// URL", EXIT_INVALID)
        if problem := _address_problem(parts):
            fail(f"the runner API URL {self.shown!r} {problem}", EXIT_INVALID)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._connection: http.client.HTTPConnection | None = None

    def _connect(self, timeout: float | None) -> http.client.HTTPConnection:
        if self._connection is None:
            if self.scheme == "https":
                self._connection = http.client.HTTPSConnection(self.netloc, timeout=timeout)
            else:
                self._connection = http.client.HTTPConnection(self.netloc, timeout=timeout)
            self._connection._create_connection = _create_connection  # type: ignore[attr-defined]
        self._connection.timeout = timeout
        if self._connection.sock is not None:
            self._connection.sock.settimeout(timeout)
        return self._connection

    def request(self, method: str, path: str, *, allow: tuple[int, ...] = (), params: dict[str, Any] | None = None,
                body: Any = None, headers: dict[str, str] | None = None,
                timeout: float | None | str = "default") -> http.client.HTTPResponse:
        """Send a request; the response when its status is below 400 or in `allow`, else
        `fail` with the server's message (exit 3 for 5xx and an unreachable API, else 2).
        The caller reads the response to its end before the next request."""
        target = self.prefix + path + (f"?{urlencode(params)}" if params else "")
        wait = self.timeout if timeout == "default" else timeout
        for attempt in (1, 2):  # a kept-alive connection the server closed meanwhile: once more on a new one
            connection = self._connect(wait)  # type: ignore[arg-type]
            try:
                connection.request(method, target, body=body, headers={**self.headers, **(headers or {})})
                response = connection.getresponse()
                break
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                self._connection = None
                retry = attempt == 1 and isinstance(exc, http.client.RemoteDisconnected | BrokenPipeError |
                                                    ConnectionResetError) and not hasattr(body, "read")
                if not retry:
                    self.fail(f"the runner API at {self.shown} is unreachable: {type(exc).__name__}", EXIT_INFRA)
        if response.status < 400 or response.status in allow:
            return response
        text = response.read().decode("utf-8", "replace")
        try:
            data = json.loads(text)
            message = data.get("message") or str(data)
            if data.get("field"):
                message = f"{data['field']}: {message}"
        except (ValueError, AttributeError):
            message = text[:500] or response.reason
        code = EXIT_INFRA if response.status >= 500 else EXIT_INVALID
        self.fail(f"{method} {path}: HTTP {response.status}: {message}", code)

    def _json(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        response = self.request(method, path, **kwargs)
        data = response.read()
        return response.status, (json.loads(data) if data else None)

    # -- the JobStore-like read methods the CLI uses ----------------------------------------------
    def view(self, job_id: str) -> JobView | None:
        status, data = self._json("GET", f"/v1/jobs/{job_id}", allow=(404,))
        return None if status == 404 else JobView(data)

    def views(self, status: Status | None = None, limit: int = 50) -> list[JobView]:
        params: dict[str, Any] = {"limit": limit}
        if status is not None:
            params["status"] = status.value
        return [JobView(r) for r in self._json("GET", "/v1/jobs", params=params)[1]]

    def read_log(self, job_id: str, follow: bool = False) -> Iterator[str]:
        """The log, line by line; with follow, one streaming request until the job ends."""
        lines = self.log_of(job_id, follow)
        if lines is None:
            self.fail(f"no job {job_id!r}", EXIT_INVALID)
        return lines

    def log_of(self, job_id: str, follow: bool = False) -> Iterator[str] | None:
        """read_log, or None when there is no such job: one request, where asking for the job
        first would be two."""
        response = self.request("GET", f"/v1/jobs/{job_id}/logs", params={"follow": str(follow).lower()},
                                timeout=None if follow else self.timeout, allow=(404,))
        if response.status == 404:
            response.read()
            return None
        return self._lines(response)

    @staticmethod
    def _lines(response: http.client.HTTPResponse) -> Iterator[str]:
        try:
            for raw in response:
                yield raw.decode("utf-8", "replace").rstrip("\r\n")
        except http.client.HTTPException as exc:  # the stream broke off: as an OSError, like requests'
            raise ConnectionError(str(exc)) from None
        finally:
            response.close()

    def cancel(self, job_id: str) -> JobView | None:
        status, data = self._json("POST", f"/v1/jobs/{job_id}/cancel", allow=(404,))
        return None if status == 404 else JobView(data)

    # -- submit -------------------------------------------------------------------------------------
    def submit(self, payload: dict[str, Any]) -> tuple[str, bool]:
        body = self._json("POST", "/v1/jobs", body=json.dumps(payload), headers={"Content-Type": "application/json"})[1]
        return body["id"], body["created"]

    def submit_directory(self, directory: Path, payload: dict[str, Any], limits: Any = None) -> tuple[str, bool]:
        """Pack `directory` (honouring .dockerignore, its file held to `limits` — the config's
        `limits:`, the defaults when None — so a hostile one is refused before anything is packed;
        the server holds the context to its own), upload it, then queue the job."""
        from runner.context.pack import write_tar
        from runner.core.errors import InvalidJob

        payload = {**payload, "id": payload.get("id") or new_job_id()}
        import tempfile

        with tempfile.TemporaryFile() as spool:
            try:
                write_tar(directory, spool, payload.get("dockerfile") or "Dockerfile", limits)
            except InvalidJob as exc:
                self.fail(exc.message, EXIT_INVALID)
            except OSError as exc:
                self.fail(f"cannot read the build context: {exc}", EXIT_INVALID)
            size = spool.tell()
            spool.seek(0)
            self.request("POST", f"/v1/jobs/{payload['id']}/context", body=spool, timeout=None,
                         headers={"Content-Type": "application/x-tar", "Content-Length": str(size)}).read()
        return self.submit(payload)


def client_for(api: str | None, settings: PlainClientSettings, fail: Callable[[str, int], NoReturn] = _raise) -> ApiClient | None:
    """An API client when --api (or env RUNNER_API_URL, or api.url) is set, else None (use Redis)."""
    url = api or settings.api.url
    if not url:
        return None
    token = os.environ.get("RUNNER_API_TOKEN") or settings.api.token
    return ApiClient(url, token, fail)

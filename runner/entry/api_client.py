"""The CLI's client for the HTTP API (`runner --api URL ...`), for CI hosts that cannot reach Redis.

It offers the read methods the CLI uses on a JobStore (`get`, `list`, `read_log`) plus
`cancel` and `submit_directory`, so a command can take either. Token: env RUNNER_API_TOKEN,
else `api.token` in the config; URL: --api, env RUNNER_API_URL, else `api.url`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import requests

from runner.config.client import ClientSettings
from runner.core.jobs import JobRecord, Status, new_job_id

if TYPE_CHECKING:
    from runner.config.settings import LimitsConfig

EXIT_INVALID, EXIT_INFRA = 2, 3


class ApiFailure(Exception):
    def __init__(self, message: str, exit_code: int, status: int | None = None):
        super().__init__(message)
        self.message, self.exit_code, self.status = message, exit_code, status


def _raise(message: str, exit_code: int) -> NoReturn:
    raise ApiFailure(message, exit_code)


class ApiClient:
    def __init__(self, url: str, token: str | None, fail: Callable[[str, int], NoReturn] = _raise, timeout: float = 60):
        self.base, self.fail, self.timeout = url.rstrip("/"), fail, timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, path: str, *, allow: tuple[int, ...] = (), **kwargs: Any) -> requests.Response:
        try:
            response = self.session.request(method, self.base + path, timeout=kwargs.pop("timeout", self.timeout), **kwargs)
        except requests.RequestException as exc:
            self.fail(f"the runner API at {self.base} is unreachable: {type(exc).__name__}", EXIT_INFRA)
        if response.status_code < 400 or response.status_code in allow:
            return response
        try:
            body = response.json()
            message = body.get("message") or str(body)
            if body.get("field"):
                message = f"{body['field']}: {message}"
        except ValueError:
            message = response.text[:500] or response.reason
        code = EXIT_INFRA if response.status_code >= 500 else EXIT_INVALID
        self.fail(f"{method} {path}: HTTP {response.status_code}: {message}", code)

    # -- the JobStore-like read methods the CLI uses ----------------------------------------------
    def get(self, job_id: str) -> JobRecord | None:
        response = self.request("GET", f"/v1/jobs/{job_id}", allow=(404,))
        return None if response.status_code == 404 else JobRecord.model_validate(response.json())

    def list(self, status: Status | None = None, limit: int = 50) -> list[JobRecord]:
        params: dict[str, Any] = {"limit": limit}
        if status is not None:
            params["status"] = status.value
        return [JobRecord.model_validate(r) for r in self.request("GET", "/v1/jobs", params=params).json()]

    def read_log(self, job_id: str, follow: bool = False) -> Iterator[str]:
        with self.request("GET", f"/v1/jobs/{job_id}/logs", params={"follow": str(follow).lower()},
                          stream=True, timeout=None if follow else self.timeout) as response:
            yield from response.iter_lines(decode_unicode=True)

    def cancel(self, job_id: str) -> JobRecord | None:
        response = self.request("POST", f"/v1/jobs/{job_id}/cancel", allow=(404,))
        return None if response.status_code == 404 else JobRecord.model_validate(response.json())

    # -- submit -------------------------------------------------------------------------------------
    def submit(self, payload: dict[str, Any]) -> tuple[str, bool]:
        body = self.request("POST", "/v1/jobs", json=payload).json()
        return body["id"], body["created"]

    def submit_directory(self, directory: Path, payload: dict[str, Any], limits: LimitsConfig | None = None) -> tuple[str, bool]:
        """Pack `directory` (honouring .dockerignore, held to `limits`), upload it, then queue the job."""
        from runner.context.pack import write_tar
        from runner.core.errors import InvalidJob

        payload = {**payload, "id": payload.get("id") or new_job_id()}
        with tempfile.TemporaryFile() as spool:
            try:
                write_tar(directory, spool, payload.get("dockerfile") or "Dockerfile", limits)
            except InvalidJob as exc:
                self.fail(exc.message, EXIT_INVALID)
            except OSError as exc:
                self.fail(f"cannot read the build context: {exc}", EXIT_INVALID)
            spool.seek(0)
            self.request("POST", f"/v1/jobs/{payload['id']}/context", data=spool,
                         headers={"Content-Type": "application/x-tar"}, timeout=None)
        return self.submit(payload)


def client_for(api: str | None, settings: ClientSettings, fail: Callable[[str, int], NoReturn] = _raise) -> ApiClient | None:
    """An API client when --api (or env RUNNER_API_URL, or api.url) is set, else None (use Redis)."""
    url = api or settings.api.url
    if not url:
        return None
    token = os.environ.get("RUNNER_API_TOKEN") or (settings.api.token.get_secret_value() if settings.api.token else None)
    return ApiClient(url, token, fail)

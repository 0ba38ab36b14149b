"""What the API's routes and the dashboard's share: the error they raise, its JSON shape
({"error", "message"[, "field"]}), and the job id path parameter."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path
from fastapi.responses import JSONResponse

from runner.core.request_rules import JOB_ID, MAX_JOB_ID

JobId = Annotated[str, Path(pattern=JOB_ID.pattern, max_length=MAX_JOB_ID, description="job id")]


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.error, self.message, self.field, self.headers = status, error, message, field, headers


def error_response(status: int, error: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": error, "message": message}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status, headers=headers)

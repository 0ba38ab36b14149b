"""The job endpoints: submit (the same job schema as the queue message and `runner submit`),
list, read and cancel."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from runner.config.sections import ApiToken
from runner.core.jobs import JobRecord, Status
from runner.entry.control import cancel_job
from runner.entry.deps import Api, ApiContext, Require, Submitter, read_body
from runner.entry.errors import ApiError, JobId
from runner.entry.routes.uploads import uploader
from runner.entry.submission import submit
from runner.worker.admission import Origin, Rejected, admit, parse_request

router = APIRouter(tags=["jobs"])


@router.post("/v1/jobs", status_code=202,
             responses={200: {"description": "a job with this id already exists; nothing queued"},
                        413: {"description": "body over api.max_body_bytes"},
                        422: {"description": "invalid job; `field` names what was wrong"}},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": {"$ref": "#/components/schemas/BuildRequest"}}}}})
async def post_job(request: Request, api: Api, token: Submitter) -> JSONResponse:
    """Queue a build. The same job schema as the queue message and `runner submit`."""
    body = await read_body(request, api.settings.api.max_body_bytes, "job")
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ApiError(422, "invalid", f"the body is not valid JSON: {exc}", "body") from None
    except RecursionError:
        raise ApiError(422, "invalid", "the body nests arrays or objects too deeply to read", "body") from None
    record, created = await run_in_threadpool(submit_job, api, data, token)
    headers = {"Location": f"/v1/jobs/{record.id}"}
    return JSONResponse({"id": record.id, "status": record.status.value, "created": created, "queue": record.queue},
                        status_code=202 if created else 200, headers=headers)


def submit_job(api: ApiContext, data: Any, token: ApiToken) -> tuple[JobRecord, bool]:
    """Admit and hand on a job; an upload context must be this token's and uploaded already."""
    store, owner, origin = api.store, uploader(token), Origin.api(token)
    try:
        job = parse_request(data)
        existing = store.get(job.id)
        if existing is not None:
            return existing, False
        admitted = admit(job, api.settings, origin)
        if job.context.type == "upload":
            holder = store.reservation(job.id)
            if holder not in (None, owner):
                raise ApiError(409, "exists", f"the context of job {job.id} was uploaded by another token; "
                               "choose another id")
            if not store.has_context(job.id):
                raise Rejected("context", f"no build context was uploaded for job {job.id}: POST the tar to "
                               f"/v1/jobs/{job.id}/context first, or give a git context")
        submitted = submit(job, api.settings, store, origin, admitted, submitted_by=f"token:{token.name}")
        store.untrack_upload(owner, job.id)
        return submitted
    except Rejected as exc:
        raise ApiError(422, "invalid", exc.message, exc.field) from None


@router.get("/v1/jobs", dependencies=[Depends(Require("read"))])
def list_jobs(api: Api, status: Status | None = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[JobRecord]:
    """Recent jobs, newest first."""
    return api.store.list(status, limit)


@router.get("/v1/jobs/{job_id}", dependencies=[Depends(Require("read"))],
            responses={404: {"description": "no such job"}})
def get_job(job_id: JobId, api: Api) -> JobRecord:
    record = api.store.get(job_id)
    if record is None:
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    return record


@router.post("/v1/jobs/{job_id}/cancel", status_code=202, dependencies=[Depends(Require("cancel"))],
             responses={404: {"description": "no such job"}})
def cancel(job_id: JobId, api: Api) -> JobRecord:
    """A queued job never starts; a running one is stopped by its worker within a second."""
    record = cancel_job(api.store, job_id)
    if record is None:
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    return record

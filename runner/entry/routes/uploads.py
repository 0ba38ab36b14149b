"""A job's build context, uploaded before the job is submitted (runner.entry.submission.ContextUpload)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from runner.config.sections import ApiToken
from runner.entry.deps import Api, Submitter
from runner.entry.errors import ApiError, JobId
from runner.entry.submission import ContextUpload, UploadRefused
from runner.store.jobstore import CHUNK_BYTES, ContextTooLarge

TAR_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ")  # gzip, bzip2, xz; plain tar is checked at offset 257

router = APIRouter(tags=["jobs"])


def uploader(token: ApiToken) -> str:
    """Who holds the uploads of a token (the id's reservation, the pending-uploads quota)."""
    return f"token:{token.name}"


@router.post("/v1/jobs/{job_id}/context", status_code=201,
             responses={409: {"description": "the job exists, or another token is uploading its context"},
                        413: {"description": "over limits.max_context_bytes"},
                        429: {"description": "over api.max_pending_uploads_per_token"}},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/x-tar": {"schema": {"type": "string", "format": "binary"}}}}})
async def upload_context(job_id: JobId, request: Request, api: Api, token: Submitter) -> dict[str, Any]:
    """Upload the build context (a tar, optionally gzip/bzip2/xz) for a job not yet submitted.

    The id is reserved for this token from the first byte, so no other client can replace
    the context; an upload not submitted within retention.upload_seconds expires."""
    settings = api.settings
    limit = settings.limits.max_context_bytes
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise ApiError(413, "too_large", f"the context is {int(length):,} bytes, over the limit of {limit:,} "
                       "bytes (limits.max_context_bytes); add a .dockerignore")
    quota = settings.api.max_pending_uploads_per_token
    try:
        upload = await run_in_threadpool(ContextUpload.begin, api.store, job_id, uploader(token), limit, quota)
    except UploadRefused as exc:
        if exc.reason == "exists":
            raise ApiError(409, "exists", f"job {job_id} already exists; upload the context before submitting the job") from None
        if exc.reason == "busy":
            raise ApiError(409, "exists", f"another client is uploading the context of job {job_id}; choose another id") from None
        raise ApiError(429, "too_many_uploads", f"token {token.name!r} already has {quota} uploaded contexts that are not "
                       "submitted (api.max_pending_uploads_per_token); submit them, or wait for them to expire "
                       f"(retention.upload_seconds: {settings.retention.upload_seconds}s)", headers={"Retry-After": "60"}) from None
    head, pending = b"", bytearray()
    try:
        async for chunk in request.stream():
            if len(head) < 512:
                head += chunk[: 512 - len(head)]
            pending += chunk
            if len(pending) >= CHUNK_BYTES:  # Redis writes off the event loop, a chunk at a time
                await run_in_threadpool(upload.write, bytes(pending))
                pending.clear()
        if not (head.startswith(TAR_MAGIC) or head[257:262] == b"ustar"):
            raise ApiError(422, "invalid", "the body is not a tar archive (plain, gzip, bzip2 or xz)", "body")
        await run_in_threadpool(upload.write, bytes(pending))
        await run_in_threadpool(upload.finish)
    except ContextTooLarge as exc:
        await run_in_threadpool(upload.abandon)
        raise ApiError(413, "too_large", str(exc)) from None
    except (ClientDisconnect, ApiError):
        await run_in_threadpool(upload.abandon)
        raise
    return {"id": job_id, "bytes": upload.size}

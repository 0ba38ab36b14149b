"""Git-push webhooks: verified, mapped through webhooks.repositories, queued (runner.entry.webhooks)."""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from runner.entry import webhooks
from runner.entry.deps import Api, read_body
from runner.entry.errors import error_response

log = logging.getLogger(__name__)
router = APIRouter(tags=["webhooks"])


@router.post("/v1/webhooks/{provider}",
             responses={202: {"description": "a job was queued"}, 401: {"description": "bad or missing signature"}},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": {"type": "object"}}}}})
async def webhook(provider: Literal["github", "gitlab", "gitea"], request: Request, api: Api) -> JSONResponse:
    """A push event: verified, mapped through webhooks.repositories, queued; never waits for the build."""
    body = await read_body(request, api.settings.api.max_body_bytes, "webhook body")
    headers = {k.lower(): v for k, v in request.headers.items()}
    try:
        outcome = await run_in_threadpool(lambda: webhooks.handle(provider, headers, body, api.settings, api.store))
    except webhooks.WebhookError as exc:
        if exc.status == 401:
            log.warning("webhook %s refused: %s", provider, exc.message)
        return error_response(exc.status, "unauthorized" if exc.status == 401 else "invalid", exc.message)
    if outcome.body.get("job"):
        log.info("webhook %s: %s job %s", provider, outcome.body["result"], outcome.body["job"])
    return JSONResponse(outcome.body, status_code=outcome.status)

"""What the API's routers (jobs, uploads, logs, webhooks, health and metrics, the dashboard) get
through FastAPI's `Depends`: the app's ApiContext (settings, job store, log hub; one per app,
on `app.state.api`) and the bearer token holding a right, and the request body read under a cap."""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from runner.config.sections import ApiToken, Right
from runner.config.settings import Settings
from runner.entry.errors import ApiError
from runner.store.jobstore import JobStore
from runner.store.logfollow import LogHub

log = logging.getLogger(__name__)
BEARER = HTTPBearer(auto_error=False, description="a token from api.tokens")


@dataclass
class ApiContext:
    """What every route of one app shares; `create_app` puts it on `app.state.api`."""

    settings: Settings
    store: JobStore
    logs: LogHub


async def api_context(request: Request) -> ApiContext:
    return request.app.state.api


#: a route's parameter `api: Api` is its app's ApiContext
Api = Annotated[ApiContext, Depends(api_context)]


def authenticate(token: str, tokens: list[ApiToken]) -> ApiToken | None:
    """The configured token equal to `token`; every candidate is compared, in constant time."""
    given = hashlib.sha256(token.encode("utf-8", "replace")).digest()
    found = None
    for candidate in tokens:
        try:
            value = candidate.secret_value(f"api.tokens[{candidate.name}]")
        except ValueError as exc:
            log.warning("%s", exc)
            continue
        if value and hmac.compare_digest(given, hashlib.sha256(value.encode()).digest()):
            found = candidate
    return found


class Require:
    """`Depends(Require(right))`: the request's bearer token from api.tokens, holding `right`
    (401 without one, 403 when it lacks the right)."""

    def __init__(self, right: Right):
        self.right = right

    async def __call__(self, api: Api,
                       credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> ApiToken:
        challenge = {"WWW-Authenticate": "Bearer"}
        if credentials is None:
            raise ApiError(401, "unauthorized", "send Authorization: Bearer TOKEN (a token from api.tokens)",
                           headers=challenge)
        tokens = api.settings.api.tokens
        token = authenticate(credentials.credentials, tokens)
        if token is None:
            why = "the bearer token is not one of api.tokens" if tokens else \
                "no API tokens are configured (api.tokens), so every job endpoint refuses"
            raise ApiError(401, "unauthorized", why, headers=challenge)
        if self.right not in token.rights:
            raise ApiError(403, "forbidden", f"token {token.name!r} lacks the {self.right!r} right "
                           f"(it has: {', '.join(token.rights) or 'none'})")
        return token


#: a route's parameter `token: Reader` (or Submitter) is a token holding that right; a route that
#: needs the right but not the token says `dependencies=[Depends(Require(right))]`
Submitter = Annotated[ApiToken, Depends(Require("submit"))]
Reader = Annotated[ApiToken, Depends(Require("read"))]


async def read_body(request: Request, limit: int, what: str) -> bytes:
    """The whole body, refused (413) as soon as it is over `limit` bytes: by its Content-Length,
    else while it streams."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise ApiError(413, "too_large", f"the {what} is {int(length):,} bytes, over the limit of {limit:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"the {what} is over the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)

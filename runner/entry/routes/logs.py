"""A job's log: read from the start, or followed until the job ends or the client leaves.
Followers hold no threads: runner.store.logfollow reads on asyncio with one shared tailer per
followed job; a token may hold api.max_followers_per_token streams at once (429 past it). Many
followers arriving together start a few at a time (runner.entry.start_gate)."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable

import anyio
import redis
from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from runner.entry.deps import Api, Reader
from runner.entry.errors import ApiError, JobId
from runner.store.logfollow import LogUnavailable, TooManyFollowers

log = logging.getLogger(__name__)
router = APIRouter(tags=["jobs"])


class LogResponse(StreamingResponse):
    """A log stream that ends when the log ends or the client goes, whichever comes first.

    It always listens for the disconnect (Starlette does only for ASGI < 2.4; on 2.4 a quiet
    follower would notice only at its next write), then closes the log generator and calls
    `on_close` (the follower's slot), also when the stream never started."""

    def __init__(self, content: AsyncGenerator[bytes, None], job_id: str, on_close: Callable[[], None] | None = None):
        super().__init__(content, media_type="text/plain; charset=utf-8",
                         headers={"X-Accel-Buffering": "no", "Cache-Control": "no-store"})
        self.lines, self.job_id, self.on_close = content, job_id, on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:
                async def stream() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:  # the client went away while we wrote (ASGI 2.4 servers say so this way)
                        pass
                    except (LogUnavailable, redis.RedisError) as exc:  # cut short: no final chunk, so clients see it
                        log.warning("log stream of job %s ended early: %s", self.job_id, type(exc).__name__)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.lines.aclose()
            if self.on_close is not None:
                self.on_close()


@router.get("/v1/jobs/{job_id}/logs", response_class=StreamingResponse,
            responses={200: {"content": {"text/plain": {}}}, 404: {"description": "no such job"},
                       429: {"description": "the token follows api.max_followers_per_token logs already"}})
async def get_logs(job_id: JobId, api: Api, token: Reader, follow: bool = False) -> LogResponse:
    """The job's log from the start, one line per line; with follow=true, streams until the job ends."""
    logs = api.logs
    if not await logs.exists(job_id):
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    if not follow:
        return LogResponse(logs.read(job_id), job_id)
    try:
        slot = logs.admit(token.name, api.settings.api.max_followers_per_token)
    except TooManyFollowers as exc:
        raise ApiError(429, "too_many_followers", str(exc), headers={"Retry-After": "5"}) from None
    return LogResponse(logs.follow(job_id), job_id, on_close=slot.release)


@router.get("/v1/followers")
async def followers(api: Api, token: Reader) -> dict[str, int]:
    """Open follow streams (all, and this token's) and the jobs they follow: for monitoring and tests."""
    return api.logs.stats(token.name)

"""Streams (log followers, the dashboard's event streams) start a few at a time, so a herd of
them never holds the event loop for long: /healthz stays quick while 500 followers connect.

A request's way to its first real wait (FastAPI's and Starlette's middleware, routing, the
token check, dependency injection, the job's record) costs the loop a fraction of a millisecond
and never yields. 500 followers connecting together would all take that way in one turn of the
loop (about 100 ms on 2 cores), and every other request, /healthz too, waits behind the turn. The gate
lets at most `slots` matching requests be on that way at once: a request takes a slot when it
arrives and frees it when its response starts (or it ends), so the others wait on a semaphore,
off the loop's ready queue, and the loop serves other requests between the batches. A pure ASGI
middleware, outside every layer but the request metrics (runner.entry.api.RunnerApi), so a
waiting request has cost next to nothing; it never buffers a response, and requests it does not
match pass untouched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

START_SLOTS = 32  # streams setting up at once: enough to start 500 in a few tenths of a second
STREAM_SUFFIXES = ("/logs", "/events")  # GET /v1/jobs/{id}/logs, /ui/jobs/{id}/log/events, /ui/*/events


def is_stream(scope: Scope) -> bool:
    """A request that opens a log or event stream (the requests that come in herds)."""
    return scope["method"] == "GET" and scope["path"].endswith(STREAM_SUFFIXES)


class StartGate:
    """At most `slots` requests that `matches` are between their arrival and their response's
    start at once; the rest wait their turn, first come first served."""

    def __init__(self, app: ASGIApp, slots: int = START_SLOTS, matches: Callable[[Scope], bool] = is_stream):
        self.app, self.matches, self.size = app, matches, slots
        self._slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        self.starting = 0  # requests holding a slot now

    def semaphore(self) -> asyncio.Semaphore:
        """The running loop's semaphore (an app may serve on several loops in turn, as tests do)."""
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:
            self._slots = (loop, asyncio.Semaphore(self.size))
        return self._slots[1]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.matches(scope):
            await self.app(scope, receive, send)
            return
        slots = self.semaphore()
        await slots.acquire()
        self.starting += 1
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                self.starting -= 1
                slots.release()

        async def send_started(message: Message) -> None:
            if message["type"] == "http.response.start":
                release()
            await send(message)

        try:
            await self.app(scope, receive, send_started)
        finally:
            release()

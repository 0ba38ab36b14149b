"""Server-Sent Events for the dashboard: framing, keep-alives, log batches as events, and a
response that always closes its stream (and frees the caller's slot) when the client goes.

Every event's data is one line of JSON, so log text with any control character (a bare
carriage return from a progress bar included) never breaks the framing. The browser reads
these streams with fetch, not EventSource, so its token travels in the Authorization header
and never in a URL (EventSource cannot send headers)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import Any

import anyio
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from runner.store.logfollow import Batch

KEEP_ALIVE = b": keep-alive\n\n"
KEEP_ALIVE_SECONDS = 15.0
#: a log event carries whole stream entries up to about this many bytes (a browser parses each at once)
EVENT_BYTES = 256 * 1024


def event(name: str, data: Any, event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {name}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


def log_events(batch: Batch) -> Iterator[bytes]:
    """`batch` as `lines` events: the text (without its last newline), how many lines, and
    marks [line, ms] where the time the entries were written changes (an entry id is "ms-seq").
    Each event's id is the last entry it holds, so a reader that reconnects asks for what follows."""
    ids, offsets, text = batch.ids, batch.offsets, batch.text
    start, lines, marks, last_ms = 0, 0, [], -1
    for n, entry_id in enumerate(ids):
        end = offsets[n + 1] if n + 1 < len(ids) else len(text)
        ms = int(entry_id.partition("-")[0])
        if ms != last_ms:
            marks.append([lines, ms])
            last_ms = ms
        lines += text.count(b"\n", offsets[n], end)
        if end - offsets[start] >= EVENT_BYTES or n + 1 == len(ids):
            chunk = text[offsets[start]:end - 1].decode("utf-8", "replace")
            yield event("lines", {"text": chunk, "lines": lines, "marks": marks},
                        batch.last if n + 1 == len(ids) else entry_id)
            start, lines, marks, last_ms = n + 1, 0, [], -1


async def with_keep_alives(source: AsyncGenerator[bytes, None], every: float = KEEP_ALIVE_SECONDS) -> AsyncIterator[bytes]:
    """`source`'s chunks, and a comment line whenever it is quiet for `every` seconds: proxies keep
    the connection, and a client that left is noticed at the next write."""
    pending: asyncio.Future | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            done, _ = await asyncio.wait({pending}, timeout=every)
            if not done:
                yield KEEP_ALIVE
                continue
            finished, pending = pending, None
            try:
                chunk = finished.result()
            except StopAsyncIteration:
                return
            yield chunk
    finally:
        with anyio.CancelScope(shield=True):
            if pending is not None:
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
            await source.aclose()


class EventStream(StreamingResponse):
    """text/event-stream that closes its generator and calls `on_close` however it ends,
    also when the client left before the first byte."""

    def __init__(self, content: AsyncGenerator[bytes, None], on_close: Callable[[], None] | None = None):
        super().__init__(with_keep_alives(content), media_type="text/event-stream",
                         headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        self.source, self.on_close = content, on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
            if self.on_close is not None:
                self.on_close()

"""The dashboard's router, and `install(app, api)`, which mounts its static files and makes
what its streams share (the jobs watch, the fleet reader) for one app (on `app.state.dashboard`).

Pages (`/`, `/jobs/{id}`, `/fleet`) are shells with no data in them: a browser navigating
there cannot send a bearer token, so they ask for one (kept in the tab's sessionStorage) and
fetch everything else from `/ui/...` with `Authorization: Bearer`, the same tokens and rights
as the API: `read` to see anything, `cancel` for the cancel button (and the API's own cancel
endpoint), `submit` for re-run. Rows, the record panel and the fleet are rendered here with
Jinja2 (autoescaped) and sent as HTML fragments, also inside Server-Sent Events.

No route here is in the OpenAPI schema: the JSON API stays what clients program against.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import redis
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from runner.config.sections import ApiToken
from runner.core.jobs import JobRecord, Status
from runner.entry.dashboard import listing, rerun
from runner.entry.dashboard.events import EventStream, event, log_events
from runner.entry.dashboard.fleet import FleetReader
from runner.entry.dashboard.views import render
from runner.entry.dashboard.watch import JobsWatch, Resync
from runner.entry.deps import Api, ApiContext, Reader, Require, Submitter
from runner.entry.errors import ApiError, JobId
from runner.entry.submission import submit
from runner.store.logfollow import LogUnavailable, TooManyFollowers
from runner.worker.admission import Origin, Rejected, parse_request

STATIC = Path(__file__).with_name("static")
FLEET_SECONDS = 2.0
#: no inline script or style anywhere; the page talks only to this server
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                    "X-Frame-Options": "DENY", "Cache-Control": "no-store"}
EntryId = Annotated[str, Query(pattern=r"^\d{1,20}-\d{1,20}$", description="the last log entry already read")]


class Static(StaticFiles):
    async def get_response(self, path: str, scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-cache"  # revalidated (ETag): a new release is picked up at once
        return response


def page(template: str, **values) -> HTMLResponse:
    return HTMLResponse(render(template, **values), headers=SECURITY_HEADERS)


def fragment(html: str, started: float, headers: dict[str, str] | None = None) -> HTMLResponse:
    took = (time.perf_counter() - started) * 1000
    return HTMLResponse(html, headers={"Server-Timing": f"app;dur={took:.2f}", "Cache-Control": "no-store", **(headers or {})})


@dataclass
class Dashboard:
    """What the dashboard's streams of one app share."""

    watch: JobsWatch
    fleet: FleetReader


def install(app: FastAPI, api: ApiContext) -> None:
    app.mount("/ui/static", Static(directory=STATIC), name="dashboard-static")
    app.state.dashboard = Dashboard(JobsWatch(api.store, lambda: api.logs.client),
                                    FleetReader(api.settings, api.store, lambda: api.logs.client))


async def dashboard(request: Request) -> Dashboard:
    return request.app.state.dashboard


#: a route's parameter `shared: Shared` is its app's Dashboard
Shared = Annotated[Dashboard, Depends(dashboard)]
router = APIRouter(include_in_schema=False)


def admit_stream(api: ApiContext, token: ApiToken):
    """A slot for one more open stream of this token (the API's follower limit): 429 past it."""
    try:
        return api.logs.admit(token.name, api.settings.api.max_followers_per_token)
    except TooManyFollowers as exc:
        raise ApiError(429, "too_many_followers", str(exc), headers={"Retry-After": "5"}) from None


def record_panel(record: JobRecord, token: ApiToken) -> str:
    return render("_record.html", r=record, rights=token.rights, rerun_why=rerun.why_not(record))


def row(record: JobRecord) -> str:
    return render("_row.html", r=record)


# -- pages ------------------------------------------------------------------------------------
@router.get("/")
async def jobs_page() -> HTMLResponse:
    return page("jobs.html", script="jobs", statuses=list(Status))


@router.get("/jobs/{job_id}")
async def job_page(job_id: JobId) -> HTMLResponse:
    return page("job.html", script="job", job_id=job_id)


@router.get("/fleet")
async def fleet_page() -> HTMLResponse:
    return page("fleet.html", script="fleet")


# -- data for the pages (bearer token) ----------------------------------------------------
@router.get("/ui/whoami")
async def whoami(api: Api, token: Reader) -> dict:
    return {"name": token.name, "rights": token.rights, "executors": api.settings.enabled_executors()}


@router.get("/ui/jobs/rows", dependencies=[Depends(Require("read"))])
def rows(api: Api, status: Status | None = None, executor: Annotated[str | None, Query(max_length=128)] = None,
         repo: Annotated[str | None, Query(max_length=256)] = None,
         before: Annotated[float | None, Query(ge=0, le=1e11, description="creation time (seconds)")] = None,
         limit: Annotated[int, Query(ge=1, le=listing.MAX_LIMIT)] = 50) -> HTMLResponse:
    """A page of rows (HTML); X-Next-Before is the `before` of the next page (absent at the end)."""
    started = time.perf_counter()
    filters = listing.Filters(status, executor or None, repo or None)
    found = listing.page(api.store, filters, limit, before)
    headers = {"X-Scanned": str(found.scanned)}
    if found.next_before is not None:
        headers["X-Next-Before"] = repr(found.next_before)
    return fragment(render("_rows.html", records=found.records), started, headers)


@router.get("/ui/jobs/events")
async def jobs_events(api: Api, shared: Shared, token: Reader, status: Status | None = None,
                      executor: Annotated[str | None, Query(max_length=128)] = None,
                      repo: Annotated[str | None, Query(max_length=256)] = None) -> EventStream:
    """Rows that changed, as they change: `row` {id, created, match, html}; `resync` after falling behind."""
    filters = listing.Filters(status, executor or None, repo or None)
    slot = admit_stream(api, token)

    async def events():
        async with shared.watch.listen() as rounds:
            yield event("ready", {})
            while True:
                changes = await rounds.get()
                if isinstance(changes, Resync):
                    yield event("resync", {})
                    continue
                for change in changes:
                    record = change.record
                    yield event("row", {"id": record.id, "created": record.created_at.timestamp(),
                                        "match": filters.match(record), "html": change.html(row)})

    return EventStream(events(), on_close=slot.release)


@router.get("/ui/jobs/{job_id}/events")
async def job_events(job_id: JobId, api: Api, shared: Shared, token: Reader) -> EventStream:
    """The record panel now (`record`), then each time it changes, until the job has finished (`done`)."""
    store = api.store
    if await run_in_threadpool(store.get, job_id) is None:
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    slot = admit_stream(api, token)

    async def events():
        async with shared.watch.listen() as rounds:
            record = await run_in_threadpool(store.get, job_id)  # read after listening: no change is missed
            while record is not None:
                yield event("record", {"status": record.status.value, "html": record_panel(record, token)})
                if record.finished:
                    break
                record = None
                while record is None:
                    changes = await rounds.get()
                    if isinstance(changes, Resync):
                        record = await run_in_threadpool(store.get, job_id)
                    else:
                        record = next((c.record for c in reversed(changes) if c.record.id == job_id), None)
            yield event("done", {})

    return EventStream(events(), on_close=slot.release)


@router.get("/ui/jobs/{job_id}/log/events")
async def log_stream(job_id: JobId, api: Api, token: Reader, after: EntryId = "0-0") -> EventStream:
    """The log from the entry after `after`, then live: `lines` {text, lines, marks}; `end` {status} when
    the job has ended; `error` {message} when Redis stopped answering (the page reconnects)."""
    logs = api.logs
    if not await logs.exists(job_id):
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    slot = admit_stream(api, token)

    async def events():
        try:
            async for batch in logs.follow_batches(job_id, after):
                for chunk in log_events(batch):
                    yield chunk
            raw = await logs.client.get(api.store.job_key(job_id))
            status = JobRecord.model_validate_json(raw).status.value if raw else None
            yield event("end", {"status": status})
        except (LogUnavailable, redis.RedisError):
            yield event("error", {"message": "the job store (Redis) is not answering; reconnecting"})

    return EventStream(events(), on_close=slot.release)


@router.post("/ui/jobs/{job_id}/rerun", status_code=202)
def rerun_job(job_id: JobId, api: Api, token: Submitter) -> JSONResponse:
    """The same request under a new id (202 with the id); 409 saying why when the record cannot be repeated."""
    record = api.store.get(job_id)
    if record is None:
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    why = rerun.why_not(record)
    if why is not None:
        raise ApiError(409, "cannot_rerun", f"job {job_id} cannot be re-run: {why}")
    try:
        request = parse_request(json.loads(rerun.rerun_request(record).model_dump_json()))
        # the same rules as POST /v1/jobs
        new, _created = submit(request, api.settings, api.store, Origin.api(token), submitted_by=f"token:{token.name}")
    except Rejected as exc:
        raise ApiError(422, "invalid", f"job {job_id} cannot be re-run as it was: {exc.message}") from None
    return JSONResponse({"id": new.id, "status": new.status.value}, status_code=202,
                        headers={"Location": f"/jobs/{new.id}"})


@router.get("/ui/fleet/events")
async def fleet_events(api: Api, shared: Shared, token: Reader) -> EventStream:
    """The fleet panel (`fleet` {html}) now and whenever it changes (read every FLEET_SECONDS)."""
    slot = admit_stream(api, token)

    async def events():
        shown = None
        while True:
            try:
                html = render("_fleet.html", fleet=await shared.fleet.snapshot())
            except redis.RedisError:
                html = render("_fleet.html", fleet=None)
            if html != shown:
                shown = html
                yield event("fleet", {"html": html})
            await asyncio.sleep(FLEET_SECONDS)

    return EventStream(events(), on_close=slot.release)

"""Commit statuses: what GitHub, GitLab and Gitea/Forgejo are told at each moment of a job,
and the requests that tell them.

| moment            | GitHub, Gitea | GitLab   | description (examples)                       |
|-------------------|---------------|----------|----------------------------------------------|
| queued            | pending       | pending  | queued (buildah)                             |
| started           | pending       | running  | building / building (attempt 2)              |
| requeued          | pending       | pending  | requeued                                     |
| succeeded         | success       | success  | built, pushed and signed 2 tags in 41 s      |
|   (2+ platforms)  |               |          | … in 41 s; index 1a2b3c4d5e6f: linux/amd64   |
|                   |               |          | 3c4d5e6f7a8b, linux/arm64 5e6f7a8b9c0d       |
|                   |               |          | reused the image built by job 1f… for the    |
|                   |               |          | same inputs (signed): 1 tag in 0.1 s         |
| failed            | failure       | failed   | step 4/7 failed: RUN make                    |
| cancelled         | error         | canceled | cancelled                                    |
| timed out         | error         | failed   | timed out after 600 s                        |

Requests: GitHub `POST {api}/repos/{owner}/{repo}/statuses/{sha}` (Bearer token); GitLab
`POST {api}/api/v4/projects/{id}/statuses/{sha}` (PRIVATE-TOKEN; `name`, `ref`); Gitea
`POST {api}/api/v1/repos/{owner}/{repo}/statuses/{sha}` (`Authorization: token`). Each host
also lists a commit's statuses, which tells whether an attempt cut short by a worker's death
reached the host before it died.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from runner.config.sections import StatusTarget
from runner.core.jobs import JobRecord, JobSource, seconds_between
from runner.worker.notify.http import MAX_LISTING, Answer, Outgoing, one_line

STATES: dict[str, dict[str, str]] = {
    "github": {"queued": "pending", "started": "pending", "requeued": "pending", "succeeded": "success",
               "failed": "failure", "cancelled": "error", "timed_out": "error"},
    "gitlab": {"queued": "pending", "started": "running", "requeued": "pending", "succeeded": "success",
               "failed": "failed", "cancelled": "canceled", "timed_out": "failed"},
}
STATES["gitea"] = STATES["github"]
MAX_DESCRIPTION = 140  # GitHub's limit; GitLab and Gitea take more
#: how executors name the failing step: "build failed at step 4/7 (RUN make): ..." (classic,
#: buildah, img) and "build failed at [builder 4/7] RUN make: ..." (BuildKit)
_STEP = re.compile(r"^build failed at step ?(\d+/\d+)? \((.+?)\): ")
_BUILDKIT_STEP = re.compile(r"^build failed at \[(?:[^\]]* )?(\d+/\d+)\] (.+)$")


@dataclass(frozen=True)
class StatusUpdate:
    state: str
    description: str
    context: str
    target_url: str | None


def seconds(value: float) -> str:
    whole = int(round(value))
    if whole < 60:
        return f"{whole} s"
    minutes, rest = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def short_digest(digest: str) -> str:
    """The first 12 hex digits, as docker shows an id: sha256:1a2b3c… -> 1a2b3c4d5e6f."""
    return digest.partition(":")[2][:12] or digest[:12]


def failed_step(message: str) -> str | None:
    """"step 4/7 failed: RUN make" from an executor's build failure, or None if it names no step."""
    if match := _STEP.match(message):
        return f"step {match[1]} failed: {match[2]}" if match[1] else f"step failed: {match[2]}"
    if match := _BUILDKIT_STEP.match(message):
        instruction = match[2]
        cut = instruction.find(': process "')
        instruction = instruction[:cut] if cut >= 0 else instruction.partition(": ")[0]
        return f"step {match[1]} failed: {instruction}"
    return None


def describe(moment: str, record: JobRecord, note: dict[str, Any]) -> str:
    """A short, useful description of the job at `moment` (queued, started, requeued, finished)."""
    if moment == "queued":
        text = f"queued ({record.executor})"
    elif moment == "started":
        attempt = int(note.get("attempt", 1))
        text = "building" if attempt <= 1 else f"building (attempt {attempt})"
    elif moment == "requeued":
        text = "requeued"
    elif record.status.value == "succeeded":
        took = seconds_between(record.started_at, record.finished_at) or 0
        count = len(record.images)
        signed = record.attestation is not None and record.attestation.signed
        tags = f"{count} tag{'s' if count != 1 else ''} in {seconds(took)}"
        if not record.request.push:
            text = f"built in {seconds(took)} (not pushed)"
        elif record.reused_from is not None:
            text = f"reused the image built by job {record.reused_from} for the same inputs{' (signed)' if signed else ''}: {tags}"
        else:
            text = f"built, pushed and signed {tags}" if signed else f"built and pushed {tags}"
        if record.images and record.images[0].platforms:
            index = record.images[0]
            text += f"; index {short_digest(index.digest)}: " + ", ".join(
                f"{p.platform} {short_digest(p.digest)}" for p in index.platforms)
    else:
        message = record.error.message if record.error else record.status.value
        if record.status.value == "failed" and record.error and record.error.kind == "build":
            text = failed_step(message) or message
        elif record.status.value == "timed_out":
            text = re.sub(r"^the job timed out after (\d+)s$", r"timed out after \1 s", message)
        elif record.status.value == "cancelled":
            text = "cancelled" if message == "the job was cancelled" else message
        else:
            text = message
    return one_line(text, MAX_DESCRIPTION)


def host_state(host: str, moment: str, record: JobRecord) -> str:
    return STATES[host][record.status.value if moment == "finished" else moment]


def status_update(moment: str, record: JobRecord, target: StatusTarget, public_url: str | None,
                  note: dict[str, Any]) -> StatusUpdate:
    source = record.request.source
    assert source is not None
    values = {"public_url": public_url or "", "job_id": record.id, "executor": record.executor, "repository": source.repository,
              "sha": source.sha, "short_sha": source.sha[:7], "ref": source.ref or ""}
    template = target.target_url or ("{public_url}/jobs/{job_id}" if public_url else None)
    return StatusUpdate(state=host_state(source.host, moment, record), description=describe(moment, record, note),
                        context=target.context.format(**values)[:255], target_url=template.format(**values) if template else None)


# -- the hosts' APIs ---------------------------------------------------------------------------------
def _path(*parts: str) -> str:
    return "/".join(quote(part, safe="") for part in parts)


def post_request(source: JobSource, api_url: str, token: str, update: StatusUpdate) -> Outgoing:
    """The request that sets `update` on the commit."""
    body: dict[str, Any] = {"state": update.state, "description": update.description}
    if update.target_url:
        body["target_url"] = update.target_url
    if source.host == "gitlab":
        body["name"] = update.context
        if source.ref:
            body["ref"] = source.branch_or_tag
        url = f"{api_url}/api/v4/projects/{_project(source)}/statuses/{source.sha}"
    else:
        body["context"] = update.context
        owner, name = source.repository.split("/")
        prefix = "/api/v1" if source.host == "gitea" else ""
        url = f"{api_url}{prefix}/repos/{_path(owner, name)}/statuses/{source.sha}"
    headers = {**_auth(source.host, token), "Content-Type": "application/json"}
    return Outgoing("POST", url, url, headers, json.dumps(body).encode())


def list_request(source: JobSource, api_url: str, token: str, update: StatusUpdate) -> Outgoing:
    """The request that lists the commit's statuses (the newest for each context)."""
    if source.host == "gitlab":
        query = {"name": update.context, "per_page": "100"} | ({"ref": source.branch_or_tag or ""} if source.ref else {})
        url = f"{api_url}/api/v4/projects/{_project(source)}/repository/commits/{source.sha}/statuses?{urlencode(query)}"
    elif source.host == "gitea":
        owner, name = source.repository.split("/")
        url = f"{api_url}/api/v1/repos/{_path(owner, name)}/statuses/{source.sha}?sort=recentupdate&limit=50"
    else:
        owner, name = source.repository.split("/")
        url = f"{api_url}/repos/{_path(owner, name)}/commits/{source.sha}/statuses?per_page=100"
    return Outgoing("GET", url, url, _auth(source.host, token), max_answer=MAX_LISTING)


def shows(host: str, update: StatusUpdate, listing: Any, same_state_only: bool = False) -> bool:
    """Does the host's listing show `update` as the newest status of its context? With
    `same_state_only`, the state alone must match (GitLab cannot move a status to the state it has)."""
    if not isinstance(listing, list):
        return False
    key, state = ("name", "status") if host == "gitlab" else ("context", "state")
    mine = [item for item in listing if isinstance(item, dict) and item.get(key) == update.context]
    if not mine:
        return False
    def order(item: dict) -> int:
        return item["id"] if isinstance(item.get("id"), int) else -1

    # the newest: the highest id where the host gives ids, else the first (hosts list newest first)
    newest = max(mine, key=order) if any(order(item) >= 0 for item in mine) else mine[0]
    if same_state_only:
        return newest.get(state) == update.state
    return (newest.get(state) == update.state and newest.get("description") == update.description
            and (update.target_url is None or newest.get("target_url") == update.target_url))


def refused_transition(host: str, answer: Answer) -> bool:
    """GitLab's 400 for a status already in that state ("Cannot transition status via :run from :running")."""
    return host == "gitlab" and answer.status == 400 and "cannot transition status" in answer.reason.lower()


def _project(source: JobSource) -> str:
    return str(source.project_id) if source.project_id else quote(source.repository, safe="")


def _auth(host: str, token: str) -> dict[str, str]:
    if host == "gitlab":
        return {"PRIVATE-TOKEN": token}
    if host == "gitea":
        return {"Authorization": f"token {token}", "Accept": "application/json"}
    return {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}

"""Re-run: the same request under a new id, when the stored request can be sent again.

A record keeps the request as it was shown (redacted), so some jobs cannot be repeated from
it: secret build-arg values were never stored in the record (and the values kept for the job
are deleted when it ends), a clone URL's credentials were blanked, and an uploaded context is
deleted when its job ends. `why_not` says which, in words the dashboard shows."""

from __future__ import annotations

import re

from runner.core.jobs import BuildRequest, GitContext, JobRecord, new_job_id

_BLANKED_CREDENTIALS = re.compile(r"://\*\*\*@")


def why_not(record: JobRecord) -> str | None:
    """None if the job can be re-run; else the reason, for the user."""
    request = record.request
    if not record.finished:
        return "the job has not finished yet"
    if request.secret_build_args:
        names = ", ".join(request.secret_build_args)
        return (f"it has secret build args ({names}) whose values are not kept; "
                "submit it again with runner submit --secret-build-arg")
    if isinstance(request.context, GitContext):
        if _BLANKED_CREDENTIALS.search(request.context.url):
            return "its clone URL carried credentials, which are not kept; put them under git.credentials and submit it again"
        return None
    return "its build context was uploaded and is deleted when the job ends; submit it again with runner submit"


def rerun_request(record: JobRecord) -> BuildRequest:
    """The stored request under a new id (call only when why_not(record) is None)."""
    return record.request.model_copy(update={"id": new_job_id()})

"""The jobs list: a page of records, newest first, filtered by status, executor and repository.

Status filters read the store's status index, so their cost follows the page size, not the
history. Executor and repository have no index: a page reads back through the (status) index
until it has `limit` matches or has read `budget` records, and says where it stopped, so a
filter matching little never makes one request read 100,000 records; the next page goes on
from there."""

from __future__ import annotations

from dataclasses import dataclass

from runner.core.jobs import JobRecord, Status
from runner.entry.dashboard.views import matches_repository
from runner.store.jobstore import JobStore

#: records one page request reads at most when executor or repository filters it
SCAN_BUDGET = 500
SCAN_CHUNK = 200
MAX_LIMIT = 200


@dataclass(frozen=True)
class Filters:
    status: Status | None = None
    executor: str | None = None
    repository: str | None = None

    def narrows(self) -> bool:
        """True when the index alone does not answer the filter."""
        return bool(self.executor or self.repository)

    def match(self, record: JobRecord) -> bool:
        return ((self.status is None or record.status is self.status)
                and (self.executor is None or record.executor == self.executor)
                and (not self.repository or matches_repository(record, self.repository)))


@dataclass(frozen=True)
class Page:
    records: list[JobRecord]
    #: creation time to pass as `before` for the next page; None when the history is exhausted
    next_before: float | None
    #: records read to fill the page (more than `records` when a filter skipped some)
    scanned: int


def page(store: JobStore, filters: Filters, limit: int = 50, before: float | None = None,
         budget: int = SCAN_BUDGET) -> Page:
    limit = max(1, min(limit, MAX_LIMIT))
    found: list[JobRecord] = []
    scanned, cursor = 0, before
    chunk = SCAN_CHUNK if filters.narrows() else limit
    while len(found) < limit and scanned < budget:
        records = store.list(filters.status, min(chunk, budget - scanned) if filters.narrows() else limit - len(found), cursor)
        if not records:
            return Page(found, None, scanned)
        for record in records:
            scanned += 1
            cursor = record.created_at.timestamp()
            if filters.match(record):
                found.append(record)
                if len(found) == limit:
                    break
    return Page(found, cursor, scanned)

"""`runner status`, `logs`, `list` and `cancel`: reading and cancelling jobs, through Redis or
the HTTP API (both JobReaders), with plain values only: no models unless a cancel needs them.
Standard library only at import."""

from __future__ import annotations

import argparse
import sys

from runner.entry.cli_common import EXIT_INVALID, as_view, backend, client_settings, dump, fail, remote, store_for, styled


# -- reading and cancelling jobs ---------------------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> None:
    """Show a job's record."""
    record = backend(args).view(args.job_id)
    if record is None:
        fail(f"no job {args.job_id!r}", EXIT_INVALID)
    if args.as_json:
        return dump(record.data)
    print(f"{styled(record.id, 'bold')} {record.status.value} executor={record.executor} attempts={record.attempts}"
          + (f" submitted_by={record.submitted_by}" if record.submitted_by else ""))
    attestation = record.attestation
    attested = {(a.repository, a.digest): a for a in attestation.images} if attestation else {}
    for image in record.images:
        mark = attested.get((image.repository, image.digest))
        signed = (" signed" if mark.signature else " provenance unsigned") if mark else ""
        print(f"  {image.ref}@{image.digest}" + (" (index)" if image.platforms else "") + signed)
        for platform in image.platforms:
            child = attested.get((image.repository, platform.digest))
            child_signed = (" signed" if child.signature else " provenance unsigned") if child else ""
            print(f"    {platform.platform} {platform.digest}{child_signed}")
    if record.reused_from:
        print(f"  reused: the image built by job {record.reused_from} for the same inputs (no build)")
    if attestation:
        a = attestation
        print(f"  provenance: SLSA v1 on {len(a.images)} digest(s), " + (f"signed with key {a.key_id}" if a.signed
                                                                          else f"unsigned: {a.unsigned_reason}"))
    if record.error:
        print(f"  error ({record.error[0]}): {record.error[1]}")


def cmd_logs(args: argparse.Namespace) -> None:
    """Print a job's log from the start; with --follow, keep printing until it ends."""
    lines = backend(args).log_of(args.job_id, follow=args.follow)
    if lines is None:
        fail(f"no job {args.job_id!r}", EXIT_INVALID)
    write = sys.stdout.write
    for line in lines:
        write(line + "\n")
        if args.follow:
            sys.stdout.flush()


def cmd_list(args: argparse.Namespace) -> None:
    """List recent jobs, newest first."""
    from runner.core.status import Status

    status = None
    if args.status is not None:
        try:
            status = Status(args.status)
        except ValueError:
            fail(f"--status {args.status!r}: choose one of {', '.join(s.value for s in Status)}", EXIT_INVALID)
    records = backend(args).views(status, args.limit)
    if args.as_json:
        return dump([r.data for r in records])
    for r in records:
        print(f"{r.id}  {r.status.value:<9}  {r.executor:<8}  {r.created_at:%Y-%m-%d %H:%M:%S}  {', '.join(r.tags)}")


def cmd_cancel(args: argparse.Namespace) -> None:
    """Cancel a job: a queued job never starts; a running one is stopped and cleaned up."""
    cfg = client_settings(args)
    client = remote(args.api, cfg)
    if client is not None:  # the server cancels
        record = client.cancel(args.job_id)
    else:
        store = store_for(cfg)
        record = store.view(args.job_id)  # a finished job has nothing to cancel: no models to load
        if record is not None and not record.finished:
            from runner.entry.control import cancel_job

            cancelled = cancel_job(store, args.job_id)
            record = None if cancelled is None else as_view(cancelled)
    if record is None:
        fail(f"no job {args.job_id!r}", EXIT_INVALID)
    print(f"{args.job_id} {record.status.value if record.finished else 'cancelling'}")

"""`runner submit`: the job's request from the command line, its context packed and uploaded,
the job queued (through Redis, checked by the plain admission rules or the models; or through
the HTTP API), then detached, followed or waited for. Standard library only at import."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from runner.entry.cli_common import (
    EXIT_FAILED,
    EXIT_INFRA,
    EXIT_INVALID,
    EXIT_OK,
    as_view,
    client_settings,
    config_path,
    dump,
    fail,
    note,
    remote,
    settings,
    store_for,
    styled,
)

#: `typing` costs ~2 ms of every command and the light path needs none of it at run time; the
#: checker treats a constant named TYPE_CHECKING as typing's own
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn, TypeVar

    from runner.config.settings import Settings
    from runner.config.submit_plain import PlainSubmitSettings
    from runner.core.jobs import JobRecord
    from runner.core.jobview import JobReader, JobView
    from runner.entry.submission import ContextUpload
    from runner.store.jobstore import JobStore

    T = TypeVar("T")


def pairs(values: list[str], option: str) -> dict[str, str]:
    result = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"{option} {item!r}: expected KEY=VALUE", EXIT_INVALID)
        result[key] = value
    return result


def secret_values(specs: list[str]) -> dict[str, str]:
    """--secret-build-arg values, read from the environment or a file: a value given on the
    command line would be readable by every user of the host (argv is public in /proc)."""
    values = {}
    for spec in specs:
        name, sep, source = spec.partition("=")
        kind, _, where = source.partition(":")
        if not sep:
            kind, where = "env", name
        if kind == "env" and where:
            if where not in os.environ:
                fail(f"--secret-build-arg {name}: the environment variable {where} is not set", EXIT_INVALID)
            values[name] = os.environ[where]
        elif kind == "file" and where:
            try:
                values[name] = Path(where).read_text().rstrip("\n")
            except OSError as exc:
                fail(f"--secret-build-arg {name}: cannot read {where}: {exc.strerror}", EXIT_INVALID)
        else:
            fail(f"--secret-build-arg {name}: give the value by reference, never on the command line: NAME (from the "
                 "environment variable NAME), NAME=env:VAR or NAME=file:PATH", EXIT_INVALID)
    return values


# -- submit ------------------------------------------------------------------------------------------
def cmd_submit(args: argparse.Namespace) -> None:
    """Upload DIRECTORY as the build context and queue a build."""
    if sum((args.detach, args.wait, args.follow)) > 1:
        fail("choose one of --detach, --wait, --follow", EXIT_INVALID)
    mode = "detach" if args.detach else "follow" if args.follow else "wait"
    build_args = pairs(args.build_arg, "--build-arg")
    secret_args = secret_values(args.secret_build_arg)
    payload: dict[str, Any] = {
        "dockerfile": args.file, "tags": args.tag, "build_args": {**build_args, **secret_args},
        "secret_build_args": list(secret_args), "secrets": [s.removeprefix("id=") for s in args.secret],
        "target": args.target, "labels": pairs(args.label, "--label"), "executor": args.executor,
        "builder": args.builder, "push": args.push, "no_cache": args.no_cache, "reuse": args.reuse,
        "timeout": args.timeout,
    }
    from runner.core.platforms import split_specifiers

    platforms = [part for value in args.platform for part in split_specifiers(value)]
    if len(platforms) == 1:  # one value: a single-platform job, as before (also for an older server)
        payload["platform"] = platforms[0]
    elif platforms:
        payload["platforms"] = platforms
    if args.job_id:
        payload["id"] = args.job_id
    source = {"host": args.source_host, "repository": args.source_repo, "sha": args.source_sha, "ref": args.source_ref,
              "api_url": args.source_api_url, "project_id": args.source_project_id}
    if any(value is not None for value in source.values()):
        payload["source"] = {key: value for key, value in source.items() if value is not None}
    plain = submit_settings(args)
    client = remote(args.api, plain or client_settings(args))
    if client is not None:  # the server checks the job: no settings tree, no models here
        queued_id, created = client.submit_directory(Path(args.directory), payload, plain.limits if plain else None)
        queued = client.view(queued_id)
        if queued is None:
            fail(f"job {queued_id} disappeared from the API", EXIT_INFRA)
        return after_submit(client, queued, created, mode, args.as_json)
    from runner.core.admission_rules import NeedsModels

    try:
        if plain is None:
            raise NeedsModels("settings the light path does not read")
        store, view, created = submit_plainly(Path(args.directory), payload, plain)
    except NeedsModels:  # the models decide: the whole settings tree and admission
        store, record, created = submit_through_redis(Path(args.directory), payload, settings(args))
        view = as_view(record)
    after_submit(store, view, created, mode, args.as_json)


def submit_settings(args: argparse.Namespace) -> PlainSubmitSettings | None:
    """What `runner submit` through Redis reads, plainly; None when the models must read it."""
    from runner.config.loader import SettingsError
    from runner.config.submit_plain import load_plain_submit_settings

    try:
        return load_plain_submit_settings(config_path(args))
    except SettingsError as exc:
        fail(f"invalid configuration: {exc}", EXIT_INVALID)


def submit_through_redis(directory: Path, payload: dict[str, Any], cfg: Settings) -> tuple[JobStore, JobRecord, bool]:
    """Admit (by the models), reserve the id, upload the context, then record and queue the job."""
    from runner.worker.admission import QUEUE, Rejected, admit, parse_request

    try:
        request = parse_request(payload)
        admitted = admit(request, cfg, QUEUE)  # Redis is the queue: the same trust as a raw message
    except Rejected as exc:
        fail(f"invalid job: {exc}", EXIT_INVALID)
    store = store_for(cfg)
    upload = upload_context(store, request.id, directory, request.dockerfile, cfg.limits)
    if upload is None:
        existing = store.get(request.id)
        assert existing is not None
        return store, existing, False
    record, created = queue_upload(lambda: upload.submit(request, cfg, QUEUE, admitted, submitted_by=cli_user()))
    return store, record, created


def submit_plainly(directory: Path, payload: dict[str, Any], cfg: PlainSubmitSettings) -> tuple[JobStore, JobView, bool]:
    """submit_through_redis without the models: the request checked by the same rules
    (runner.core.plain_request, runner.core.admission_rules) and its record written as the
    models would write it, in the same one transaction (JobStore.submit_plain). Raises
    NeedsModels, before anything is written, for what only the models read."""
    from runner.core.admission_rules import NeedsModels, Rejected, check_admission
    from runner.core.plain_request import plain_request, queued_record, redacted, secret_arg_values

    def unlisted(name: str) -> None:
        raise NeedsModels(f"executor {name!r} has no section in the config")

    try:
        request = plain_request(payload)
        executor = check_admission(cfg.policy, request["tags"], request["platforms"], request["executor"],
                                   request["timeout"], request["secrets"], unlisted)
    except Rejected as exc:
        fail(f"invalid job: {exc}", EXIT_INVALID)
    store = store_for(cfg)
    job_id = request["id"]
    upload = upload_context(store, job_id, directory, request["dockerfile"], cfg.limits)
    if upload is None:
        existing = store.view(job_id)
        assert existing is not None
        return store, existing, False
    # no source: no commit statuses (admission's statuses_for); an upload: nothing else to check
    record = queued_record(redacted(request), executor, cfg.queue_for(executor), False, cli_user())

    def submit() -> tuple[JobView, bool]:
        try:
            stored, created = store.submit_plain(record, secret_arg_values(request))
        except Exception:
            upload.abandon()
            raise
        if created:  # after the send, off the pickup path (as runner.entry.submission.submit)
            store.keep_context(job_id)
        return stored, created

    view, created = queue_upload(submit)
    return store, view, created


def upload_context(store: JobStore, job_id: str, directory: Path, dockerfile: str, limits: Any) -> ContextUpload | None:
    """Reserve the id and upload the context of `directory` (None: a job has the id already),
    or exit saying why nothing was queued."""
    import socket

    from redis import RedisError

    from runner.context.pack import write_tar
    from runner.core.errors import InvalidJob
    from runner.entry.submission import ContextUpload, UploadRefused
    from runner.store.jobstore import ContextTooLarge

    try:  # the id is reserved before any upload: a used id never gets a new context
        upload = ContextUpload.begin(store, job_id, f"cli:{socket.gethostname()}:{os.getpid()}", limits.max_context_bytes)
    except UploadRefused as exc:
        if exc.reason != "exists":
            fail(f"job {job_id} is being submitted by another client right now; choose another --id", EXIT_INVALID)
        return None
    try:
        write_tar(directory, upload.writer, dockerfile, limits)
        upload.finish()
    except (ContextTooLarge, InvalidJob) as exc:
        upload.abandon()
        fail(str(exc), EXIT_INVALID)
    except OSError as exc:
        upload.abandon()
        fail(f"cannot read the build context: {exc}", EXIT_INVALID)
    except RedisError as exc:  # a full Redis (maxmemory, noeviction) refuses the upload
        upload.abandon()
        fail(f"Redis refused the upload ({type(exc).__name__}: {exc}); nothing was queued", EXIT_INFRA)
    return upload


def queue_upload(submit: Callable[[], T]) -> T:
    """Record and queue the uploaded job (`submit` abandons the upload when it fails), or exit."""
    from runner.core.admission_rules import Rejected

    try:
        return submit()
    except Rejected as exc:
        fail(f"invalid job: {exc}", EXIT_INVALID)
    except Exception as exc:  # noqa: BLE001 - a broker failure is infrastructure
        fail(f"could not queue the job: {exc}", EXIT_INFRA)


def cli_user() -> str:
    """`cli:USER@HOST`: who ran `runner submit` (through Redis), for the record and the log. USER
    is getpass.getuser()'s answer, found as it finds it (the first of LOGNAME, USER, LNAME,
    USERNAME that is set, else the uid's name) without importing getpass, which loads termios
    for its password prompt on every submit."""
    import socket

    user = next((os.environ[name] for name in ("LOGNAME", "USER", "LNAME", "USERNAME") if os.environ.get(name)), None)
    if user is None:
        import pwd

        try:
            user = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:  # a uid with no name (a container's)
            user = str(os.getuid())
    return f"cli:{user}@{socket.gethostname()}"


def after_submit(store: JobReader, record: JobView, created: bool, mode: str, as_json: bool) -> None:
    """Detach, follow or wait: the same for a job queued through Redis or through the API."""
    if not created:
        note(f"job {record.id} already exists ({record.status.value}); nothing queued")
    if mode == "detach":
        if as_json:
            dump(record.data, indent=None)
        else:
            print(record.id)
        return
    if not as_json:
        note(f"job {styled(record.id, 'bold', sys.stderr)} queued on {record.queue}")
    known: JobView | None = record
    if mode == "follow":
        for line in store.read_log(record.id, follow=True):
            print(line, flush=True)
        known = None  # it has ended since: read it again
    report(wait_for(store, record.id, known), as_json)


def wait_for(store: JobReader, job_id: str, record: JobView | None = None, again: float = 1.0) -> JobView:
    """The job's final record (`record`: what was just read of it). Until it ends, its log
    stream is followed without printing it: the stream ends when the job does (one long
    request through the API, a blocking read on Redis), where polling the record cost a
    request every 50 ms. A stream cut short is followed again after `again` seconds."""
    while True:
        record = record or store.view(job_id)
        if record is None:
            fail(f"job {job_id} disappeared from the store", EXIT_INFRA)
        if record.finished:
            return record
        try:
            for _ in store.read_log(job_id, follow=True):
                pass
        except OSError:  # the API's stream broke off (requests' errors are OSErrors): look again
            time.sleep(again)
        record = None


def report(record: JobView, as_json: bool) -> NoReturn:
    from runner.core.status import Status

    if as_json:
        dump(record.data)
    elif record.status is Status.succeeded:
        for image in record.images:
            print(f"{image.ref}@{image.digest}")
        for image in record.images[:1]:  # stdout stays one REF@DIGEST a tag; each platform's manifest is a note
            for platform in image.platforms:
                note(f"  {platform.platform} {platform.digest}")
    else:
        message = record.error[1] if record.error else ""
        note(f"{styled(record.status.value, 'bold red', sys.stderr)}: {message}")
    if record.status is Status.succeeded:
        raise SystemExit(EXIT_OK)
    raise SystemExit(EXIT_INFRA if record.error and record.error[0] == "infrastructure" else EXIT_FAILED)

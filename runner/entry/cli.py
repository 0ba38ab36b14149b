"""The `runner` command. Each subcommand turns its input into a BuildRequest or a query and
hands it on; no build logic lives here.

Exit codes: 0 success, 1 build failed (or cancelled / timed out), 2 invalid input (nothing
queued), 3 infrastructure unreachable.

Start-up time is felt on every CI step, so this module imports only the standard library:
each command imports what it needs when it runs (the read commands: the settings, the job
store or the API client; never Celery, docker-py or FastAPI).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

#: `typing` costs ~2 ms of every command and the light path needs none of it at run time; the
#: checker treats a constant named TYPE_CHECKING as typing's own
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn, TypeVar

    from runner.config.client_plain import PlainClientSettings
    from runner.config.settings import Settings
    from runner.config.submit_plain import PlainSubmitSettings
    from runner.core.jobs import JobRecord
    from runner.core.jobview import JobReader, JobView
    from runner.entry.submission import ContextUpload
    from runner.store.jobstore import JobStore

    T = TypeVar("T")
EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INFRA = 0, 1, 2, 3
_STYLES = {"bold": "1", "red": "31", "bold red": "1;31", "green": "32", "yellow": "33", "dim": "2"}


# -- output ------------------------------------------------------------------------------------------
def styled(text: str, style: str, stream: Any = sys.stdout) -> str:
    """`text` in a terminal style when `stream` is a terminal (and NO_COLOR is unset)."""
    if os.environ.get("NO_COLOR") or not stream.isatty():
        return text
    return f"\033[{_STYLES[style]}m{text}\033[0m"


def note(message: str) -> None:
    """A line for the user on stderr (stdout is kept for ids, digests and JSON)."""
    print(message, file=sys.stderr, flush=True)


def fail(message: str, code: int) -> NoReturn:
    note(f"{styled('error:', 'bold red', sys.stderr)} {message}")
    raise SystemExit(code)


def dump(data: Any, indent: int | None = 2) -> None:
    print(json.dumps(data, indent=indent))


# -- what commands share -----------------------------------------------------------------------------
def config_path(args: argparse.Namespace) -> str | None:
    """--config PATH, given before or after the command (None: RUNNER_CONFIG or a default location)."""
    return getattr(args, "config", None)


def settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    """The whole settings tree (`overrides` over the file and env), or exit 2 saying what is wrong."""
    from runner.config.settings import SettingsError, load_settings

    try:
        return load_settings(config_path(args), **overrides)
    except SettingsError as exc:
        fail(f"invalid configuration: {exc}", EXIT_INVALID)


def client_settings(args: argparse.Namespace) -> PlainClientSettings:
    """What the read commands need (Redis or the API, the namespace): quick to load (plain
    values, no models: runner.config.client_plain), and a mistake elsewhere in the config never
    stops them."""
    from runner.config.client_plain import load_plain_client_settings
    from runner.config.loader import SettingsError

    try:
        return load_plain_client_settings(config_path(args))
    except SettingsError as exc:
        fail(f"invalid configuration: {exc}", EXIT_INVALID)


def store_for(cfg: PlainClientSettings | Settings) -> JobStore:
    from runner.store.jobstore import JobStore, StoreUnavailable

    store = JobStore.from_settings(cfg)
    try:
        store.ping()
    except StoreUnavailable as exc:
        fail(str(exc), EXIT_INFRA)
    return store


def remote(api: str | None, cfg: PlainClientSettings):
    """The HTTP API client when --api / RUNNER_API_URL / api.url is set, else None (use Redis)."""
    if not (api or cfg.api.url):
        return None
    from runner.entry.api_client import client_for

    return client_for(api, cfg, fail)


def backend(args: argparse.Namespace) -> JobReader:
    """The job store, or the API client (--api): both are JobReaders."""
    cfg = client_settings(args)
    return remote(args.api, cfg) or store_for(cfg)


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


def as_view(record: JobRecord) -> JobView:
    from runner.core.jobview import JobView

    return JobView(record.model_dump(mode="json"))


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


# -- signatures and provenance -----------------------------------------------------------------------
def cmd_verify(args: argparse.Namespace) -> None:
    """Verify an image's cosign signature and SLSA provenance with a public key (offline, as
    `cosign verify --key` and `cosign verify-attestation --key --type slsaprovenance1`), and
    print what was built from what.

    REF is a tag (resolved to the digest it holds now) or REF@sha256:...; a multi-platform
    image's manifests are verified too. Exits 1 when a signature or the provenance is missing
    or does not verify."""
    from runner.core.errors import ExecutorError
    from runner.core.registry_client import Registries
    from runner.entry.verify_report import report_lines
    from runner.supply.keys import SigningKeyError, load_public_key
    from runner.supply.verify import Verifier

    try:
        public = load_public_key(Path(args.key))
    except SigningKeyError as exc:
        fail(str(exc), EXIT_INVALID)
    cfg = settings(args)
    try:
        checked = Verifier(Registries(cfg.registries, cfg.registry_auth), public).verify(args.reference)
    except ValueError as exc:
        fail(str(exc), EXIT_INVALID)
    except ExecutorError as exc:
        fail(exc.message, EXIT_INFRA)
    if args.as_json:
        dump([{"ref": c.ref, "digest": c.digest, "platform": c.platform, "verified": c.ok, "signature": c.signature,
               "problems": c.problems, "statement": c.statement} for c in checked])
    else:
        for check in checked:
            platform = f" ({check.platform})" if check.platform else ""
            if check.ok:
                print(f"{styled('verified', 'green')} {check.ref}{platform}: signature and SLSA provenance")
                for line in report_lines(check.statement or {}):
                    print(f"  {line}")
            else:
                note(f"{styled('NOT VERIFIED', 'bold red', sys.stderr)} {check.ref}{platform}: {'; '.join(check.problems)}")
    raise SystemExit(EXIT_OK if all(c.ok for c in checked) else EXIT_FAILED)


def cmd_keys_generate(args: argparse.Namespace) -> None:
    """Make an ECDSA P-256 key pair for signing: PREFIX.key (PKCS#8 PEM, encrypted with the
    passphrase; mode 0600) for signing.key_file, and PREFIX.pub for verifiers (cosign verify
    --key, runner verify --key, admission policies). The passphrase comes from
    --passphrase-file or is asked for twice on the terminal."""
    import getpass

    from runner.supply.keys import SigningKeyError, generate, read_passphrase

    passphrase: bytes | None
    if args.no_passphrase:
        passphrase = None
    elif args.passphrase_file:
        try:
            passphrase = read_passphrase(Path(args.passphrase_file))
        except SigningKeyError as exc:
            fail(str(exc), EXIT_INVALID)
        if not passphrase:
            fail(f"--passphrase-file {args.passphrase_file} is empty; give --no-passphrase for a key without one", EXIT_INVALID)
    elif sys.stdin.isatty():
        first = getpass.getpass("Passphrase for the new key: ")
        if first != getpass.getpass("Again: "):
            fail("the passphrases differ", EXIT_INVALID)
        passphrase = first.encode() or None
    else:
        fail("no terminal to ask for a passphrase on: give --passphrase-file FILE, or --no-passphrase", EXIT_INVALID)
    try:
        private, public = generate(Path(args.output), passphrase)
    except SigningKeyError as exc:
        fail(str(exc), EXIT_INVALID)
    except OSError as exc:
        fail(f"cannot write the key: {exc.strerror} ({exc.filename})", EXIT_INVALID)
    note(f"private key: {private} (signing.key_file{', with signing.passphrase_file' if passphrase else ''})")
    note(f"public key:  {public} (cosign verify --key, runner verify --key, signing.public_key_file)")


# -- services and configuration ----------------------------------------------------------------------
def cmd_worker(args: argparse.Namespace) -> None:
    """Run a worker: take jobs from the queues and build them."""
    from runner.worker.lifecycle import run_worker

    budget = {key: value for key, value in (("max_jobs", args.max_jobs), ("idle_exit", args.idle_exit)) if value is not None}
    cfg = settings(args, **({"worker": budget} if budget else {}))
    run_worker(cfg, args.queues.split(",") if args.queues else None, args.concurrency, args.loglevel)


def cmd_serve(args: argparse.Namespace) -> None:
    """Serve the HTTP API (/v1/jobs) and the git-push webhooks (/v1/webhooks/github|gitlab|gitea)."""
    from runner.entry.api import serve as run_server

    run_server(settings(args), args.host, args.port)


def cmd_drain(args: argparse.Namespace) -> None:
    """Drain the worker on this host and wait until no build runs there (a preStop hook).

    It stops taking builds at once (as on SIGTERM); this returns when its running builds have
    finished or it has exited. Exits 0 then, 1 if --timeout passed first."""
    from runner.entry.drain_hook import drain_and_wait

    port = args.port or settings(args).worker.metrics_port
    if not port:
        fail("worker.metrics_port is 0: the worker serves no HTTP to ask; give --port", EXIT_INVALID)
    try:
        drained = drain_and_wait(port, args.timeout, note)
    except RuntimeError as exc:
        fail(str(exc), EXIT_INFRA)
    raise SystemExit(EXIT_OK if drained else EXIT_FAILED)


def cmd_doctor(args: argparse.Namespace) -> None:
    """Check Redis, the engine, registries and every executor; one line each.

    Exits 3 (infrastructure) if Redis or an enabled executor cannot work, 2 if the configuration
    is invalid; other failures are shown, not fatal, and warnings (WARN: a secret file readable
    by group or others, a Redis that may evict jobs) never fail it."""
    from runner.entry.doctor import run_checks

    ok = True
    for check in run_checks(settings(args)):
        if check.ok:
            mark = styled("WARN", "yellow") if check.warning else styled("ok  ", "green")
        else:
            mark = styled("FAIL", "red") if check.required or check.shown else styled("off ", "dim")
        print(f"{mark} {check.name}: {check.summary}", flush=True)
        ok = ok and (check.ok or not check.required)
    raise SystemExit(EXIT_OK if ok else EXIT_INFRA)


def cmd_config_show(args: argparse.Namespace) -> None:
    """Print the effective configuration with secrets redacted, after a comment naming the file
    it came from (--config, RUNNER_CONFIG or a default location) or saying there was none."""
    import yaml

    from runner.config.loader import config_source

    effective = settings(args)
    path, why = config_source(config_path(args))
    print(f"# config file: {path} ({why})" if path else f"# {why}: the defaults and RUNNER_* variables apply")
    print(yaml.safe_dump(effective.model_dump(mode="json"), sort_keys=False), end="")


def cmd_config_example(args: argparse.Namespace) -> None:
    """Print an example config with every option, its default and its meaning."""
    from runner.config.example import render_example

    print(render_example(), end="")


# -- the parser ----------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """Usage errors exit 2 (invalid input), like every other refusal of what the user typed."""

    _adding = False

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        fail(message, EXIT_INVALID)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        self._adding = True
        try:
            return super().add_argument(*args, **kwargs)
        finally:
            self._adding = False

    def _get_formatter(self) -> argparse.HelpFormatter:
        """argparse makes a help formatter for every argument added, only to check its metavar,
        and a formatter asks the terminal its width (importing shutil: ~2 ms of every command).
        That check does not need the width: the help and usage messages still ask for it."""
        if self._adding:
            return argparse.HelpFormatter(self.prog, width=80)  # the check is HelpFormatter._format_args
        return super()._get_formatter()


class _Version(argparse.Action):
    """--version, looked up only when asked (reading the installed metadata costs start-up time)."""

    def __init__(self, option_strings: list[str], dest: str, **_: Any):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: str | None = None) -> None:
        from runner.core.version import runner_version

        print(f"runner (ci-build-runner) {runner_version()}")
        raise SystemExit(EXIT_OK)


def _config_option() -> _Parser:
    """--config PATH, accepted before the command and after it."""
    holder = _Parser(add_help=False)
    holder.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="the config file (default: env RUNNER_CONFIG, else ~/.config/ci-build-runner/runner.yml, "
                        "else /etc/ci-build-runner/runner.yml; `runner config show` says which)")
    return holder


CONFIG_OPTION = _config_option()


def _summary(handler: Any) -> str:
    """A command's line in `runner --help`: the first line of its handler's docstring."""
    return _description(handler).split("\n")[0]


def _description(handler: Any) -> str:
    return (handler.__doc__ or "").strip()


#: how every command's parser is made (its description: its handler's docstring)
_COMMAND_OPTIONS: dict[str, Any] = {"allow_abbrev": False, "formatter_class": argparse.RawDescriptionHelpFormatter,
                                    "parents": [CONFIG_OPTION]}


def _command_parser(prog: str, handler: Any) -> _Parser:
    """A command's parser, made when the command is chosen."""
    parser = _Parser(prog=prog, description=_description(handler), **_COMMAND_OPTIONS)
    parser.set_defaults(handler=handler)
    return parser


def _command(subparsers: Any, name: str, handler: Any) -> argparse.ArgumentParser:
    """A command of a group (`keys generate`, `config show`), its parser made now."""
    parser = subparsers.add_parser(name, help=_summary(handler), description=_description(handler), **_COMMAND_OPTIONS)
    parser.set_defaults(handler=handler)
    return parser


class _Commands(argparse._SubParsersAction):
    """`runner`'s commands, each one's parser built only when it is chosen: building all of
    them cost ~3 ms of every command (argparse makes a help formatter for every argument it
    adds). `runner --help` lists them, and an unknown command is refused, exactly as before."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._builders: dict[str, Callable[[str], argparse.ArgumentParser]] = {}

    def add_command(self, name: str, summary: str, build: Callable[[str], argparse.ArgumentParser]) -> None:
        """`name`, listed with `summary`; `build(prog)` makes its parser when it is chosen."""
        self._choices_actions.append(self._ChoicesPseudoAction(name, (), summary))
        self._name_parser_map[name] = None  # a choice now; its parser below, once chosen
        self._builders[name] = build

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        build = self._builders.pop(values[0], None)
        if build is not None:
            self._name_parser_map[values[0]] = build(f"{self._prog_prefix} {values[0]}")
        super().__call__(parser, namespace, values, option_string)


def _api_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api", metavar="URL", default=os.environ.get("RUNNER_API_URL") or None,
                        help="use the runner HTTP API at URL instead of Redis (env RUNNER_API_URL; "
                        "token: env RUNNER_API_TOKEN or api.token)")


def _json_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", dest="as_json", action="store_true", help=what)


def _submit_arguments(submit: argparse.ArgumentParser) -> None:
    submit.add_argument("directory", nargs="?", default=".", help="build context directory (default: .)")
    submit.add_argument("-t", "--tag", action="append", default=[], metavar="REF", help="full image reference; repeat for more")
    submit.add_argument("-f", "--file", default="Dockerfile", help="Dockerfile path inside the context (default: Dockerfile)")
    submit.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE", help="build argument; repeat for more")
    submit.add_argument("--secret-build-arg", action="append", default=[], metavar="SPEC",
                        help="NAME (value from env var NAME), NAME=env:VAR or NAME=file:PATH; masked everywhere, "
                        "never on the command line")
    submit.add_argument("--secret", action="append", default=[], metavar="id=NAME", help="id=NAME of a build secret from config")
    submit.add_argument("--target", help="build stage to stop at")
    submit.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="image label; repeat for more")
    submit.add_argument("--executor", help="executor name (config default if omitted)")
    submit.add_argument("--builder", help="auto | buildkit | classic (engine executors)")
    submit.add_argument("--platform", action="append", default=[], metavar="PLATFORM[,PLATFORM…]",
                        help="target platform(s), as buildx takes them: linux/amd64 (one) or linux/amd64,linux/arm64 (an "
                        "image per platform, an index under every tag); repeatable")
    submit.add_argument("--push", action=argparse.BooleanOptionalAction, default=True, help="push the image (default: yes)")
    submit.add_argument("--no-cache", action="store_true", help="build without the layer cache (never reuses an image)")
    submit.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=True,
                        help="put the image an earlier job pushed from the same inputs under the tags instead of "
                        "building (default: yes); --no-reuse always builds")
    submit.add_argument("--timeout", type=int, metavar="SECONDS", help="seconds the build may take")
    submit.add_argument("--detach", action="store_true", help="print the job id and return")
    submit.add_argument("--wait", action="store_true", help="wait for the result (default)")
    submit.add_argument("--follow", action="store_true", help="stream the build log live")
    submit.add_argument("--id", dest="job_id", help="job id (default: random)")
    source = submit.add_argument_group("commit statuses", "the commit this build is for, which gets the job's statuses "
                                       "(pending, running, the result) when the config has a token for its host (statuses:)")
    source.add_argument("--source-host", choices=["github", "gitlab", "gitea"], help="the git host's kind (Forgejo: gitea)")
    source.add_argument("--source-repo", metavar="OWNER/REPO", help="the repository (GitLab: group/project or the project id)")
    source.add_argument("--source-sha", metavar="SHA", help="the full commit id")
    source.add_argument("--source-ref", metavar="REF", help="the branch or tag (refs/heads/main, or main)")
    source.add_argument("--source-api-url", metavar="URL", help="the host's API (default: statuses.<host>.api_url)")
    source.add_argument("--source-project-id", type=int, metavar="ID", help="GitLab: the numeric project id")
    _json_option(submit, "print the final job record as JSON")
    _api_option(submit)


def _status_arguments(status: argparse.ArgumentParser) -> None:
    status.add_argument("job_id", metavar="ID")
    _json_option(status, "print the record as JSON")
    _api_option(status)


def _logs_arguments(logs: argparse.ArgumentParser) -> None:
    logs.add_argument("job_id", metavar="ID")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    _api_option(logs)


def _list_arguments(listing: argparse.ArgumentParser) -> None:
    listing.add_argument("--status", metavar="STATUS", help="only jobs in this status (queued, running, succeeded, ...)")
    listing.add_argument("--limit", type=int, default=50, help="most jobs to show (default: 50)")
    _json_option(listing, "print the records as JSON")
    _api_option(listing)


def _cancel_arguments(cancel: argparse.ArgumentParser) -> None:
    cancel.add_argument("job_id", metavar="ID")
    _api_option(cancel)


def _worker_arguments(worker: argparse.ArgumentParser) -> None:
    worker.add_argument("--queues", help="comma-separated queues (default: one per enabled executor)")
    worker.add_argument("--concurrency", type=int, help="builds at once (default: worker.concurrency)")
    worker.add_argument("--loglevel", help="DEBUG, INFO, WARNING or ERROR (default: log.level)")
    worker.add_argument("--max-jobs", type=int, metavar="N", help="run N builds, then drain and exit (default: "
                        "worker.max_jobs; 1: a pod per build)")
    worker.add_argument("--idle-exit", type=float, metavar="SECONDS", help="drain and exit after this long without a "
                        "build (default: worker.idle_exit)")


def _serve_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--host", help="listen address (default: api.host)")
    serve.add_argument("--port", type=int, help="port (default: api.port)")


def _drain_arguments(drain: argparse.ArgumentParser) -> None:
    drain.add_argument("--port", type=int, help="the worker's HTTP port (default: worker.metrics_port)")
    drain.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after this long (default: wait)")


def _verify_arguments(verify: argparse.ArgumentParser) -> None:
    verify.add_argument("reference", metavar="REF", help="the image: REGISTRY/NAME:TAG or REGISTRY/NAME@sha256:...")
    verify.add_argument("--key", required=True, metavar="PUB", help="the PEM public key (PREFIX.pub of `runner keys generate`)")
    _json_option(verify, "print what was checked, and each statement, as JSON")


def _keys_parser(prog: str) -> argparse.ArgumentParser:
    keys = _Parser(prog=prog, description="Signing keys.", parents=[CONFIG_OPTION])
    keys.set_defaults(handler=None, parser=keys)
    keys_commands = keys.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)
    generate = _command(keys_commands, "generate", cmd_keys_generate)
    generate.add_argument("--output", required=True, metavar="PREFIX", help="writes PREFIX.key and PREFIX.pub")
    secret = generate.add_mutually_exclusive_group()
    secret.add_argument("--passphrase-file", metavar="FILE", help="the passphrase (its last newline dropped); default: asked for")
    secret.add_argument("--no-passphrase", action="store_true", help="leave the private key unencrypted")
    return keys


def _config_parser(prog: str) -> argparse.ArgumentParser:
    config = _Parser(prog=prog, description="Inspect the configuration.", parents=[CONFIG_OPTION])
    config.set_defaults(handler=None, parser=config)
    config_commands = config.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser, prog=config.prog)
    _command(config_commands, "show", cmd_config_show)
    _command(config_commands, "example", cmd_config_example)
    return config


def _with_arguments(handler: Any, arguments: Callable[[argparse.ArgumentParser], None] | None) -> Callable[[str], argparse.ArgumentParser]:
    def build(prog: str) -> argparse.ArgumentParser:
        parser = _command_parser(prog, handler)
        if arguments is not None:
            arguments(parser)
        return parser
    return build


#: `runner`'s commands in the order `runner --help` lists them: (name, handler, what adds its arguments)
COMMANDS: tuple[tuple[str, Any, Callable[[argparse.ArgumentParser], None] | None], ...] = (
    ("submit", cmd_submit, _submit_arguments), ("status", cmd_status, _status_arguments), ("logs", cmd_logs, _logs_arguments),
    ("list", cmd_list, _list_arguments), ("cancel", cmd_cancel, _cancel_arguments), ("worker", cmd_worker, _worker_arguments),
    ("serve", cmd_serve, _serve_arguments), ("drain", cmd_drain, _drain_arguments), ("doctor", cmd_doctor, None),
    ("verify", cmd_verify, _verify_arguments),
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="runner", description="CI build runner: build and push container images.", allow_abbrev=False,
                     parents=[CONFIG_OPTION])
    parser.add_argument("--version", action=_Version)
    # prog given: argparse would otherwise build a help formatter (and import shutil) to work it out
    commands: _Commands = parser.add_subparsers(  # type: ignore[assignment]  # action=_Commands makes one
        title="commands", metavar="COMMAND", parser_class=_Parser, prog=parser.prog, action=_Commands)
    for name, handler, arguments in COMMANDS:
        commands.add_command(name, _summary(handler), _with_arguments(handler, arguments))
    commands.add_command("keys", "Signing keys.", _keys_parser)
    commands.add_command("config", "Inspect the configuration.", _config_parser)
    parser.set_defaults(handler=None, parser=parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    # The runner uses no pydantic plugin; without this, building the first model scans every
    # installed package's entry points for one (and loads what it finds): tens of ms per command.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "1")
    args = build_parser().parse_args(argv)
    if args.handler is None:  # `runner` or `runner config` alone: what can follow
        args.parser.print_help(sys.stderr)
        raise SystemExit(EXIT_INVALID)
    try:
        args.handler(args)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `runner logs ID | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_OK)

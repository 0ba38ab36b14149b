"""The `runner` command. Each subcommand turns its input into a BuildRequest or a query and
hands it on; no build logic lives here.

Exit codes: 0 success, 1 build failed (or cancelled / timed out), 2 invalid input (nothing
queued), 3 infrastructure unreachable.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, NoReturn

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from runner.config.settings import Settings, SettingsError, load_settings
from runner.core.jobs import JobReader, JobRecord, Status
from runner.store.jobstore import ContextTooLarge, JobStore, StoreUnavailable

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INFRA = 0, 1, 2, 3

app = typer.Typer(add_completion=False, no_args_is_help=True, help="CI build runner: build and push container images.")
config_app = typer.Typer(help="Inspect the configuration.")
app.add_typer(config_app, name="config")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def settings() -> Settings:
    try:
        return load_settings()
    except (SettingsError, ValidationError) as exc:
        fail(f"invalid configuration: {exc}", EXIT_INVALID)


def store_for(cfg: Settings) -> JobStore:
    store = JobStore.from_settings(cfg)
    try:
        store.ping()
    except StoreUnavailable as exc:
        fail(str(exc), EXIT_INFRA)
    return store


ApiOption = Annotated[str | None, typer.Option(
    "--api", envvar="RUNNER_API_URL", help="use the runner HTTP API at URL instead of Redis (token: env RUNNER_API_TOKEN or api.token)")]


def remote(api: str | None, cfg: Settings):
    """The HTTP API client when --api / RUNNER_API_URL / api.url is set, else None (use Redis)."""
    from runner.entry.api_client import client_for

    return client_for(api, cfg, fail)


def backend(api: str | None) -> JobReader:
    """The job store, or the API client: both are JobReaders."""
    cfg = settings()
    return remote(api, cfg) or store_for(cfg)


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


class Mode(str, Enum):
    detach = "detach"
    wait = "wait"
    follow = "follow"


@app.command()
def submit(
    directory: Annotated[Path, typer.Argument(help="build context directory")] = Path("."),
    tag: Annotated[list[str], typer.Option("-t", "--tag", help="full image reference; repeat for more")] = [],  # noqa: B006
    file: Annotated[str, typer.Option("-f", "--file", help="Dockerfile path inside the context")] = "Dockerfile",
    build_arg: Annotated[list[str], typer.Option("--build-arg", help="KEY=VALUE")] = [],  # noqa: B006
    secret_build_arg: Annotated[list[str], typer.Option(
        "--secret-build-arg", help="NAME (value from env var NAME), NAME=env:VAR or NAME=file:PATH; masked everywhere, "
        "never on the command line")] = [],  # noqa: B006
    secret: Annotated[list[str], typer.Option("--secret", help="id=NAME of a build secret from config")] = [],  # noqa: B006
    target: Annotated[str | None, typer.Option(help="build stage to stop at")] = None,
    label: Annotated[list[str], typer.Option("--label", help="KEY=VALUE image label")] = [],  # noqa: B006
    executor: Annotated[str | None, typer.Option(help="executor name (config default if omitted)")] = None,
    builder: Annotated[str | None, typer.Option(help="auto | buildkit | classic (engine executors)")] = None,
    platform: Annotated[str | None, typer.Option(help="target platform, e.g. linux/amd64")] = None,
    push: Annotated[bool, typer.Option("--push/--no-push")] = True,
    no_cache: Annotated[bool, typer.Option("--no-cache")] = False,
    timeout: Annotated[int | None, typer.Option(help="seconds")] = None,
    detach: Annotated[bool, typer.Option("--detach", help="print the job id and return")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="wait for the result (default)")] = False,
    follow: Annotated[bool, typer.Option("--follow", help="stream the build log live")] = False,
    job_id: Annotated[str | None, typer.Option("--id", help="job id (default: random)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the final job record as JSON")] = False,
    api: ApiOption = None,
) -> None:
    """Upload DIRECTORY as the build context and queue a build."""
    from runner.core.errors import InvalidJob
    from runner.entry.submission import submit as submit_job
    from runner.sources.pack import write_tar
    from runner.worker.admission import Rejected, admit, parse_request

    if sum((detach, wait, follow)) > 1:
        fail("choose one of --detach, --wait, --follow", EXIT_INVALID)
    mode = Mode.detach if detach else Mode.follow if follow else Mode.wait
    cfg = settings()
    args = pairs(build_arg, "--build-arg")
    secret_args = secret_values(secret_build_arg)
    payload = {
        "dockerfile": file, "tags": tag, "build_args": {**args, **secret_args},
        "secret_build_args": list(secret_args), "secrets": [s.removeprefix("id=") for s in secret],
        "target": target, "labels": pairs(label, "--label"), "executor": executor, "builder": builder,
        "platform": platform, "push": push, "no_cache": no_cache, "timeout": timeout,
    }
    if job_id:
        payload["id"] = job_id
    client = remote(api, cfg)
    if client is not None:
        queued_id, created = client.submit_directory(directory, payload)
        return after_submit(client, client.get(queued_id), created, mode, as_json)
    try:
        request = parse_request(payload)
        executor_name = admit(request, cfg)
    except Rejected as exc:
        fail(f"invalid job: {exc}", EXIT_INVALID)
    store = store_for(cfg)
    owner = f"cli:{socket.gethostname()}:{os.getpid()}"
    claim = store.reserve(request.id, owner)  # before any upload: a used id never gets a new context
    if claim == "exists":
        existing = store.get(request.id)
        assert existing is not None
        return after_submit(store, existing, False, mode, as_json)
    if claim == "busy":
        fail(f"job {request.id} is being submitted by another client right now; choose another --id", EXIT_INVALID)
    writer = store.context_writer(request.id, cfg.limits.max_context_bytes)
    try:
        write_tar(directory, writer, request.dockerfile)
        writer.close()
    except (ContextTooLarge, InvalidJob) as exc:
        writer.abort()
        store.release(request.id, owner)
        fail(str(exc), EXIT_INVALID)
    except OSError as exc:
        writer.abort()
        store.release(request.id, owner)
        fail(f"cannot read the build context: {exc}", EXIT_INVALID)
    try:
        record, created = submit_job(request, cfg, store, executor=executor_name)
    except Rejected as exc:
        store.delete_context(request.id)
        store.release(request.id, owner)
        fail(f"invalid job: {exc}", EXIT_INVALID)
    except Exception as exc:  # noqa: BLE001 - a broker failure is infrastructure
        store.delete_context(request.id)
        store.release(request.id, owner)
        fail(f"could not queue the job: {exc}", EXIT_INFRA)
    after_submit(store, record, created, mode, as_json)


def after_submit(store, record: JobRecord, created: bool, mode: Mode, as_json: bool) -> None:
    """Detach, follow or wait: the same for a job queued through Redis or through the API."""
    if not created:
        err.print(f"job {record.id} already exists ({record.status.value}); nothing queued")
    if mode is Mode.detach:
        print(json.dumps(record.model_dump(mode="json")) if as_json else record.id)
        return
    if not as_json:
        err.print(f"job [bold]{record.id}[/] queued on {record.queue}", highlight=False)
    if mode is Mode.follow:
        for line in store.read_log(record.id, follow=True):
            print(line, flush=True)
    final = wait_for(store, record.id)
    report(final, as_json)


def wait_for(store: JobStore, job_id: str, poll: float = 0.05) -> JobRecord:
    while True:
        record = store.get(job_id)
        if record is None:
            fail(f"job {job_id} disappeared from the store", EXIT_INFRA)
        if record.finished:
            return record
        time.sleep(poll)


def report(record: JobRecord, as_json: bool) -> NoReturn:
    if as_json:
        print(json.dumps(record.model_dump(mode="json"), indent=2))
    elif record.status is Status.succeeded:
        for image in record.images:
            print(f"{image.ref}@{image.digest}")
    else:
        message = record.error.message if record.error else ""
        err.print(f"[bold red]{record.status.value}[/]: {message}", highlight=False)
    if record.status is Status.succeeded:
        raise typer.Exit(EXIT_OK)
    raise typer.Exit(EXIT_INFRA if record.error and record.error.kind == "infrastructure" else EXIT_FAILED)


@app.command()
def status(job_id: str, as_json: Annotated[bool, typer.Option("--json")] = False, api: ApiOption = None) -> None:
    """Show a job's record."""
    record = backend(api).get(job_id)
    if record is None:
        fail(f"no job {job_id!r}", EXIT_INVALID)
    if as_json:
        print(json.dumps(record.model_dump(mode="json"), indent=2))
        return
    out.print(f"[bold]{record.id}[/] {record.status.value} executor={record.executor} attempts={record.attempts}", highlight=False)
    for image in record.images:
        out.print(f"  {image.ref}@{image.digest}", highlight=False)
    if record.error:
        out.print(f"  error ({record.error.kind}): {record.error.message}", highlight=False)


@app.command()
def logs(job_id: str, follow: Annotated[bool, typer.Option("--follow", "-f")] = False, api: ApiOption = None) -> None:
    """Print a job's log from the start; with --follow, keep printing until it ends."""
    store = backend(api)
    if store.get(job_id) is None:
        fail(f"no job {job_id!r}", EXIT_INVALID)
    for line in store.read_log(job_id, follow=follow):
        print(line, flush=True)


@app.command("list")
def list_jobs(
    status_filter: Annotated[Status | None, typer.Option("--status")] = None,
    limit: Annotated[int, typer.Option()] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    api: ApiOption = None,
) -> None:
    """List recent jobs, newest first."""
    records = backend(api).list(status_filter, limit)
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
        return
    for r in records:
        print(f"{r.id}  {r.status.value:<9}  {r.executor:<8}  {r.created_at:%Y-%m-%d %H:%M:%S}  {', '.join(r.request.tags)}")


@app.command()
def cancel(job_id: str, api: ApiOption = None) -> None:
    """Cancel a job: a queued job never starts; a running one is stopped and cleaned up."""
    from runner.entry.api_client import ApiClient
    from runner.entry.control import cancel_job

    store = backend(api)
    record = store.cancel(job_id) if isinstance(store, ApiClient) else cancel_job(store, job_id)
    if record is None:
        fail(f"no job {job_id!r}", EXIT_INVALID)
    print(f"{job_id} {record.status.value if record.finished else 'cancelling'}")


@app.command()
def worker(
    queues: Annotated[str | None, typer.Option(help="comma-separated queues (default: one per enabled executor)")] = None,
    concurrency: Annotated[int | None, typer.Option(help="builds at once (default: worker.concurrency)")] = None,
    loglevel: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Run a worker: take jobs from the queues and build them."""
    from runner.worker.lifecycle import run_worker

    run_worker(settings(), queues.split(",") if queues else None, concurrency, loglevel)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="listen address (default: api.host)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: api.port)")] = None,
) -> None:
    """Serve the HTTP API (/v1/jobs) and the git-push webhooks (/v1/webhooks/github|gitlab|gitea)."""
    from runner.entry.api import serve as run_server

    run_server(settings(), host, port)


@app.command()
def doctor() -> None:
    """Check Redis, the engine, registries and every executor; one line each.

    Exits 1 if Redis or an enabled executor cannot work; other failures are shown, not fatal."""
    from runner.entry.doctor import run_checks

    ok = True
    for check in run_checks(settings()):
        mark = "[green]ok[/]  " if check.ok else "[red]FAIL[/]" if check.required or check.shown else "[dim]off[/] "
        out.print(f"{mark} {check.name}: {check.summary}", highlight=False)
        ok = ok and (check.ok or not check.required)
    raise typer.Exit(EXIT_OK if ok else EXIT_FAILED)


@config_app.command("show")
def config_show() -> None:
    """Print the effective configuration with secrets redacted."""
    print(yaml.safe_dump(settings().model_dump(mode="json"), sort_keys=False), end="")


@config_app.command("example")
def config_example() -> None:
    """Print an example config with every option, its default and its meaning."""
    from runner.config.example import render_example

    print(render_example(), end="")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


"""What every `runner` command shares: its exit codes, what it tells the user (stdout for ids,
digests and JSON; stderr for the rest, styled on a terminal), and how it reaches the settings,
the job store or the HTTP API. Standard library only at import (see runner.entry.cli)."""

from __future__ import annotations

import argparse
import json
import os
import sys

#: `typing` costs ~2 ms of every command and the light path needs none of it at run time; the
#: checker treats a constant named TYPE_CHECKING as typing's own
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

    from runner.config.client_plain import PlainClientSettings
    from runner.config.settings import Settings
    from runner.core.jobs import JobRecord
    from runner.core.jobview import JobReader, JobView
    from runner.store.jobstore import JobStore

#: 0 success, 1 build failed (or cancelled / timed out), 2 invalid input (nothing queued), 3 infrastructure unreachable
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


def as_view(record: JobRecord) -> JobView:
    from runner.core.jobview import JobView

    return JobView(record.model_dump(mode="json"))

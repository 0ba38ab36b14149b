"""Docker credential helpers (`docker-credential-NAME`, the docker/docker-credential-helpers
protocol): `get` reads the server URL on stdin and answers `{"ServerURL", "Username",
"Secret"}` on stdout (Username `<token>`: Secret is an identity token); `list` answers
`{server URL: username}`. A helper that has nothing for the server prints
`credentials not found in native keychain` and exits non-zero: no credentials, not a failure.

The secret never travels in argv; what a helper prints (stdout or stderr) is never put in
an error or a log line, since a failing helper may well print a token. A helper that does
not answer in time is killed with its whole process group."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field

from runner.core.errors import InfrastructureError
from runner.core.process import kill_group

PREFIX = "docker-credential-"
NOT_FOUND = "credentials not found in native keychain"
TOKEN_USERNAME = "<token>"
#: more than any real helper prints for one server
MAX_ANSWER = 1024 * 1024


class HelperFailed(InfrastructureError):
    """A helper that is missing, failed, hung or answered nonsense. The message names the
    helper and the registry, never what the helper printed."""


@dataclass(frozen=True)
class HelperAnswer:
    username: str
    secret: str = field(repr=False)
    identity_token: bool = False


def _run(name: str, action: str, stdin: str, timeout: float, registry: str) -> tuple[int, bytes]:
    program = PREFIX + name
    what = f"credential helper {program} ({action}) for registry {registry}"
    try:
        proc = subprocess.Popen([program, action], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, start_new_session=True, env=dict(os.environ))
    except FileNotFoundError:
        raise HelperFailed(f"{what}: {program} is not installed (not on the worker's PATH)") from None
    except OSError as exc:
        raise HelperFailed(f"{what}: cannot run it: {exc.strerror}") from None
    try:
        out, _ = proc.communicate(stdin.encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise HelperFailed(f"{what} did not answer within {timeout:g} s (registry_auth.helper_timeout); "
                           "it was stopped") from None
    return proc.returncode, out[:MAX_ANSWER]


def _kill(proc: subprocess.Popen) -> None:
    kill_group(proc, grace=0.5)
    try:
        proc.communicate(timeout=5)
    except (subprocess.TimeoutExpired, ValueError, OSError):
        pass


def get(name: str, server_url: str, timeout: float, registry: str | None = None) -> HelperAnswer | None:
    """What `docker-credential-NAME get` answers for `server_url`, or None when it has nothing
    for it. Raises HelperFailed (naming the helper and `registry`)."""
    registry = registry or server_url
    code, out = _run(name, "get", server_url, timeout, registry)
    program = PREFIX + name
    if code != 0:
        if out.decode("utf-8", "replace").strip() == NOT_FOUND:
            return None
        raise HelperFailed(f"credential helper {program} failed for registry {registry} (exit status {code}); "
                           "its output is not shown, since it may hold a secret")
    try:
        answer = json.loads(out)
        username, secret = answer["Username"], answer["Secret"]
        if not isinstance(username, str) or not isinstance(secret, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise HelperFailed(f"credential helper {program} answered for registry {registry} with something that is not "
                           '{"Username": ..., "Secret": ...}') from None
    if not secret:
        return None
    if username == TOKEN_USERNAME:
        return HelperAnswer(username="", secret=secret, identity_token=True)
    return HelperAnswer(username=username, secret=secret)


def list_servers(name: str, timeout: float) -> list[str]:
    """The server URLs `docker-credential-NAME list` names. Raises HelperFailed."""
    program = PREFIX + name
    code, out = _run(name, "list", "unused", timeout, "(list)")
    if code != 0:
        raise HelperFailed(f"credential helper {program} failed to list its registries (exit status {code})")
    try:
        answer = json.loads(out)
        if not isinstance(answer, dict):
            raise TypeError
    except (ValueError, TypeError):
        raise HelperFailed(f"credential helper {program} listed its registries as something that is not a JSON object") from None
    return [server for server in answer if isinstance(server, str)]

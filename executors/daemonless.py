"""Shared by the daemonless executors (buildah, img).

- `JobFiles`: one private directory per job (0700) for the files a build tool needs —
  registry auth file, registries.conf, CA directory, build-secret files (each 0600).
  Secrets reach the tool through these files or its environment, never its argv.
- `Tool`: a build-tool binary driven through the `sh` package, its merged output read in
  large chunks and streamed into the job log as whole lines, its whole process group killed
  when the job is cancelled.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import threading
import time
import tomllib
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from pathlib import Path

import sh

from executors.base import CancelToken, InfrastructureError, InvalidJob, LogSink, RegistryAuthFailed, job_secrets
from executors.output_pipe import LineAssembler, read_until_exit
from executors.process import kill_group
from runner.jobs import BuildRequest
from runner.registry import is_loopback
from runner.settings import RegistryConfig, Settings

#: Words in a tool's error that mean the registry refused us (not a build mistake).
AUTH_WORDS = ("unauthorized", "authentication required", "no basic auth credentials",
              "requested access to the resource is denied", "403 (forbidden)", "403 forbidden")
#: Worker environment passed on to build tools; everything else is left out on purpose
#: (a stray BUILDAH_ISOLATION, REGISTRY_AUTH_FILE or DOCKER_CONFIG must not change a build).
KEEP_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "XDG_RUNTIME_DIR",
            "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
#: Names a secret build arg may not take: it travels in the tool's environment, where these
#: names would change how the tool itself runs.
RESERVED_ENV = {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "USER", "SHELL", "PWD", "IFS", "TERM"}
RESERVED_ENV_PREFIXES = ("BUILDAH_", "STORAGE_", "CONTAINERS_", "REGISTRY_", "DOCKER_", "XDG_", "IMG_", "LD_")
SYSTEM_REGISTRIES_CONF = Path("/etc/containers/registries.conf")


# -- per-job private files ---------------------------------------------------------------------
def private_root(settings: Settings, executor: str, job_id: str) -> Path:
    """Where an executor keeps a job's private files; derivable from the job id alone so
    `cleanup(job_id)` finds it after a crash."""
    return settings.worker.workspace / job_id / f".{executor}-private"


class JobFiles:
    """A 0700 directory of 0600 files; `remove()` is idempotent."""

    def __init__(self, root: Path):
        self.root = root

    def create(self) -> JobFiles:
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o700)
        return self

    def write(self, name: str, data: str | bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
        return path

    def directory(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path

    def remove(self, *names: str) -> None:
        """Remove the named entries, or the whole directory when no name is given."""
        for target in [self.root / n for n in names] if names else [self.root]:
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)


# -- registry access ---------------------------------------------------------------------------
def registry_auths(settings: Settings, log: LogSink | None = None) -> dict:
    """The `{"auths": {host: {"auth": b64(user:password)}}}` document that both
    containers-auth.json (buildah) and Docker's config.json (img) use, for every configured
    registry with credentials (base images may come from any of them). A registry whose
    password file cannot be read is left out, with a line in `log` (without one: an error)."""
    auths = {}
    for registry in settings.registries:
        try:
            secret = registry.secret()
        except ValueError as exc:
            if log is None:
                raise InfrastructureError(str(exc)) from None
            log.line(f"[runner] warning: {exc}; pulling from or pushing to {registry.host} will fail")
            continue
        if registry.username and secret is not None:
            token = base64.b64encode(f"{registry.username}:{secret}".encode()).decode()
            auths[registry.host] = {"auth": token}
    return {"auths": auths}


def plain_http(registry: RegistryConfig) -> bool:
    return registry.insecure or is_loopback(registry.host)


@lru_cache(maxsize=1)
def _system_search_settings() -> str:
    """Short-name settings copied from the system registries.conf into a per-job one."""
    try:
        data = tomllib.loads(SYSTEM_REGISTRIES_CONF.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return ""
    lines = []
    if isinstance(data.get("unqualified-search-registries"), list):
        lines.append(f"unqualified-search-registries = {json.dumps(data['unqualified-search-registries'])}")
    if isinstance(data.get("short-name-mode"), str):
        lines.append(f"short-name-mode = {json.dumps(data['short-name-mode'])}")
    return "\n".join(lines)


def registries_conf(settings: Settings) -> str | None:
    """A containers-registries.conf marking plain-HTTP registries insecure, or None if no
    configured registry needs it (then the system file applies unchanged)."""
    insecure = [r.host for r in settings.registries if plain_http(r)]
    if not insecure:
        return None
    parts = [_system_search_settings()]
    parts += [f"[[registry]]\nlocation = {json.dumps(host)}\ninsecure = true" for host in insecure]
    return "\n\n".join(p for p in parts if p) + "\n"


def write_cert_dir(settings: Settings, files: JobFiles) -> Path | None:
    """Copy each configured CA into one directory (containers/image trusts a --cert-dir for
    every registry, on top of the system roots)."""
    cas = [r for r in settings.registries if r.ca_file]
    if not cas:
        return None
    certs = files.directory("certs")
    for registry in cas:
        try:
            data = Path(registry.ca_file).read_bytes()
        except OSError as exc:
            raise InfrastructureError(f"registry {registry.host}: cannot read ca_file {registry.ca_file}: {exc.strerror}") from None
        files.write(f"certs/{re.sub(r'[^A-Za-z0-9_.-]', '_', registry.host)}.crt", data)
    return certs


def is_auth_error(message: str) -> bool:
    lower = message.lower()
    return any(word in lower for word in AUTH_WORDS)


def auth_failed(what: str, message: str) -> RegistryAuthFailed:
    """The error for a refused login; `message` is cut to the registry's own words."""
    lower = message.lower()
    start = min((lower.find(word) for word in AUTH_WORDS if word in lower), default=0)
    return RegistryAuthFailed(f"the registry refused our credentials {what}: {message[start:]}. "
                              "Check username and password for that registry under `registries:` in the runner config")


def cache_repo(config_repo: str | None, job: BuildRequest) -> str | None:
    """The registry cache repository: the configured one, or a per-cache-key one under it."""
    if not config_repo:
        return None
    return f"{config_repo}/{job.cache_key.lower()}" if job.cache_key else config_repo


# -- secrets -----------------------------------------------------------------------------------
def write_build_secrets(settings: Settings, job: BuildRequest, files: JobFiles, log: LogSink) -> list[tuple[str, Path]]:
    """Each build secret the job names, in its own 0600 file; the values are masked in the log."""
    add_secret = getattr(log, "add_secret", None)
    written = []
    for index, (secret_id, value) in enumerate(job_secrets(settings, job).items()):
        if add_secret is not None:
            add_secret(value.decode())
        written.append((secret_id, files.write(f"secrets/{index}", value)))
    return written


def secret_arg_env(job: BuildRequest) -> dict[str, str]:
    """Secret build-arg values for the tool's environment (`--build-arg NAME` reads them)."""
    env = {}
    for name in job.secret_build_args:
        if name in RESERVED_ENV or name.upper().startswith(RESERVED_ENV_PREFIXES):
            raise InvalidJob(f"secret build arg {name!r} would travel in the build tool's environment, where that name "
                             "changes how the tool runs; rename the build arg")
        env[name] = job.build_args[name]
    return env


def tool_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {name: os.environ[name] for name in KEEP_ENV if name in os.environ}
    env.setdefault("PATH", os.defpath)
    env.update(extra or {})
    return env


# -- running the tool --------------------------------------------------------------------------
class ToolFailed(Exception):
    def __init__(self, message: str, output: str = ""):
        super().__init__(message)
        self.message, self.output = message, output


class ToolOutput:
    """Receives a tool's output as whole lines, as they come, and appends them to the job log.

    Lines that arrive together are appended together (one log write), so a burst of output
    costs one store round trip, not one per line. Subclasses look at (or drop) lines in
    `handle`; naming in `MARKED` the prefixes of the lines it cares about spares a batch with
    none of them (a RUN step printing a million lines) a Python call per line. `lines` keeps
    the last few for error messages.
    """

    KEEP = 50
    #: prefixes of every line `handle` looks at; a batch with no line starting with one of
    #: them goes to the log as it is (None: `handle` sees every line)
    MARKED: tuple[str, ...] | None = None

    def __init__(self, log: LogSink):
        self.log = log
        self.lines: deque[str] = deque(maxlen=self.KEEP)

    def handle(self, text: str) -> str | None:
        """The line to log (possibly rewritten), or None to drop it."""
        return text

    def __call__(self, batch: list[str]) -> None:
        if self.MARKED is not None:
            text = "\n".join(batch)
            if not any(text.startswith(m) or f"\n{m}" in text for m in self.MARKED):
                self._append(batch, text)
                return
        kept = [out for line in batch if (out := self.handle(line)) is not None]
        self._append(kept, "\n".join(kept))

    def _append(self, lines: list[str], text: str) -> None:
        if lines:
            self.lines.extend(lines[-self.KEEP:])
            self.log.write(text + "\n")

    def last_error(self, prefix: str) -> str | None:
        return next((t.removeprefix(prefix) for t in reversed(self.lines) if t.startswith(prefix)), None)


class _Group:
    """What executors.process.kill_group needs (pid, wait with timeout) for an `sh` process."""

    def __init__(self, running):
        self.running = running
        self.pid = running.pid

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.running.process.is_alive()[0]:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.02)


class _ExitWatch:
    """Waits for an `sh` process on a thread of its own; `fd` turns readable once it has
    ended, which is how the output reader knows to stop even while the pipe stays open."""

    def __init__(self, running):
        self.running = running
        self.fd, self._signal = os.pipe()
        self._thread = threading.Thread(target=self._wait, name=f"exit of pid {running.pid}", daemon=True)
        self._thread.start()

    def _wait(self) -> None:
        try:
            self.running.wait()
        except sh.ErrorReturnCode:  # killed by a signal: exit_code is negative
            pass
        finally:
            os.write(self._signal, b"x")

    def exit_code(self) -> int:
        """Join the waiting thread; the exit code (negative: the signal that killed it)."""
        self._thread.join()
        os.close(self.fd)
        os.close(self._signal)
        code = self.running.process.exit_code
        return code if code is not None else -1


class Tool:
    """A build-tool binary with fixed leading (global) arguments, run through `sh`."""

    def __init__(self, binary: str, global_args: Iterable[str] = (), env: Mapping[str, str] | None = None,
                 install_hint: str = ""):
        self.binary = binary
        try:
            self.command = sh.Command(binary).bake(*global_args)
        except sh.CommandNotFound:
            raise InfrastructureError(f"{binary} is not installed or not on PATH{install_hint}") from None
        self.env = dict(env) if env is not None else tool_env()

    def stream(self, args: Iterable[str], output: Callable[[list[str]], None], cancel: CancelToken,
               env: Mapping[str, str] | None = None, cwd: Path | None = None) -> int:
        """Run with merged stdout/stderr handed to `output` as whole lines, as they come
        (a ToolOutput); return the exit code.

        sh starts the tool in its own session with a pipe's write end as stdout and stderr;
        we read the other end in large chunks (executors.output_pipe). Once the tool has
        exited, reading stops after what the pipe holds, and if something it started still
        holds the pipe, the rest of its process group is killed. A cancel (or timeout)
        SIGTERMs the whole group, then SIGKILLs what is left. Raises Cancelled if the token fired.
        """
        cancel.raise_if_set()
        read_end, write_end = os.pipe()
        try:
            running = self.command(
                *args, _bg=True, _bg_exc=False, _out=write_end, _err_to_out=True, _in="", _new_session=True,
                _env={**self.env, **(env or {})}, _cwd=str(cwd) if cwd else None, _ok_code=list(range(256)),
            )
        except OSError as exc:
            os.close(read_end)
            raise InfrastructureError(f"cannot start {self.binary}: {exc.strerror}") from None
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)  # the tool holds its own copy; EOF comes when it (and its children) close theirs
        group, exited = _Group(running), _ExitWatch(running)
        unregister = cancel.on_cancel(lambda: kill_group(group))
        lines = LineAssembler(output)
        try:
            if not read_until_exit(read_end, exited.fd, lines.feed):
                kill_group(group)  # the tool has exited; what it left behind still holds the pipe
            lines.close()
        except BaseException:
            kill_group(group)  # `output` failed: the tool must not outlive us
            raise
        finally:
            code = exited.exit_code()  # a tool that closed its output early may still run: cancel still reaches it
            unregister()
            os.close(read_end)
        cancel.raise_if_set()
        return code

    def output(self, args: Iterable[str], timeout: float = 60, env: Mapping[str, str] | None = None) -> str:
        """Run a short command; return its stdout or raise ToolFailed with its stderr."""
        try:
            result = self.command(*args, _tty_out=False, _in="", _env={**self.env, **(env or {})}, _timeout=timeout,
                                  _decode_errors="replace")
        except sh.TimeoutException:
            raise ToolFailed(f"{self.binary} {' '.join(args)} did not finish in {timeout:.0f}s") from None
        except sh.ErrorReturnCode as exc:
            text = exc.stderr.decode("utf-8", "replace").strip()
            lines = text.splitlines() or [f"{self.binary} exited with {exc.exit_code}"]
            raise ToolFailed(next((t for t in reversed(lines) if t.startswith("Error: ")), lines[-1]), text) from None
        except OSError as exc:
            raise ToolFailed(f"cannot start {self.binary}: {exc.strerror}") from None
        return str(result)

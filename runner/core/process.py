"""The one process runner of the project: a binary driven through the `sh` package, its
merged output read in large chunks (runner.core.output_pipe) and handed on as whole lines, its
whole process group killed when the job is cancelled or times out. Build tools (buildah, img)
and git run through it. Secrets reach a tool through files or its environment, never argv."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import sh

from runner.core.cancel import CancelToken
from runner.core.errors import InfrastructureError
from runner.core.log_sink import LogSink
from runner.core.output_pipe import LineAssembler, read_until_exit

#: Worker environment passed on to build tools; everything else is left out on purpose
#: (a stray BUILDAH_ISOLATION, REGISTRY_AUTH_FILE or DOCKER_CONFIG must not change a build).
KEEP_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "XDG_RUNTIME_DIR",
            "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
KILL_GRACE = 2.0


def kill_group(proc: _Group | subprocess.Popen, grace: float = KILL_GRACE) -> None:
    """SIGTERM the process group, then SIGKILL what is left after `grace` seconds."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def tool_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {name: os.environ[name] for name in KEEP_ENV if name in os.environ}
    env.setdefault("PATH", os.defpath)
    env.update(extra or {})
    return env


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
    """What kill_group needs (pid, wait with timeout) for an `sh` process."""

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
        we read the other end in large chunks (runner.core.output_pipe). Once the tool has
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

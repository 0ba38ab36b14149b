"""One job built for several platforms at once (the engine executors: one BuildKit build per
platform). Each build runs on its own thread and writes its log lines with its platform as a
prefix (`[linux/arm64] #5 [2/2] RUN uname -m`); the first build that fails stops the others,
and the job's cancel or timeout stops them all."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from runner.core.cancel import CancelToken
from runner.core.errors import Cancelled, ExecutorError
from runner.core.log_sink import LogSink
from runner.core.platforms import Platform

T = TypeVar("T")
#: one platform's build: (platform, its log, the cancel token it must obey) -> its result
PlatformBuild = Callable[[Platform, LogSink, CancelToken], T]


class PrefixedLog:
    """A LogSink whose lines all start with `[prefix] `; partial lines wait for their end here,
    so the builds' lines never mix within a line of the shared log."""

    def __init__(self, log: LogSink, prefix: str):
        self.log, self.prefix = log, f"[{prefix}] "
        self._partial = ""

    def line(self, text: str) -> None:
        self.log.line(self.prefix + text)

    def write(self, chunk: str) -> None:
        data = self._partial + chunk
        complete, cut, self._partial = data.rpartition("\n")
        if cut:  # an empty line stays empty (BuildKit's progress puts one between steps)
            self.log.write("".join(f"{self.prefix}{text}\n" if text else "\n" for text in complete.split("\n")))

    def flush(self) -> None:
        if self._partial:
            self.line(self._partial)
            self._partial = ""

    def add_secret(self, value: str) -> None:
        self.log.add_secret(value)


def build_each(platforms: list[Platform], build: PlatformBuild[T], log: LogSink, cancel: CancelToken) -> list[T]:
    """Run `build` for every platform at once; their results in the order of `platforms`.
    Raises the job's Cancelled when the job was cancelled, else the first platform's failure
    (in the order given: not the "stopped" of the builds it stopped), its message ending
    `(for linux/arm64)`."""
    siblings = CancelToken()
    unregister = cancel.on_cancel(lambda: siblings.set(cancel.reason or "cancelled"))
    failures: dict[Platform, BaseException] = {}

    def one(platform: Platform) -> T | None:
        prefixed = PrefixedLog(log, str(platform))
        try:
            return build(platform, prefixed, siblings)
        except BaseException as exc:  # noqa: BLE001 - every failure is handed back below
            if not isinstance(exc, Cancelled) or not siblings.is_set():
                failures[platform] = exc
                siblings.set(f"the {platform} build failed")
            return None
        finally:
            prefixed.flush()

    try:
        with ThreadPoolExecutor(len(platforms), thread_name_prefix="platform-build") as pool:
            results = list(pool.map(one, platforms))
    finally:
        unregister()
    cancel.raise_if_set()
    for platform in platforms:
        if (failure := failures.get(platform)) is not None:
            if isinstance(failure, ExecutorError) and not failure.message.endswith(f" (for {platform})"):
                failure.message = f"{failure.message} (for {platform})"
            raise failure
    return [result for result in results if result is not None]

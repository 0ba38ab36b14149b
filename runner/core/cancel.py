"""The cancel token: how the pipeline tells a running build (and anything it waits on) to stop."""

from __future__ import annotations

import threading
from collections.abc import Callable

from runner.core.errors import Cancelled


class CancelToken:
    """Set by the pipeline when the job is cancelled or times out.

    Executors either poll `is_set()` between steps or register `on_cancel(callback)` to kill
    their processes / builds at once. Callbacks run once, on the thread that sets the token.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self.reason: str | None = None

    def set(self, reason: str = "cancelled") -> None:
        with self._lock:
            if self._event.is_set():
                return
            self.reason = reason
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # noqa: BLE001 - one failing kill must not stop the others
                pass

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Register a callback; returns a function that unregisters it."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)

                def remove() -> None:
                    with self._lock:
                        if callback in self._callbacks:
                            self._callbacks.remove(callback)

                return remove
        callback()
        return lambda: None

    def raise_if_set(self) -> None:
        if self._event.is_set():
            raise Cancelled(self.reason or "cancelled")

"""`runner drain`: the Kubernetes preStop hook of a worker pod. It asks the worker on this host
to drain (POST /drain on its HTTP server, which takes that only from the same host) and waits
until no build runs there, or the worker has exited. The kubelet sends SIGTERM after the hook,
to a worker with nothing left to do; both share terminationGracePeriodSeconds.

Standard library only: it runs in the pod at every scale-in."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable


def drain_and_wait(port: int, timeout: float | None, say: Callable[[str], None], every: float = 1.0) -> bool:
    """True when the worker has drained (or exited, or was never there); False on `timeout`."""
    base = f"http://127.0.0.1:{port}"
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{base}/drain", method="POST", data=b""), timeout=5):
            pass
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"the worker on port {port} refused POST /drain: HTTP {exc.code}") from None
    except OSError:
        say(f"no worker answers on {base}: nothing to drain")
        return True
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        state = readiness(base)
        if state is None:
            say("the worker has exited")
            return True
        if state.get("drained"):
            say("drained: no build running")
            return True
        if deadline is not None and time.monotonic() >= deadline:
            say(f"still {state.get('running')} build(s) running after {timeout:g}s")
            return False
        time.sleep(every)


def readiness(base: str) -> dict | None:
    """The worker's /readyz answer, or None when nothing answers (it exited)."""
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:  # 503 while draining: the body says how far
        return json.loads(exc.read() or b"{}")
    except OSError:
        return None

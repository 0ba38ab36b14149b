"""buildah in the contract suite: its own storage root (layer cache) for the test worker,
not shared with other tests or with a real runner on this host."""

import shutil

from tests.support import ExecutorSupport

STORAGE = "/var/tmp/runner-test-buildah"


def config(env: dict) -> dict:
    return {"enabled": True, "storage_root": f"{STORAGE}/root", "run_root": f"{STORAGE}/run"}


def skip_reason() -> str | None:
    return None if shutil.which("buildah") else "buildah is not installed (scripts/services.sh installs it)"


SUPPORT = ExecutorSupport(name="buildah", config=config, skip_reason=skip_reason)

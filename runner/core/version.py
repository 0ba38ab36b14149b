"""The runner's version, as installed (`runner --version`, runner_build_info{version}, the builder
version a build's provenance names)."""

from __future__ import annotations

DISTRIBUTION = "ci-build-runner"


def runner_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"

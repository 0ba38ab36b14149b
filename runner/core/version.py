"""The runner's own version, as installed: what `runner_build_info` exports and what a
build's provenance names as its builder's version."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "ci-build-runner"


def runner_version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"

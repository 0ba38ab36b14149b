"""The fast tier: the tests that need no Docker Engine, registry or buildah, run by
`bash scripts/test.sh --fast` (pytest --fast) in about a minute. The full suite (`.ci/run`)
runs every test, these included, so no test can drop out of both.

A test is in the fast tier when
  - its module is listed in FAST_MODULES below (chosen by hand: what each module needs was read,
    not guessed), and
  - it does not use the `services` fixture (scripts/services.sh: Docker, the registry, buildah,
    and every fixture built on it: harness, make_harness, stacks...), and
  - it is not marked `slow`.
Everything else in a listed module runs in the full suite only. Redis is the one service of the
fast tier: tests that need only Redis take `redis_url` or `new_store` (conftest), which is a
throwaway redis-server of the session's own in the fast tier and the shared one in a full run.

The fast tier also makes the Docker Engine unreachable (DOCKER_HOST names no socket), so a
listed test cannot quietly use Docker where it happens to run: a test that compares with
Docker where one is there (the dockerignore oracle) checks our side only, and the full run
compares. `pytest --collect-only -q -m fast` lists the tier; `-m "not fast"` the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

#: the modules whose tests without the `services` fixture need only Python (and Redis)
FAST_MODULES = frozenset({
    # the pipeline's paths on the fake executor, job states, cancel, leases
    "tests/test_pipeline.py",
    # the job's state machine and its one end (JobStore.end) against Redis
    "tests/test_jobstate.py",
    # requests and admission
    "tests/test_jobs.py",
    "tests/test_platforms.py",
    "tests/test_fuzz_jobs.py",
    "tests/test_source_binding.py",
    "tests/test_plain_submit.py",
    # config
    "tests/test_config_files.py",
    "tests/test_plugin_executor.py",
    "tests/test_registry_cache.py",
    # .dockerignore and build contexts
    "tests/test_dockerignore.py",
    "tests/test_dockerignore_oracle.py",
    "tests/test_copy_filter.py",
    "tests/test_context.py",
    "tests/test_context_view.py",
    "tests/test_buildah_setid.py",
    # tar policy: extraction and the context reader against hostile input
    "tests/hostile/test_context_extract.py",
    "tests/hostile/test_context_reader.py",
    "tests/hostile/test_tool_output.py",
    # webhooks: payload parsing, templates and patterns
    "tests/test_webhooks.py",
    # commit statuses and callbacks: the outbox, retries and order against Redis; signatures
    "tests/test_statuses.py",
    "tests/test_callbacks.py",
    # the job store on Redis: logs, context chunks, log followers
    "tests/test_joblog.py",
    "tests/test_start_gate.py",
    "tests/test_context_chunks.py",
    "tests/hostile/test_api_logfollow.py",
    # BuildKit's progress stream decoded from recorded traces
    "tests/test_buildkit_progress.py",
    # the CLI's config, version, variables and doctor; Redis over TLS with an ACL user (own servers)
    "tests/test_ops_cli.py",
    "tests/test_api_url.py",
    "tests/test_redis_ha.py",
    # the CLI's parser (each command's built when chosen), the light path's plain records, the config file read without PyYAML
    "tests/test_cli_parser.py",
    "tests/test_light_records.py",
    "tests/test_plain_yaml.py",
    # registry logins: docker config files, credential helpers (a helper script of the tests'), their order
    "tests/test_registry_auth.py",
    # signing: the Dockerfile's base images, cosign's formats and test data, statements, keys
    "tests/test_dockerfile_bases.py",
    "tests/test_signing.py",
})

#: modules that run alone, after the rest (which runs two modules at a time, scripts/test.sh):
#: load tests, whose point is how the API copes with many clients at once. Another module's
#: builds beside them would measure the machine, not the API. Marked `serial` by the conftest.
SERIAL_MODULES = frozenset({
    "tests/hostile/test_api_logfollow.py",
    "tests/hostile/test_api_load.py",
})

#: fixtures that bring Docker, the registry or buildah: a test using one is full-tier only
SERVICE_FIXTURES = frozenset({"services"})
#: where DOCKER_HOST points in the fast tier
NO_DOCKER = "unix:///nonexistent/the-fast-tier-has-no-docker.sock"


def module_name(path: Path, root: Path) -> str:
    """How FAST_MODULES names the test module at `path`."""
    return path.resolve().relative_to(root.resolve()).as_posix()


def is_fast(item: pytest.Item) -> bool:
    module = module_name(item.path, item.config.rootpath)
    return (module in FAST_MODULES and not SERVICE_FIXTURES & set(getattr(item, "fixturenames", ()))
            and item.get_closest_marker("slow") is None)


def is_serial(item: pytest.Item) -> bool:
    return module_name(item.path, item.config.rootpath) in SERIAL_MODULES

"""`cache_repo`, the registry build cache shared by all workers: which repository a job's cache
goes to (executors/registry_cache.py), and the config check of the template. The caches
themselves are exercised end to end in tests/test_dind.py (BuildKit on a new engine),
tests/test_buildah.py (an empty store) and bench/bench_cache.py."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from executors.daemonless.config import BuildahConfig, ImgConfig
from executors.dind.config import DindConfig, SysboxConfig
from executors.engine.config import SocketConfig
from executors.registry_cache import cache_repository, inline_cache_ref
from runner.core.jobs import BuildRequest


def job(*tags: str, cache_key: str | None = None) -> BuildRequest:
    return BuildRequest(tags=list(tags), cache_key=cache_key)


@pytest.mark.parametrize(("template", "request_", "expected"), [
    (None, job("reg:5000/team/app:1"), None),
    ("{registry}/cache/{repo}", job("reg:5000/team/app:1", "other.example/x:2"), "reg:5000/cache/team/app"),
    ("{registry}/cache/{repo}", job("reg:5000/team/web:1"), "reg:5000/cache/team/web"),  # another repository: its own
    ("cache.example/ci/{cache_key}", job("reg:5000/app:1", cache_key="Feature_X..Y-"), "cache.example/ci/feature_x-y"),
    ("cache.example/ci/{cache_key}", job("reg:5000/app:1"), None),  # no cache_key: no shared cache by accident
    ("cache.example/ci", job("reg:5000/app:1"), "cache.example/ci"),  # a plain name: as given
    ("cache.example/ci", job("reg:5000/app:1", cache_key="Main"), "cache.example/ci/main"),  # ... per cache_key
])
def test_the_cache_repository_comes_from_the_template_and_the_job(template, request_, expected):
    assert cache_repository(template, request_) == expected


def test_engines_keep_the_inline_cache_under_one_tag_of_the_repository():
    assert str(inline_cache_ref("reg:5000/cache/team/app")) == "reg:5000/cache/team/app:buildcache"


@pytest.mark.parametrize("config", [SocketConfig, DindConfig, SysboxConfig, BuildahConfig, ImgConfig])
def test_every_executor_with_a_cache_checks_the_template(config):
    assert config(cache_repo="{registry}/cache/{repo}").cache_repo == "{registry}/cache/{repo}"
    for bad, words in (("{registry}/cache/{project}", "unknown placeholder(s) {project}"),
                       ("{registry}", "does not name a repository"),
                       ("reg:5000/cache:latest", "without a tag"),
                       ("{registry/cache", "not a valid template")):
        with pytest.raises(ValidationError, match=words.replace("(", r"\(").replace(")", r"\)")):
            config(cache_repo=bad)

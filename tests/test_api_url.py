"""A bad API URL (RUNNER_API_URL, --api, api.url) is refused before any request with exit 2
and a message naming what is wrong, never a traceback from the socket module; a user and
password written into the URL never appear in a message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = str(Path(sys.executable).with_name("runner"))
SECRET = "sekret-in-the-url"


def status_via(url: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RUNNER_API_URL": url, "RUNNER_API_TOKEN": "t", "HOME": str(tmp_path)}
    env.pop("RUNNER_CONFIG", None)
    return subprocess.run([RUNNER, "status", "some-job"], env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("url, says", [
    ("http://a..b", "has an invalid host name 'a..b'"),
    ("http://" + "a" * 64 + ".example", "has an invalid host name"),
    ("http://127.0.0.1:99999", "has an invalid port"),
    ("http://127.0.0.1:port", "has an invalid port"),
    ("ftp://127.0.0.1", "is not an http:// or https:// URL"),
    (f"http://me:{SECRET}@a..b", "has an invalid host name 'a..b'"),
], ids=["empty-label", "long-label", "port-out-of-range", "port-not-a-number", "not-http", "with-a-password"])
def test_a_bad_api_url_is_refused_saying_why(url, says, tmp_path):
    result = status_via(url, tmp_path)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr
    assert SECRET not in result.stderr + result.stdout


def test_an_unreachable_api_is_exit_3_without_the_urls_password(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        result = status_via(f"http://me:{SECRET}@127.0.0.1:{s.getsockname()[1]}", tmp_path)
    assert result.returncode == 3, result.stderr
    assert "is unreachable" in result.stderr and SECRET not in result.stderr

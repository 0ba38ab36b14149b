"""What a registry login costs a job, by where it comes from (runner/core/registry_auth.py): a
password in the config (the baseline), a password_file, a Docker config file unchanged (a stat,
no parse) or rewritten before every lookup (a rotated secret: parsed again), and a credential
helper whose answer is kept (cache_seconds) or asked for at every lookup (cache_seconds 0: a
process per lookup; a real cloud helper adds its own network round trip on top). The helper
is the tests' own script (tests/support/credentials.py), a Python process like many real ones
are not: Go helpers start faster, so the "asked" row is an upper bound for the process cost.

Run:  .venv/bin/python bench/bench_credentials.py [--n 200]
Needs nothing but Python. Prints a table. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runner.core.registry_auth import CredentialResolver  # noqa: E402
from runner.core.registry_config import RegistryAuthConfig, RegistryConfig  # noqa: E402
from tests.support.credentials import TestHelper, basic  # noqa: E402

HOST = "registry.bench.test:5000"


def timed(n: int, call) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        helper = TestHelper(root / "helper")
        helper.answer({HOST: {"Username": "u", "Secret": "bench-secret"}})
        os.environ["PATH"] = helper.path_env()
        password_file = root / "password"
        password_file.write_text("bench-secret\n")
        config = root / "config.json"
        config.write_text(json.dumps({"auths": {f"other{i}.test": {"auth": basic("u", "p")} for i in range(50)} |
                                      {HOST: {"auth": basic("u", "bench-secret")}}}))

        def rewrite_then(resolver: CredentialResolver):
            def call() -> None:
                config.write_text(config.read_text())  # a new version: stat changes, parsed again
                resolver.lookup(HOST)
            return call

        docker_config = RegistryAuthConfig(docker_config=[config])
        cases = [
            ("password in the config (baseline)", CredentialResolver([RegistryConfig(host=HOST, username="u", password="s")]), args.n),
            ("password_file (read each lookup)", CredentialResolver([RegistryConfig(host=HOST, username="u", password_file=password_file)]), args.n),
            ("docker config, unchanged (stat only)", CredentialResolver([], docker_config), args.n),
            ("docker config, rewritten each time (51 auths)", None, args.n),
            ("credential helper, answer kept", CredentialResolver([RegistryConfig(host=HOST, credential_helper="test")]), args.n),
            ("credential helper, asked every lookup", CredentialResolver([RegistryConfig(host=HOST, credential_helper="test")],
                                                                         RegistryAuthConfig(cache_seconds=0)), max(20, args.n // 10)),
        ]
        rows = []
        baseline = None
        for name, resolver, n in cases:
            if resolver is None:
                resolver = CredentialResolver([], docker_config)
                call = rewrite_then(resolver)
            else:
                call = (lambda r: lambda: r.lookup(HOST))(resolver)
            call()  # warm: the first parse, the first helper answer
            times = timed(n, call)
            median = statistics.median(times)
            baseline = baseline or median
            p99 = sorted(times)[max(0, int(len(times) * 0.99) - 1)]
            rows.append((name, n, median, p99, median / baseline))
        print(f"{'source':48} {'n':>5} {'median ms':>10} {'p99 ms':>8} {'x baseline':>11}")
        for name, n, median, p99, ratio in rows:
            print(f"{name:48} {n:5d} {median:10.4f} {p99:8.3f} {ratio:11.1f}")


if __name__ == "__main__":
    main()

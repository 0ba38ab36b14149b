"""CLI start-up (issue 16, item 1): wall time of `runner --help`, `runner status ID` and
`runner list` against the floor `python -c "import pydantic, redis"` measured in the same run
(interleaved, so both see the same load), and `runner submit --wait` of a cached socket job:
the CLI's wall time minus the job's own run time (record started -> finished).
Targets: each command <= 1.3x the floor; submit --wait overhead <= 0.3 s.

Run:  .venv/bin/python bench/bench_cli.py [--n 15] [--submits 10]
Needs the services (scripts/services.sh); starts its own worker in its own namespace.
Prints a table. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import redis
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import BASE, REGISTRY, dev_env, drop_namespace  # noqa: E402

RUNNER = str(Path(sys.executable).with_name("runner"))


def wall(argv: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=15, help="runs of each start-up command")
    parser.add_argument("--submits", type=int, default=10, help="cached `submit --wait` runs")
    args = parser.parse_args()
    dev = dev_env()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        namespace = f"benchcli-{uuid.uuid4().hex[:6]}"
        config = {
            "redis_url": dev["RUNNER_DEV_REDIS_URL"], "default_executor": "socket",
            "registries": [{"host": REGISTRY, "username": dev["RUNNER_DEV_REGISTRY_USER"],
                            "password": dev["RUNNER_DEV_REGISTRY_PASSWORD"]}],
            "executors": {"socket": {"enabled": True}},
            "worker": {"namespace": namespace, "workspace": str(workdir / "work"), "concurrency": 1, "metrics_port": 0},
        }
        (workdir / "runner.yml").write_text(yaml.safe_dump(config))
        env = {**os.environ, "RUNNER_CONFIG": str(workdir / "runner.yml"),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        ctx = workdir / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(f"FROM {BASE}\nCOPY data.txt /data.txt\nRUN cat /data.txt\n")
        (ctx / "data.txt").write_text("cached\n")
        log = (workdir / "worker.log").open("w")
        worker = subprocess.Popen([RUNNER, "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            for _ in range(300):
                if " ready." in (workdir / "worker.log").read_text():
                    break
                time.sleep(0.1)
            submit = [RUNNER, "submit", str(ctx), "-t", f"{REGISTRY}/bench/cli:1", "--json"]
            _, first = wall(submit, env)  # warm the layer cache
            job_id = json.loads(first.stdout)["id"]

            commands = {
                'python -c "import pydantic, redis" (floor)': [sys.executable, "-c", "import pydantic, redis"],
                "runner --help": [RUNNER, "--help"],
                "runner status ID": [RUNNER, "status", job_id],
                "runner list": [RUNNER, "list"],
            }
            times: dict[str, list[float]] = {name: [] for name in commands}
            for _ in range(args.n):  # interleaved: every round runs each command once
                for name, argv in commands.items():
                    elapsed, result = wall(argv, env)
                    if result.returncode:
                        raise SystemExit(f"{name} failed: {result.stderr}")
                    times[name].append(elapsed)

            overheads, walls, runs = [], [], []
            for _ in range(args.submits):
                elapsed, result = wall(submit, env)
                record = json.loads(result.stdout)
                if record["status"] != "succeeded":
                    raise SystemExit(f"submit failed: {record['error']}")
                run = (datetime.fromisoformat(record["finished_at"]) - datetime.fromisoformat(record["started_at"])).total_seconds()
                walls.append(elapsed)
                runs.append(run)
                overheads.append(elapsed - run)
        finally:
            worker.terminate()
            worker.wait(60)
            drop_namespace(redis.Redis.from_url(dev["RUNNER_DEV_REDIS_URL"]), namespace)

    floor = statistics.median(times['python -c "import pydantic, redis" (floor)'])
    print(f"\nCLI start-up, median of {args.n} interleaved runs; load average {os.getloadavg()[0]:.2f}")
    print("| command | median | min | vs floor | target |\n|---|---|---|---|---|")
    for name, values in times.items():
        target = "" if "floor" in name else "<= 1.30x"
        print(f"| `{name}` | {statistics.median(values) * 1000:.0f} ms | {min(values) * 1000:.0f} ms "
              f"| {statistics.median(values) / floor:.2f}x | {target} |")
    print(f"\n`runner submit --wait` of a cached socket job, median of {args.submits}")
    print("| CLI wall | job's own run time | CLI wall minus run time | target |\n|---|---|---|---|")
    print(f"| {statistics.median(walls) * 1000:.0f} ms | {statistics.median(runs) * 1000:.0f} ms "
          f"| {statistics.median(overheads) * 1000:.0f} ms | <= 300 ms |")


if __name__ == "__main__":
    main()

"""Speed a user feels (issue 24): whole-process wall time of the `runner` commands a person
types, each next to the raw tool or the Python floor measured in the same run, in turn (every
round runs each command once, so all see the same load), median of --n.

Rows and targets:
  1. `runner submit --wait` (Redis mode) of a cached job, socket and buildah: CLI wall minus
     `python -c "import redis"` minus the job's own created -> finished time <= 30 ms (beside
     it, socket through the models: the path before the light one). Beside
     it, the raw `DOCKER_BUILDKIT=1 docker build -q -t T . && docker push T` and
     `buildah build -q --layers -t T . && buildah push T` on the same cached context.
  2. `runner submit --wait` through the API (RUNNER_API_URL; no config file): wall <= 1.5x the
     raw docker build && push.
  3. `runner status ID`, `list`, `logs ID`, `cancel ID` (of a job that has ended): Redis mode <= `python -c "import
     redis"` + 30 ms; API mode <= 60 ms (the stdlib floor `python -c "import json, http.client"`
     is shown beside it).

Run:  .venv/bin/python bench/bench_cli.py [--n 7]
Needs the services (scripts/services.sh) and buildah; starts its own worker (socket and
buildah) and `runner serve` in its own namespace. Prints a table. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path

import redis
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import BASE, PASSWORD, REGISTRY, USER, drop_namespace, load_line  # noqa: E402

RUNNER = str(Path(sys.executable).with_name("runner"))
DOCKER = "/usr/bin/docker"  # Debian's docker.io CLI: BuildKit with DOCKER_BUILDKIT=1
STORAGE = Path("/var/tmp/runner-bench-cli-buildah")
TOKEN = "bench-" + uuid.uuid4().hex
FLOOR_REDIS = 'python -c "import redis"'
FLOOR_STDLIB = 'python -c "import json, http.client"'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: command -> CPU seconds (user + system) of each run, the command's own processes only: steadier
#: than wall time on a machine other work loads (the worker's and the server's are not in it)
CPU: dict[str, list[float]] = {}


def wall(argv: list[str], env: dict[str, str], name: str | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """Wall seconds of one run; under `name`, its CPU seconds go to CPU."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if name is not None:
        CPU.setdefault(name, []).append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return elapsed, result


def job_seconds(stdout: str) -> float:
    """The job's own created -> finished time, from the record `submit --wait --json` printed."""
    record = json.loads(stdout)
    if record["status"] != "succeeded":
        raise SystemExit(f"submit failed: {record['error']}")
    return (datetime.fromisoformat(record["finished_at"]) - datetime.fromisoformat(record["created_at"])).total_seconds()


def wait_until(what: str, ready, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.1)
    raise SystemExit(f"{what} did not come up")


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=7, help="rounds (each runs every command once)")
    parser.add_argument("--no-buildah", action="store_true", help="leave out the buildah rows")
    args = parser.parse_args()
    # what an install does (pip compiles every module): with PYTHONDONTWRITEBYTECODE set and an
    # editable install, the runner's modules would be compiled from source on every command
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "runner"), str(ROOT / "executors")],
                   check=True, stdout=subprocess.DEVNULL)
    workdir = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    namespace = f"benchcli-{uuid.uuid4().hex[:6]}"
    executors = {"socket": {"enabled": True}}
    if not args.no_buildah:
        executors["buildah"] = {"enabled": True, "storage_root": str(STORAGE / "root"), "run_root": str(STORAGE / "run")}
    config = {
        "redis_url": "redis://127.0.0.1:6379/0", "default_executor": "socket",
        "registries": [{"host": REGISTRY, "username": USER, "password": PASSWORD}],
        "executors": executors,
        "worker": {"namespace": namespace, "workspace": str(workdir / "work"), "concurrency": 1, "metrics_port": 0},
        "api": {"tokens": [{"name": "bench", "token": TOKEN, "rights": ["submit", "read", "cancel"]}]},
    }
    (workdir / "runner.yml").write_text(yaml.safe_dump(config))
    home = workdir / "home"  # no default config file in the API mode's HOME
    home.mkdir()
    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    env = {**base_env, "RUNNER_CONFIG": str(workdir / "runner.yml")}
    api_env = {**base_env, "HOME": str(home), "RUNNER_API_URL": api_url, "RUNNER_API_TOKEN": TOKEN}
    ctx = workdir / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {BASE}\nCOPY data.txt /data.txt\nRUN cat /data.txt\n")
    (ctx / "data.txt").write_text("cached\n")
    private = workdir / "private"
    private.mkdir(mode=0o700)
    (private / "auth.json").write_text(json.dumps({"auths": {REGISTRY: {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}}))
    (private / "registries.conf").write_text(f'[[registry]]\nlocation = "{REGISTRY}"\ninsecure = true\n')
    raw_env = {**base_env, "DOCKER_BUILDKIT": "1", "CONTAINERS_REGISTRIES_CONF": str(private / "registries.conf")}
    buildah = f"buildah --root {STORAGE / 'root'} --runroot {STORAGE / 'run'}"
    auth = f"--authfile {private / 'auth.json'}"

    worker_log = (workdir / "worker.log").open("w")
    worker = subprocess.Popen([RUNNER, "worker"], env=env, stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
    server = subprocess.Popen([RUNNER, "serve", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until("the worker", lambda: " ready." in (workdir / "worker.log").read_text())
        wait_until("runner serve", lambda: healthy(api_url))

        def submit(executor: str) -> list[str]:
            return [RUNNER, "submit", str(ctx), "-t", f"{REGISTRY}/bench/cli-{executor}:1", "--executor", executor,
                    "--wait", "--json"]

        submits = {  # name -> (argv, env)
            "runner submit --wait (socket, Redis)": (submit("socket"), env),
            "runner submit --wait (socket, API)": (submit("socket"), api_env),
            # the same through the models (the whole Settings, BuildRequest, admit): what every
            # Redis-mode submit did before the light path, and what it still does for a setting
            # the light path does not read plainly, as this RUNNER_* variable
            "runner submit --wait (socket, Redis models)": (submit("socket"), {**env, "RUNNER_WORKER__CONCURRENCY": "1"}),
        }
        raws = {
            "docker build -q && docker push": ["bash", "-c", f"{DOCKER} build -q -t {REGISTRY}/bench/cli-raw:1 {ctx} "
                                               f"&& {DOCKER} push -q {REGISTRY}/bench/cli-raw:1"],
        }
        if not args.no_buildah:
            submits["runner submit --wait (buildah, Redis)"] = (submit("buildah"), env)
            raws["buildah build -q --layers && buildah push"] = [
                "bash", "-c", f"{buildah} build -q --layers {auth} -t localhost/bench-cli-raw:1 {ctx} "
                f"&& {buildah} push -q {auth} localhost/bench-cli-raw:1 docker://{REGISTRY}/bench/cli-raw-buildah:1"]
        for argv, run_env in submits.values():  # warm: base image, layer cache, first push
            elapsed, result = wall(argv, run_env)
            if result.returncode:
                raise SystemExit(f"{argv} failed: {result.stderr}")
        first = wall([RUNNER, "submit", str(ctx), "-t", f"{REGISTRY}/bench/cli-socket:1", "--detach"], env)[1]
        job_id = first.stdout.strip()
        wall([RUNNER, "logs", job_id, "--follow"], env)
        for argv in raws.values():
            result = wall(argv, raw_env)[1]
            if result.returncode:
                raise SystemExit(f"{argv} failed: {result.stderr}")

        reads = {
            "status ID": ["status", job_id], "list": ["list"], "logs ID": ["logs", job_id], "cancel ID (ended job)": ["cancel", job_id],
        }
        floors = {FLOOR_REDIS: [sys.executable, "-c", "import redis"],
                  FLOOR_STDLIB: [sys.executable, "-c", "import json, http.client"]}
        times: dict[str, list[float]] = {}
        jobs: dict[str, list[float]] = {name: [] for name in submits}
        for _ in range(args.n):
            for name, argv in floors.items():
                times.setdefault(name, []).append(wall(argv, env, name)[0])
            for name, argv in raws.items():
                elapsed, result = wall(argv, raw_env)
                if result.returncode:
                    raise SystemExit(f"{name} failed: {result.stderr}")
                times.setdefault(name, []).append(elapsed)
            for name, (argv, run_env) in submits.items():
                elapsed, result = wall(argv, run_env, name)
                if result.returncode:
                    raise SystemExit(f"{name} failed ({result.returncode}): {result.stderr}")
                times.setdefault(name, []).append(elapsed)
                jobs[name].append(job_seconds(result.stdout))
            for mode, run_env in (("Redis", env), ("API", api_env)):
                for name, argv in reads.items():
                    elapsed, result = wall([RUNNER, *argv], run_env, f"runner {name} ({mode})")
                    if result.returncode:
                        raise SystemExit(f"runner {name} ({mode}) failed: {result.stderr}")
                    times.setdefault(f"runner {name} ({mode})", []).append(elapsed)
    finally:
        for proc in (worker, server):
            proc.terminate()
        for proc in (worker, server):
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        drop_namespace(redis.Redis.from_url("redis://127.0.0.1:6379/0"), namespace)
        subprocess.run(f"{buildah} rmi --all --force", shell=True, capture_output=True)
        shutil.rmtree(STORAGE, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)

    ms = {name: statistics.median(values) * 1000 for name, values in times.items()}
    job_ms = {name: statistics.median(values) * 1000 for name, values in jobs.items()}
    floor, stdlib = ms[FLOOR_REDIS], ms[FLOOR_STDLIB]
    docker_raw = ms["docker build -q && docker push"]
    print(f"\nWhole-process wall time, median of {args.n} rounds (each round runs every command once)")
    print("| what | runner | baseline | measure | target | met |\n|---|---|---|---|---|---|")

    def row(what: str, runner_ms: float, baseline: str, measure: str, target: str, met: bool) -> None:
        print(f"| {what} | {runner_ms:.0f} ms | {baseline} | {measure} | {target} | {'yes' if met else 'NO'} |")

    for name in submits:
        executor, mode = name[name.index("(") + 1:-1].split(", ")
        if mode.startswith("Redis"):
            raw_name = "docker build -q && docker push" if executor == "socket" else "buildah build -q --layers && buildah push"
            overhead = ms[name] - floor - job_ms[name]
            row(f"`{name}`", ms[name], f"raw `{raw_name}` {ms[raw_name]:.0f} ms; floor {floor:.0f} ms; "
                f"job {job_ms[name]:.0f} ms", f"wall - floor - job = {overhead:.0f} ms", "<= 30 ms", overhead <= 30)
        else:
            ratio = ms[name] / docker_raw
            row(f"`{name}`", ms[name], f"raw docker build && push {docker_raw:.0f} ms; job {job_ms[name]:.0f} ms",
                f"{ratio:.2f}x raw", "<= 1.5x", ratio <= 1.5)
    for name in reads:
        redis_name, api_name = f"runner {name} (Redis)", f"runner {name} (API)"
        row(f"`{redis_name}`", ms[redis_name], f"`{FLOOR_REDIS}` {floor:.0f} ms", f"+{ms[redis_name] - floor:.0f} ms",
            "<= +30 ms", ms[redis_name] - floor <= 30)
        row(f"`{api_name}`", ms[api_name], f"`{FLOOR_STDLIB}` {stdlib:.0f} ms", f"{ms[api_name]:.0f} ms "
            f"(+{ms[api_name] - stdlib:.0f} ms)", "<= 60 ms", ms[api_name] <= 60)
    for name in (*floors, *raws):
        print(f"| baseline `{name}` | | {ms[name]:.0f} ms (min {min(times[name]) * 1000:.0f} ms) | | | |")
    cpu = {name: statistics.median(values) * 1000 for name, values in CPU.items()}
    print(f"\nCPU time (user + system) of the command's own processes, median of {args.n}: beside its floor")
    print("| command | CPU | over its floor |\n|---|---|---|")
    for name, value in cpu.items():
        if name in floors:
            print(f"| baseline `{name}` | {value:.0f} ms | |")
        else:
            base = FLOOR_STDLIB if "API" in name else FLOOR_REDIS
            print(f"| `{name}` | {value:.0f} ms | +{value - cpu[base]:.0f} ms over `{base}` |")
    print(f"\n{load_line()}")


if __name__ == "__main__":
    main()

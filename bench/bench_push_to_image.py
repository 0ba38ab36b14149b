"""Push-to-image (issue 16, item 7): a signed GitHub push webhook to `runner serve` -> the image
pushed (the job's record says succeeded, with digests), for cached builds on the socket and
buildah executors; p50 over --pushes pushes, each a new commit (clone included) whose build
is fully cached. Target: p50 <= 1 s.

--tag-pushes: a release instead (issue 26): each round pushes a new commit on main (built, not
timed), then a tag on that same commit, timed: its image is reused (runner.worker.reuse: same
inputs, the manifest put under the tag's name, no build). Target: p50 <= 150 ms.

Each push is timed from just before the POST to the record's `finished_at`, and split into
the webhook's answer, queued -> running (pickup) and running -> finished (clone, build, push,
digest check). The repository is local (file://), so the clone costs no network.

Run:  .venv/bin/python bench/bench_push_to_image.py [--pushes 20] [--executors socket,buildah]
Needs the services (scripts/services.sh). Starts its own worker and server in their own
namespace. Prints a table. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx
import redis
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import dev_env, drop_namespace  # noqa: E402

RUNNER = str(Path(sys.executable).with_name("runner"))
REGISTRY = "127.0.0.1:5000"
BASE = f"{REGISTRY}/base/busybox:1"
SECRET = "bench-" + uuid.uuid4().hex
BUILDAH_STORAGE = "/var/tmp/runner-bench-buildah"
GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@example.com", "GIT_COMMITTER_NAME": "Bench",
           "GIT_COMMITTER_EMAIL": "bench@example.com", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, env=GIT_ENV, check=True, capture_output=True, text=True).stdout.strip()


def commit(repo: Path, n: int) -> str:
    """A new commit whose build is cached: only README.md changes, and the Dockerfile never copies it."""
    (repo / "README.md").write_text(f"push {n}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"push {n}")
    return git(repo, "rev-parse", "HEAD")


def push_payload(full_name: str, repo: Path, sha: str, ref: str = "refs/heads/main") -> bytes:
    payload = json.loads((ROOT / "tests" / "fixtures" / "webhooks" / "github-push.json").read_text())
    payload["ref"], payload["after"] = ref, sha
    payload["head_commit"]["id"] = payload["commits"][0]["id"] = sha
    owner, name = full_name.split("/")
    payload["repository"].update(full_name=full_name, name=name, clone_url=f"file://{repo}")
    payload["repository"]["owner"].update(name=owner, login=owner)
    return json.dumps(payload).encode()


def post_push(url: str, body: bytes) -> httpx.Response:
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()),
               "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()}
    return httpx.post(f"{url}/v1/webhooks/github", content=body, headers=headers, timeout=30)


def when(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pushes", type=int, default=20)
    parser.add_argument("--executors", default="socket,buildah")
    parser.add_argument("--show-log", action="store_true", help="print each executor's last job log, with ms since running")
    parser.add_argument("--tag-pushes", action="store_true", help="time a tag pushed on a commit main built (reused)")
    args = parser.parse_args()
    executors = args.executors.split(",")
    dev = dev_env()
    client = redis.Redis.from_url(dev["RUNNER_DEV_REDIS_URL"], decode_responses=True)
    results: dict[str, list[tuple[float, float, float, float, float]]] = {}
    shown: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        repo = workdir / "hello-app"
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        (repo / "Dockerfile").write_text(f"FROM {BASE}\nCOPY app.txt /app.txt\nRUN cat /app.txt\n")
        (repo / "app.txt").write_text("the app\n")
        commit(repo, 0)
        namespace = f"benchp2i-{uuid.uuid4().hex[:6]}"
        port = free_port()
        executor_configs = {"socket": {"enabled": True},
                            "buildah": {"enabled": True, "storage_root": f"{BUILDAH_STORAGE}/root",
                                        "run_root": f"{BUILDAH_STORAGE}/run"}}
        config = {
            "redis_url": dev["RUNNER_DEV_REDIS_URL"], "default_executor": executors[0],
            "registries": [{"host": REGISTRY, "username": dev["RUNNER_DEV_REGISTRY_USER"],
                            "password": dev["RUNNER_DEV_REGISTRY_PASSWORD"]}],
            "executors": {name: executor_configs[name] for name in executors},
            "worker": {"namespace": namespace, "workspace": str(workdir / "work"), "concurrency": 1, "metrics_port": 0},
            "api": {"port": port},
            "git": {"allowed_schemes": ["file", "https"]},
            "webhooks": {"github": {"secret": SECRET}, "repositories": {
                f"acme/app-{name}": {"images": [f"{REGISTRY}/bench/p2i-{name}:{{short_sha}}",
                                                           f"{REGISTRY}/bench/p2i-{name}:{{tag}}"],  # {tag}: tags only
                                   "executor": name, "tags": ["v*"]}
                for name in executors}},
        }
        (workdir / "runner.yml").write_text(yaml.safe_dump(config))
        env = {**os.environ, "RUNNER_CONFIG": str(workdir / "runner.yml"),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        procs = []
        try:
            for command, ready in ((["worker"], " ready."), (["serve"], "Uvicorn running")):
                log = workdir / f"{command[0]}.log"
                procs.append(subprocess.Popen([RUNNER, *command], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT))
                for _ in range(600):
                    if ready in log.read_text():
                        break
                    time.sleep(0.1)
                else:
                    raise SystemExit(f"runner {command[0]} did not start: {log.read_text()[-2000:]}")
            url = f"http://127.0.0.1:{port}"

            def one_push(executor: str, n: int) -> tuple[float, float, float, float, float]:
                sha = commit(repo, n)
                body = push_payload(f"acme/app-{executor}", repo, sha)
                if args.tag_pushes:  # main builds it first; the tag on the same commit is what is timed
                    wait_for(post_push(url, body).json()["job"], expect_reused=False)
                    body = push_payload(f"acme/app-{executor}", repo, sha, ref=f"refs/tags/v{n}")
                t0 = time.time()
                response = post_push(url, body)
                answered = time.time()
                if response.status_code != 202:
                    raise SystemExit(f"webhook answered {response.status_code}: {response.text}")
                job_id = response.json()["job"]
                record = wait_for(job_id, expect_reused=args.tag_pushes)
                created, started, finished = (when(record[k]) for k in ("created_at", "started_at", "finished_at"))
                # log stream entry ids are the milliseconds they were written at: when the context was ready
                entries = client.xrange(f"{namespace}:log:{job_id}")
                stamped = [(int(entry_id.split("-")[0]) / 1000, fields.get("l", "")) for entry_id, fields in entries]
                ready = next((at for at, text in stamped if "[runner] context:" in text), started)
                shown[executor] = [f"{(at - started) * 1000:7.0f} ms  {line}" for at, text in stamped for line in text.split("\n")]
                return finished - t0, answered - t0, started - created, ready - started, finished - ready

            def wait_for(job_id: str, expect_reused: bool) -> dict:
                while True:
                    raw = client.get(f"{namespace}:job:{job_id}")
                    record = json.loads(raw) if raw else None
                    if record and record["status"] not in ("queued", "running"):
                        break
                    time.sleep(0.005)
                if record["status"] != "succeeded":
                    raise SystemExit(f"job {job_id} {record['status']}: {record['error']}")
                if bool(record.get("reused_from")) != expect_reused:
                    raise SystemExit(f"job {job_id}: reused_from={record.get('reused_from')!r}, expected "
                                     f"{'a reuse' if expect_reused else 'a build'}")
                return record

            n = 0
            for executor in executors:
                n += 1
                one_push(executor, n)  # warm: base image pulled, layers cached
                results[executor] = []
                for _ in range(args.pushes):
                    n += 1
                    results[executor].append(one_push(executor, n))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(60)
            drop_namespace(client, namespace)

    what = "tag pushed on a built commit (reused)" if args.tag_pushes else "cached build"
    print(f"\nPush-to-image: signed GitHub push -> image pushed (record finished), {what}, "
          f"median of {args.pushes} pushes; load average {os.getloadavg()[0]:.2f}")
    print("| executor | p50 total | max | webhook answer | queued -> running | running -> context ready (clone, pack, check) "
          "| context ready -> finished (build, push, digest) | target |\n|---|---|---|---|---|---|---|---|")
    for executor, rows in results.items():
        total, answer, pickup, clone, build = ([r[i] * 1000 for r in rows] for i in range(5))
        print(f"| {executor} | {statistics.median(total):.0f} ms | {max(total):.0f} ms | {statistics.median(answer):.0f} ms "
              f"| {statistics.median(pickup):.0f} ms | {statistics.median(clone):.0f} ms | {statistics.median(build):.0f} ms "
              f"| p50 <= {150 if args.tag_pushes else 1000} ms |")
    if args.show_log:
        for executor, lines in shown.items():
            print(f"\n{executor}: the last job's log, ms since the record said running")
            print("\n".join(lines))


if __name__ == "__main__":
    main()

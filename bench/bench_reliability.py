"""Reliability trials with real processes: SIGKILL a worker mid-build, restart Redis with jobs
queued and running. Counts jobs lost, jobs built twice, and leftovers. Prints a table.

Run:  .venv/bin/python bench/bench_reliability.py [--kill-trials 10] [--redis-trials 3]
Needs scripts/services.sh (Docker Engine, registry). Starts its own redis-server on a spare
port for the restart trials, and its own workers; stops everything it started.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import dev_env, drop_namespace  # noqa: E402

RUNNER = str(Path(sys.executable).with_name("runner"))
DEV = dev_env()


class Trial:
    def __init__(self, workdir: Path, redis_url: str):
        self.workdir = workdir
        self.ns = f"rel-{uuid.uuid4().hex[:6]}"
        config = {
            "redis_url": redis_url, "default_executor": "socket",
            "registries": [{"host": DEV["RUNNER_DEV_REGISTRY"], "username": DEV["RUNNER_DEV_REGISTRY_USER"],
                            "password": DEV["RUNNER_DEV_REGISTRY_PASSWORD"]}],
            "executors": {"socket": {"enabled": True}},
            "worker": {"namespace": self.ns, "workspace": str(workdir / "work"), "lease_ttl": 2,
                       "recover_interval": 0.5, "concurrency": 2},
        }
        self.config = workdir / f"{self.ns}.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.env = {**os.environ, "RUNNER_CONFIG": str(self.config)}
        os.environ["RUNNER_CONFIG"] = str(self.config)
        from runner.config.settings import load_settings
        from runner.store.jobstore import JobStore

        self.store = JobStore.from_settings(load_settings())

    def worker(self) -> subprocess.Popen:
        log = (self.workdir / f"w-{uuid.uuid4().hex[:4]}.log").open("w")
        proc = subprocess.Popen([RUNNER, "worker"], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        for _ in range(300):
            if " ready." in Path(log.name).read_text():
                break
            time.sleep(0.1)
        return proc

    def submit(self, body: str) -> str:
        ctx = self.workdir / uuid.uuid4().hex[:6]
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(f"FROM {DEV['RUNNER_DEV_BASE_IMAGE']}\nRUN echo {uuid.uuid4().hex}\n{body}\n")
        ref = f"{DEV['RUNNER_DEV_REGISTRY']}/bench/reliability:{uuid.uuid4().hex[:8]}"
        out = subprocess.run([RUNNER, "submit", str(ctx), "-t", ref, "--detach"], env=self.env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def log(self, job_id: str) -> str:
        return "\n".join(self.store.read_log(job_id))

    def wait(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.1)
        return False

    def outcome(self, job_ids: list[str], timeout: float = 180) -> tuple[int, int, int]:
        """(lost, duplicated, leftovers) once every job is finished or the timeout passes."""
        self.wait(lambda: all((r := self.store.get(j)) and r.finished for j in job_ids), timeout)
        lost = 0
        for job_id in job_ids:
            record = self.store.get(job_id)
            if record is None or record.status.value != "succeeded":
                lost += 1
                print(f"not succeeded: {job_id} {record and record.status.value} {record and record.error} attempts="
                      f"{record and record.attempts}\n  " + "\n  ".join(self.log(job_id).splitlines()[-8:]), file=sys.stderr)
        duplicated = sum(1 for j in job_ids if self.log(j).count("[runner] succeeded") > 1)
        self.wait(lambda: all(self.store.lease_holder(j) is None for j in job_ids), 30)
        leftovers = sum(1 for j in job_ids if (self.workdir / "work" / j).exists())
        leftovers += sum(1 for j in job_ids if subprocess.run(["docker", "images", "-q", f"runner-job/{j}"],
                                                                 capture_output=True, text=True).stdout.strip())
        return lost, duplicated, leftovers

    @staticmethod
    def stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            proc.wait(60)

    def forget(self) -> None:
        drop_namespace(self.store.r, self.ns)


def kill_trial(workdir: Path) -> tuple[int, int, int, int]:
    trial = Trial(workdir, DEV["RUNNER_DEV_REDIS_URL"])
    first = trial.worker()
    ids = [trial.submit("RUN echo started && sleep 3") for _ in range(2)]
    trial.wait(lambda: "started" in trial.log(ids[0]), 60)
    trial.stop(first, signal.SIGKILL)
    second = trial.worker()
    try:
        lost, dup, left = trial.outcome(ids)
    finally:
        trial.stop(second)
        trial.forget()
    return len(ids), lost, dup, left


def redis_trial(workdir: Path, port: int) -> tuple[int, int, int, int]:
    data = workdir / f"redis-{uuid.uuid4().hex[:4]}"
    data.mkdir()
    argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data),
            "--appendonly", "yes", "--appendfsync", "always", "--save", ""]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    trial = Trial(workdir, f"redis://127.0.0.1:{port}/0")
    worker = trial.worker()
    ids = [trial.submit("RUN echo started && sleep 2") for _ in range(4)]
    trial.wait(lambda: "started" in trial.log(ids[0]), 60)
    subprocess.run(["redis-cli", "-p", str(port), "shutdown"], capture_output=True)
    server.wait(30)
    time.sleep(2)
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    try:
        lost, dup, left = trial.outcome(ids)
    finally:
        trial.stop(worker)
        server.terminate()
        server.wait(30)
    return len(ids), lost, dup, left


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kill-trials", type=int, default=10)
    parser.add_argument("--redis-trials", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        totals = [0, 0, 0, 0]
        for _ in range(args.kill_trials):
            totals = [a + b for a, b in zip(totals, kill_trial(workdir), strict=True)]
        rows.append(("SIGKILL a worker mid-build (2 jobs each)", args.kill_trials, *totals))
        totals = [0, 0, 0, 0]
        for n in range(args.redis_trials):
            totals = [a + b for a, b in zip(totals, redis_trial(workdir, 17300 + n), strict=True)]
        rows.append(("restart Redis, 4 jobs queued/running", args.redis_trials, *totals))
    print("\n| trial | runs | jobs | lost | built twice | leftovers |\n|---|---|---|---|---|---|")
    for name, runs, jobs, lost, dup, left in rows:
        print(f"| {name} | {runs} | {jobs} | {lost} | {dup} | {left} |")


if __name__ == "__main__":
    main()

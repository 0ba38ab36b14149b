"""Pushes from a shared Docker Engine: two jobs pushing the same tag at once.

The Engine API pushes local names only, so a push tags the image under the ref it pushes. On
the socket executor every job shares the host engine: before, one job could move the other's
local tag (and push the other's image as its own), or its clean-up could remove the tag while
the other pushed it ("An image does not exist locally with the tag"). Now a tag is in the
engine only while its push holds the tag's lock, and what reached the registry is checked to be
the job's own image. Real worker (two jobs at once), real engine, real registry."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid

import pytest

from executors.engine.push import PushLocks
from runner.core.cancel import CancelToken
from runner.core.errors import Cancelled
from tests.conftest import RUNNER, registry_digest


def wait_finished(harness, job_id: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not (record := harness.store.get(job_id)) or not record.finished:
        assert time.monotonic() < deadline, f"job {job_id} did not finish"
        time.sleep(0.05)
    return record


def nonce_of(image: str) -> str:
    out = subprocess.run(["docker", "run", "--rm", image, "cat", "/nonce"], capture_output=True, text=True, timeout=120)
    subprocess.run(["docker", "rmi", "-f", image], capture_output=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


ROUNDS = 2


def test_jobs_pushing_the_same_tag_at_once_all_succeed_each_with_its_own_image(make_harness, tmp_path):
    """Rounds of four jobs at once pushing one tag on a worker running four: two build one image
    (the same id: one job's clean-up used to untag it while the other pushed it), two another
    (a job's local tag used to move under the other's push)."""
    h = make_harness(worker={"concurrency": 4})
    h.worker_proc = h.start_worker()
    repository = f"{h.registry()}/engine-push/same-tag-{uuid.uuid4().hex[:8]}"
    tag = f"{repository}:latest"
    base = h.services["RUNNER_DEV_BASE_IMAGE"]
    for attempt in range(ROUNDS):  # the races need pushes to overlap: a few rounds make that near certain
        pair = [f"{attempt}-{side}-{uuid.uuid4().hex}" for side in "ab"]
        nonces = [pair[0], pair[0], pair[1], pair[1]]
        procs = []
        for index, nonce in enumerate(nonces):
            ctx = tmp_path / f"{attempt}-{index}"
            ctx.mkdir()
            # a layer of a few MB, so each push takes a while
            (ctx / "Dockerfile").write_text(f"FROM {base}\nRUN echo {nonce} > /nonce && seq 1 400000 > /numbers\n")
            procs.append(subprocess.Popen([RUNNER, "submit", str(ctx), "--executor", "socket", "-t", tag, "--detach"],
                                          env=h.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        ids = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            ids.append(out.strip())
        made: dict[str, str] = {}  # digest -> the nonce its image holds
        for job_id, nonce in zip(ids, nonces, strict=True):
            record = wait_finished(h, job_id)
            log = h.cli("logs", job_id).stdout
            assert record.status.value == "succeeded", (record.error, log[-3000:])
            [image] = record.images
            if image.digest not in made:
                made[image.digest] = nonce_of(f"{repository}@{image.digest}")
            assert made[image.digest] == nonce, log[-3000:]  # its own image, not another's
        assert registry_digest(h.services, tag) in {h.store.get(i).images[0].digest for i in ids}
    assert local_tags(repository) == []  # no local tag of the ref stays on the shared engine


def test_a_push_survives_another_process_moving_then_removing_its_local_tag(harness, tmp_path, monkeypatch):
    """The same races made certain: just before the engine pushes the tag, another process
    (a second worker on the same engine) moves it to another image, then on the next attempt
    removes it. The push notices both (what reached the registry is not its image; the tag is
    gone), tags again and pushes its own image."""
    import docker

    from runner.core.jobs import BuildRequest
    from tests.support import ListLog, executor_for
    from tests.support.dind import build_context

    other = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", harness.services["RUNNER_DEV_BASE_IMAGE"]],
                           capture_output=True, text=True, check=True).stdout.strip()
    interference = iter(["move", "remove"])
    real_push = docker.APIClient.push

    def push(self, repository, tag=None, **kwargs):
        action = next(interference, None)
        if action == "move":
            self.tag(other, repository, tag, force=True)
        elif action == "remove":
            self.remove_image(f"{repository}:{tag}", noprune=True)
        return real_push(self, repository, tag, **kwargs)

    monkeypatch.setattr(docker.APIClient, "push", push)
    nonce = uuid.uuid4().hex
    context = build_context(tmp_path, f"FROM {harness.services['RUNNER_DEV_BASE_IMAGE']}\nRUN echo {nonce} > /nonce\n")
    tag = f"{harness.registry()}/engine-push/interfered:{uuid.uuid4().hex[:8]}"
    job = BuildRequest(tags=[tag], executor="socket")
    executor, log = executor_for(harness.settings, "socket"), ListLog()
    try:
        [image] = executor.run(job, context, log, CancelToken())
    finally:
        executor.cleanup(job.id)
    assert image.digest == registry_digest(harness.services, tag)
    assert nonce_of(f"{tag.rsplit(':', 1)[0]}@{image.digest}") == nonce  # its own image, not the one moved in
    assert "the local tag was moved by another job while it was pushed" in log.text, log.text
    assert f"tag does not exist: {tag}" in log.text, log.text


def test_a_multi_platform_push_cut_short_puts_the_tag_back(harness, tmp_path, monkeypatch):
    """A cancel after the first platform's image went under the tag, before the second and
    the index: the tag names again what it named before the job (a pull never gets the half
    job), and nothing of the job stays on the engine."""
    import docker

    from runner.core.jobs import BuildRequest
    from tests.support import ListLog, executor_for
    from tests.support.dind import build_context

    tag = f"{harness.registry()}/engine-push/cut-short:{uuid.uuid4().hex[:8]}"
    creds = f"{harness.services['RUNNER_DEV_REGISTRY_USER']}:{harness.services['RUNNER_DEV_REGISTRY_PASSWORD']}"
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false", "--src-creds", creds, "--dest-creds",
                    creds, f"docker://{harness.services['RUNNER_DEV_BASE_IMAGE']}", f"docker://{tag}"],
                   check=True, capture_output=True, timeout=120)
    before = registry_digest(harness.services, tag)
    cancel, pushes = CancelToken(), []
    real_push = docker.APIClient.push

    def push(self, repository, tag=None, **kwargs):
        pushes.append(tag)
        if len(pushes) == 2:
            cancel.set()  # the job is cancelled as its second platform's push starts
        return real_push(self, repository, tag, **kwargs)

    monkeypatch.setattr(docker.APIClient, "push", push)
    base = harness.services["RUNNER_DEV_MULTI_BASE_IMAGE"]
    context = build_context(tmp_path, f"FROM {base}\nRUN echo {uuid.uuid4().hex} > /nonce\n")
    job = BuildRequest(tags=[tag], executor="socket", platforms=["linux/amd64", "linux/arm64"])
    executor, log = executor_for(harness.settings, "socket"), ListLog()
    try:
        with pytest.raises(Cancelled):
            executor.run(job, context, log, cancel)
    finally:
        executor.cleanup(job.id)
    assert len(pushes) == 2 and "[runner] pushed linux/amd64 image under" in log.text, log.text
    assert registry_digest(harness.services, tag) == before
    assert f"[runner] {tag} names again what it did before this job ({before})" in log.text
    left = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True, text=True).stdout
    assert f"runner-job/{job.id}:" not in left and tag not in left


def test_a_second_push_of_the_tag_waits_and_a_cancel_ends_the_wait_and_locks_are_dropped():
    locks, seen = PushLocks(), []
    cancel = CancelToken()

    def push(name: str, token: CancelToken) -> None:
        try:
            with locks.hold("engine ref", token):
                seen.append(name)
        except Cancelled:
            seen.append(f"{name} cancelled")

    with locks.hold("engine ref", CancelToken()), locks.hold("engine ref", CancelToken()):  # re-entrant
        waiting = [threading.Thread(target=push, args=("b", CancelToken())), threading.Thread(target=push, args=("c", cancel))]
        for thread in waiting:
            thread.start()
        time.sleep(0.4)
        assert seen == []  # both wait for the tag
        cancel.set()
        waiting[1].join(5)
        assert seen == ["c cancelled"]
    waiting[0].join(5)
    assert seen == ["c cancelled", "b"] and locks._locks == {}


def tags_of(image_id: str) -> list[str]:
    out = subprocess.run(["docker", "image", "inspect", "-f", "{{json .RepoTags}}", image_id], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else []


def test_a_job_leaves_no_tag_before_its_end_and_its_clean_up_leaves_tags_not_its_own(harness, tmp_path):
    """On the shared engine the image a job pushed is everybody's once pushed: a user's
    `docker pull` of it (a CI step right after `runner submit --wait`) tags the same image id,
    and so may another job's identical build. dockerd deletes an image whose last tag is
    removed while another is being added, so the job removes its own tag before its result is
    told (run() returns), not in the clean-up that runs after the record is written: a pull
    after the job's end can no longer race it. The clean-up then removes only the job's own
    tag; a dead job's sweep also removes a ref a crash left mid-push (it meant to before, but
    read the tags from a listing filtered to the job's own), never another job's tag."""
    from runner.core.jobs import BuildRequest
    from tests.support import ListLog, executor_for
    from tests.support.dind import build_context

    context = build_context(tmp_path, f"FROM {harness.services['RUNNER_DEV_BASE_IMAGE']}\nRUN echo {uuid.uuid4().hex} > /nonce\n")
    tag = f"{harness.registry()}/engine-push/pulled:{uuid.uuid4().hex[:8]}"
    job = BuildRequest(tags=[tag], executor="socket")
    own, other_job = f"runner-job/{job.id}:build", f"runner-job/{uuid.uuid4().hex}:build"
    executor = executor_for(harness.settings, "socket")
    try:
        [image] = executor.run(job, context, ListLog(), CancelToken())
        assert local_tags(f"runner-job/{job.id}") == [] and local_tags(tag.rsplit(":", 1)[0]) == []  # nothing left to untag
        image_id = run_image_id(tag)  # the user's pull of what was pushed
        for name in (own, other_job):  # as if the job's tag were still there; another job's identical build
            subprocess.run(["docker", "tag", image_id, name], check=True)
        executor.cleanup(job.id)
        assert sorted(tags_of(image_id)) == sorted([tag, other_job])  # the job's own tag alone is gone
        # a dead job's sweep: the job's tag and the ref a crash left go, another job's own tag stays
        subprocess.run(["docker", "tag", image_id, own], check=True)
        assert job.id in executor.sweep(lambda job_id: job_id != job.id)
        assert tags_of(image_id) == [other_job]
    finally:
        executor.cleanup(job.id)
        subprocess.run(["docker", "rmi", "-f", tag, other_job], capture_output=True)
    assert image.digest == registry_digest(harness.services, tag)


def local_tags(repository: str) -> list[str]:
    return subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", repository],
                          capture_output=True, text=True, check=True).stdout.split()


def run_image_id(ref: str) -> str:
    """Pull and run `ref` on the host engine; the id of the image it ran."""
    out = subprocess.run(["docker", "run", "--rm", "--pull", "always", ref, "true"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", ref], capture_output=True, text=True, check=True).stdout.strip()

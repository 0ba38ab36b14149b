"""Reusing an image whose inputs are unchanged (runner.worker.reuse), against real parts: a
worker in this process (its real socket and buildah executors, the real registry with auth,
Redis, a git repository of the test's, a signing key), each job driven through
`Pipeline.run` as the Celery task would after `submit`. Whether the engine or buildah built is
told by the executor's own `run` being called (counted by wrapping it: the real run still
happens), and by the job's log.

- a push on main builds; a tag pushed on the same commit (another clone, other mtimes) reuses:
  the same digest under the new tag (read back with skopeo), no build, `reused_from`, signed
  (the build's signature kept in its repository, a new one in another), runner_jobs_reused_total,
  the commit status description;
- the FROM tag moved, a changed build arg, a changed file, no_cache, reuse: false, another
  platform set: each builds;
- two identical jobs at once build once;
- the reused manifest deleted from the registry: rebuilt.
The key itself (what moves it, what does not) is tested without services at the end."""

from __future__ import annotations

import math
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from runner.config.settings import Settings
from runner.context.spool import spool_context
from runner.core.build_inputs import BaseImage, BuildInputs
from runner.core.jobs import BuildRequest, JobRecord, Status
from runner.entry.submission import submit
from runner.supply.keys import generate
from runner.worker.admission import QUEUE
from runner.worker.notify.statuses import describe
from runner.worker.pipeline import Pipeline
from runner.worker.reuse import build_asked, not_shared, plan_for
from runner.worker.worker import Worker
from runner.worker.worker_metrics import WorkerMetrics
from tests.conftest import cleanup_namespace, new_harness, registry_digest
from tests.contract.test_contract import executor_params
from tests.test_gitsource import commit_files, git
from tests.test_signing import copy_image

ENGINES = [p for p in executor_params() if p.values[0] in ("socket", "buildah")]


class Built:
    """A worker in this process on one executor, its executor's runs counted."""

    def __init__(self, harness, executor: str):
        self.harness, self.executor = harness, executor
        self.settings = harness.settings
        self.worker = Worker(self.settings, names=[executor], worker_id=f"reuse-{uuid.uuid4().hex[:6]}")
        self.metrics = WorkerMetrics([executor])
        self.worker.listeners.append(self.metrics)
        self.store = self.worker.store
        self.pipeline = Pipeline(self.worker)
        self.runs: list[str] = []
        engine = self.worker.executors[executor]
        real = engine.run

        def counted(request, *args, **kwargs):
            self.runs.append(request.id)
            return real(request, *args, **kwargs)

        engine.run = counted  # type: ignore[method-assign]

    def job(self, repo: Path, commit: str, tag: str, ref: str = "refs/heads/main", **fields) -> BuildRequest:
        return BuildRequest(executor=self.executor, tags=[tag],
                            context={"type": "git", "url": f"file://{repo}", "ref": ref, "commit": commit},
                            source={"host": "github", "repository": "acme/app", "sha": commit, "ref": ref}, **fields)

    def run(self, request: BuildRequest) -> tuple[JobRecord, str]:
        submit(request, self.settings, self.store, QUEUE)
        record = self.pipeline.run(request)
        log = "\n".join(self.store.read_log(request.id))
        assert record.status is Status.succeeded, (record.error, log[-3000:])
        return record, log

    def reused_count(self) -> float:
        return self.metrics.reused.labels(self.executor)._value.get()


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory) -> Path:
    """The worker's signing key (without a passphrase: the signing tests cover those)."""
    private, _ = generate(tmp_path_factory.mktemp("reuse-keys") / "cosign", None)
    return private


@pytest.fixture(scope="module")
def harness(services, tmp_path_factory, signing_key):
    h = new_harness(services, tmp_path_factory, git={"allowed_schemes": ["file"]}, statuses={"trust_queue_sources": True},
                    signing={"key_file": str(signing_key)})
    yield h
    cleanup_namespace(h)


@pytest.fixture(params=ENGINES)
def built(request, harness) -> Built:
    return Built(harness, request.param)


@pytest.fixture
def base(services) -> str:
    """A FROM tag of this test's own, which a test may move."""
    ref = f"{services['RUNNER_DEV_REGISTRY']}/reuse-base/{uuid.uuid4().hex[:10]}:1"
    copy_image(services, services["RUNNER_DEV_BASE_IMAGE"], ref)
    return ref


def new_repo(tmp_path: Path, base: str) -> tuple[Path, str]:
    """A repository whose Dockerfile copies a file of its own (new content: no earlier entry)."""
    repo = tmp_path / f"app-{uuid.uuid4().hex[:6]}"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    dockerfile = f"FROM {base}\nARG MODE=dev\nCOPY app.txt /app.txt\nRUN echo \"$MODE\" > /mode\n"
    return repo, commit_files(repo, {"Dockerfile": dockerfile, "app.txt": f"{uuid.uuid4().hex}\n"}, "app")


def next_second() -> None:
    """Wait until the clock's whole second changes."""
    now = time.time()
    time.sleep(math.ceil(now) - now + 0.01)


def tag_of(services, executor: str, name: str) -> str:
    return f"{services['RUNNER_DEV_REGISTRY']}/reuse/{executor}:{name}-{uuid.uuid4().hex[:8]}"


def test_a_tag_on_a_built_commit_reuses_its_image(built, base, services, tmp_path):
    repo, commit = new_repo(tmp_path, base)
    first, _ = built.run(built.job(repo, commit, tag_of(services, built.executor, "main")))
    assert built.runs == [first.id] and first.reused_from is None
    assert first.attestation is not None and first.attestation.signed

    release_tag = tag_of(services, built.executor, "v1")
    next_second()  # the second clone's files get other mtimes (a tar's are whole seconds)
    second, log = built.run(built.job(repo, commit, release_tag, ref="refs/tags/v1"))
    assert built.runs == [first.id], "the tag's job ran a build"
    assert second.reused_from == first.id
    [image] = second.images
    assert image.ref == release_tag and image.digest == first.images[0].digest == registry_digest(services, release_tag)
    assert f"reused the image built by job {first.id} for the same inputs" in log and "nothing was built" in log
    assert second.inputs is not None and first.inputs is not None
    assert second.inputs.context_digest != first.inputs.context_digest, "both clones had the same mtimes: not a real test"
    assert second.inputs.key() == first.inputs.key()
    # signed as a push would be: the same digest's signature is there once, the record says signed
    assert second.attestation is not None and second.attestation.signed
    assert second.attestation == first.attestation and f"[runner] signed by job {first.id}" in log
    # in another repository the digest has no signature yet: it is signed there, as after a push
    other_tag = f"{services['RUNNER_DEV_REGISTRY']}/reuse/{built.executor}-other:{uuid.uuid4().hex[:8]}"
    third, log = built.run(built.job(repo, commit, other_tag, ref="refs/tags/v1.1"))
    assert third.reused_from == first.id and built.runs == [first.id]
    assert third.attestation is not None and third.attestation.signed
    [attested] = third.attestation.images
    assert attested.repository == other_tag.rsplit(":", 1)[0] and attested.digest == image.digest
    assert attested.signature == f"{attested.repository}:{image.digest.replace(':', '-')}.sig"
    assert registry_digest(services, attested.signature)  # the .sig tag is in that repository
    assert built.reused_count() == 2
    assert describe("finished", second, {}).startswith(f"reused the image built by job {first.id} for the same inputs")


def test_what_moves_the_key_builds(built, base, services, tmp_path):
    repo, commit = new_repo(tmp_path, base)
    first, _ = built.run(built.job(repo, commit, tag_of(services, built.executor, "main")))
    builds = [first.id]

    def builds_again(record: JobRecord, log: str, why: str) -> None:
        builds.append(record.id)
        assert built.runs == builds, f"{why}: no build"
        assert record.reused_from is None, why

    for why, fields in [("a changed build arg", {"build_args": {"MODE": "prod"}}),
                        ("no_cache", {"no_cache": True}),
                        ("reuse: false", {"reuse": False}),
                        ("another platform set", {"platform": "linux/amd64"})]:
        record, log = built.run(built.job(repo, commit, tag_of(services, built.executor, "x"), **fields))
        builds_again(record, log, why)
        if why in ("no_cache", "reuse: false"):
            assert "[runner] building, not reusing:" in log

    changed = commit_files(repo, {"app.txt": f"{uuid.uuid4().hex}\n"}, "changed")
    record, log = built.run(built.job(repo, changed, tag_of(services, built.executor, "x")))
    builds_again(record, log, "a changed file")

    copy_image(services, first.images[0].ref, base)  # the FROM tag moves (to another image)
    record, log = built.run(built.job(repo, commit, tag_of(services, built.executor, "x")))
    builds_again(record, log, "the FROM tag moved")
    # and the same job again now reuses the new build
    again, _ = built.run(built.job(repo, commit, tag_of(services, built.executor, "x")))
    assert again.reused_from == record.id and built.runs == builds


def test_two_identical_jobs_at_once_build_once(built, base, services, tmp_path):
    repo, commit = new_repo(tmp_path, base)
    jobs = [built.job(repo, commit, tag_of(services, built.executor, f"at-once-{n}")) for n in range(2)]
    results: dict[str, JobRecord] = {}

    def run(request: BuildRequest) -> None:
        results[request.id] = built.run(request)[0]

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert len(results) == 2 and len(built.runs) == 1, built.runs
    [builder] = built.runs
    [other] = [record for record in results.values() if record.id != builder]
    assert other.reused_from == builder
    assert other.images[0].digest == results[builder].images[0].digest == registry_digest(services, other.images[0].ref)


def test_a_deleted_manifest_is_rebuilt(built, base, services, tmp_path):
    repo, commit = new_repo(tmp_path, base)
    first, _ = built.run(built.job(repo, commit, tag_of(services, built.executor, "main")))
    [image] = first.images
    repository = image.ref.split("/", 1)[1].rsplit(":", 1)[0]
    deleted = httpx.delete(f"http://{services['RUNNER_DEV_REGISTRY']}/v2/{repository}/manifests/{image.digest}",
                           auth=(services["RUNNER_DEV_REGISTRY_USER"], services["RUNNER_DEV_REGISTRY_PASSWORD"]), timeout=30)
    assert deleted.status_code == 202, deleted.text
    second, log = built.run(built.job(repo, commit, tag_of(services, built.executor, "v1"), ref="refs/tags/v1"))
    assert built.runs == [first.id, second.id] and second.reused_from is None
    assert "is gone from its registry; building" in log, log
    third, _ = built.run(built.job(repo, commit, tag_of(services, built.executor, "v2"), ref="refs/tags/v2"))
    assert third.reused_from == second.id and built.runs == [first.id, second.id]


# -- the key, without services ----------------------------------------------------------------------
def inputs(**changes) -> BuildInputs:
    fields = dict(context_digest="sha256:" + "a" * 64, context_files="sha256:" + "b" * 64, dockerfile="Dockerfile",
                  executor="socket", builder="auto", build_args={"MODE": "dev"}, labels={"team": "a"},
                  base_images=[BaseImage(ref="busybox:1", name="docker.io/library/busybox:1", digest="sha256:" + "c" * 64)])
    return BuildInputs(**{**fields, **changes})


def test_the_key_moves_with_every_input_that_makes_the_image():
    key = inputs().key()
    assert key is not None and key.startswith("sha256:") and key == inputs().key()
    other_base = [BaseImage(ref="busybox:1", name="docker.io/library/busybox:1", digest="sha256:" + "d" * 64)]
    for change in [{"context_files": "sha256:" + "e" * 64}, {"dockerfile": "build/Dockerfile"}, {"target": "app"},
                   {"platforms": ["linux/arm64"]}, {"build_args": {"MODE": "prod"}}, {"secret_build_args": ["TOKEN"]},
                   {"secrets": ["npmrc"]}, {"labels": {"team": "b"}}, {"executor": "buildah"}, {"builder": "classic"},
                   {"base_images": other_base}]:
        assert inputs(**change).key() != key, change
    # what does not make the image: the tar's own digest (mtimes), the source, no_cache
    assert inputs(context_digest="sha256:" + "f" * 64, no_cache=True,
                  source={"repository": "acme/app", "ref": "refs/tags/v1", "commit": "1" * 40}).key() == key
    assert inputs(base_images=[BaseImage(ref="x:1", name="docker.io/library/x:1", error="unreachable")]).key() is None
    assert inputs(context_files=None).key() is None
    assert inputs(bases_unknown="a FROM this reading cannot follow").key() is None


def test_the_context_files_digest_leaves_mtimes_out(tmp_path):
    def spooled(files: dict[str, bytes], mtime: int, name: str):
        import io
        import tarfile

        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            for path, data in files.items():
                info = tarfile.TarInfo(path)
                info.size, info.mtime = len(data), mtime
                archive.addfile(info, io.BytesIO(data))
        return spool_context([buffer.getvalue()], tmp_path / name, "Dockerfile", 10**6)

    files = {"Dockerfile": b"FROM scratch\n", "a.txt": b"one\n"}
    one, two = spooled(files, 1_000_000, "one"), spooled(files, 2_000_000, "two")
    assert one.digest != two.digest and one.files_digest == two.files_digest
    assert spooled({**files, "a.txt": b"two\n"}, 1_000_000, "three").files_digest != one.files_digest


def test_who_may_reuse(redis_url, tmp_path):
    settings = Settings(redis_url=redis_url, registries=[{"host": "127.0.0.1:5000"}],
                        webhooks={"repositories": {"acme/app": {"images": ["127.0.0.1:5000/app:{sha}"], "reuse": False},
                                                   "acme/secret": {"images": ["127.0.0.1:5000/s:{sha}"],
                                                                   "reuse_with_secrets": True}}})
    sha = "1" * 40

    def request(repository: str | None = None, **fields) -> BuildRequest:
        source = {"source": {"host": "github", "repository": repository, "sha": sha}} if repository else {}
        return BuildRequest(tags=["127.0.0.1:5000/app:1"], **source, **fields)

    assert build_asked(request(), settings) is None
    assert "reuse: false" in (build_asked(request(reuse=False), settings) or "")
    assert "no_cache" in (build_asked(request(no_cache=True), settings) or "")
    assert "acme/app" in (build_asked(request("acme/app"), settings) or "")
    assert "config" in (build_asked(request(), settings.model_copy(update={"reuse": False})) or "")
    secret = inputs(secrets=["npmrc"])
    assert "secrets" in (not_shared(request(), secret, settings, True) or "")
    assert not_shared(request("acme/secret"), secret, settings, True) is None
    assert not_shared(request(push=False), inputs(), settings, True) == "nothing is pushed"
    assert plan_for(request(), inputs(), settings, publishes=False) is None
    plan = plan_for(request(no_cache=True), inputs(), settings, True)
    assert plan is not None and plan.key == inputs().key() and plan.must_build


def test_a_turn_held_by_a_job_whose_worker_died_is_passed_over(redis_url, new_store):
    """The second of two jobs with one key waits while the first's lease lives (a cancel ends
    the wait), and goes on at once when the first's worker is gone (no lease)."""
    from runner.core.cancel import CancelToken
    from runner.core.errors import Cancelled
    from runner.worker.reuse import Plan, Reuse
    from tests.support import ListLog

    store = new_store()
    reuse = Reuse(Settings(redis_url=redis_url), registries=None, store=store)  # type: ignore[arg-type]
    plan = Plan(key="sha256:" + uuid.uuid4().hex, must_build=None)
    assert store.start_building(plan.key, "first", 60) is None
    store.acquire_lease("first", "worker-a", 30)
    cancel, log = CancelToken(), ListLog()
    threading.Timer(0.5, cancel.set, args=("cancelled",)).start()
    with pytest.raises(Cancelled), reuse.turn(plan, "second", cancel, log):
        pass
    assert "waiting for job first, which builds from the same inputs" in log.text
    store.release_lease("first", "worker-a")  # its worker died: the lease lapsed
    with reuse.turn(plan, "second", CancelToken(), ListLog()):
        assert store.start_building(plan.key, "third", 60) == "second"
    assert store.start_building(plan.key, "third", 60) is None  # released at the end of the turn


def test_the_dashboard_names_the_job_that_built_it():
    from runner.entry.dashboard.views import render

    request = BuildRequest(tags=["127.0.0.1:5000/app:v1"])
    record = JobRecord(id=request.id, request=request, executor="socket", queue="runner.socket", status=Status.succeeded,
                       images=[{"ref": "127.0.0.1:5000/app:v1", "digest": "sha256:" + "a" * 64}], reused_from="main-build-7")
    page = render("_record.html", r=record, rights=["read"], rerun_why=None)
    assert '<a href="/jobs/main-build-7">main-build-7</a>' in page and "badge reused" in page
    built = record.model_copy(update={"reused_from": None})
    assert "badge reused" not in render("_record.html", r=built, rights=["read"], rerun_why=None)

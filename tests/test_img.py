"""The img executor. img cannot be installed on these machines (not packaged for Debian,
upstream unmaintained), so:
- without img: check() says so, and a job routed to img fails at once on a real worker;
- the exact argv is pinned, and a FAKE `img` (a script standing in for the missing tool,
  recording how it was called and "pushing" with skopeo and the credentials it was handed)
  drives the executor end to end against the real registry;
- the real-img test runs only where `img` is on PATH."""

from __future__ import annotations

import io
import json
import shutil
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from pydantic import SecretStr

from executors.daemonless.common import private_root
from executors.daemonless.config import ImgConfig
from executors.daemonless.img import build_args, global_args, push_args
from runner.config.settings import Settings
from runner.config.signing import SigningConfig
from runner.context.pack import write_tar
from runner.context.spool import spool_context
from runner.core.cancel import CancelToken
from runner.core.errors import BuildFailed, InfrastructureError, InvalidJob
from runner.core.jobs import BuildRequest, ImageRef, JobRecord
from runner.core.registry_config import RegistryConfig
from runner.supply.keys import generate
from runner.worker.pipeline import Pipeline
from runner.worker.worker import Worker
from tests.conftest import registry_digest
from tests.support import ListLog, executor_for
from tests.support.cosign_check import Registry, verified_signatures, verified_statements

NO_IMG = shutil.which("img") is None
NO_IMG_REASON = "img is not installed: no `img` on PATH (not packaged for Debian; upstream unmaintained)"


def with_img(settings: Settings, **changes) -> Settings:
    config = settings.executors["img"].model_copy(update={"enabled": True, **changes})
    return settings.model_copy(update={"executors": {**settings.executors, "img": config}})


def context_for(settings: Settings, job: BuildRequest, tmp_path: Path, dockerfile: str):
    source = tmp_path / "src"
    source.mkdir(exist_ok=True)
    (source / "Dockerfile").write_text(dockerfile)
    buffer = io.BytesIO()
    write_tar(source, buffer)
    return spool_context([buffer.getvalue()], settings.worker.workspace / job.id, "Dockerfile", 10**8)


FAKE_IMG = '''#!{python}
# FAKE img: img cannot be installed here. Records argv, DOCKER_CONFIG and file modes (never
# credential values), then acts like img: build prints BuildKit-style steps (and fails like
# img on "exit 3"), push copies the base image to the ref with skopeo using the handed config.
import json, os, stat, subprocess, sys
args = sys.argv[1:]
docker_config = os.environ.get("DOCKER_CONFIG", "")
config_path = os.path.join(docker_config, "config.json")
entry = {{"argv": args, "docker_config_mode": None, "config_mode": None, "auth_hosts": []}}
if os.path.isfile(config_path):
    entry["docker_config_mode"] = stat.S_IMODE(os.stat(docker_config).st_mode)
    entry["config_mode"] = stat.S_IMODE(os.stat(config_path).st_mode)
    entry["auth_hosts"] = sorted(json.load(open(config_path))["auths"])
with open({record!r}, "a") as out:
    out.write(json.dumps(entry) + "\\n")
while args and args[0] in ("-s", "-b"):
    args = args[2:]
if args[0] == "version":
    print("img fake-0.5.11")
elif args[0] == "build":
    dockerfile = open(args[args.index("-f") + 1]).read()
    print("#1 [internal] load build definition from Dockerfile", flush=True)
    print("#5 [2/2] RUN echo about-to-fail && exit 3" if "exit 3" in dockerfile else "#5 [2/2] RUN echo hi", flush=True)
    if "exit 3" in dockerfile:
        print('error: failed to solve: process "/bin/sh -c echo about-to-fail && exit 3" did not complete successfully: exit code: 3')
        sys.exit(1)
elif args[0] == "push":
    tls = "--dest-tls-verify=false" if "--insecure-registry" in args else "--dest-tls-verify=true"
    # after a build for several platforms img pushes the list it named: here the two-platform base
    built = [json.loads(line)["argv"] for line in open({record!r})]
    builds = [a for a in built if "build" in a]
    several = builds and "--platform" in builds[-1] and "," in builds[-1][builds[-1].index("--platform") + 1]
    source = ["--all", "docker://{multi_base}"] if several else ["docker://{base}"]
    result = subprocess.run(["skopeo", "copy", "--authfile", config_path, "--src-tls-verify=false", tls,
                             *source, "docker://" + args[-1]], capture_output=True, text=True)
    print(result.stdout + result.stderr)
    sys.exit(result.returncode)
'''


@pytest.fixture
def fake_img(harness, tmp_path) -> tuple[Path, Path]:
    record = tmp_path / "img-calls.jsonl"
    script = tmp_path / "fake-img"
    script.write_text(FAKE_IMG.format(python=sys.executable, record=str(record), base=harness.services["RUNNER_DEV_BASE_IMAGE"],
                                      multi_base=harness.services["RUNNER_DEV_MULTI_BASE_IMAGE"]))
    script.chmod(0o755)
    return script, record


def calls(record: Path) -> list[dict]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


# -- without img ---------------------------------------------------------------------------------
@pytest.mark.skipif(not NO_IMG, reason="img is installed here")
def test_check_says_img_is_not_installed_and_a_job_fails_at_once(harness, tmp_path):
    settings = with_img(harness.settings)
    executor = executor_for(settings, "img")
    result = executor.check()
    assert not result.ok
    assert "img is not installed (no `img` on PATH)" in result.summary and "buildah executor" in result.summary
    job = BuildRequest(tags=[f"{harness.registry()}/img-test/a:1"], executor="img")
    started = time.monotonic()
    with pytest.raises(InfrastructureError, match="img is not installed"):
        executor.run(job, context_for(settings, job, tmp_path, "FROM scratch\n"), ListLog(), CancelToken())
    assert time.monotonic() - started < 2
    executor.cleanup(job.id)
    assert not private_root(executor.env, "img", job.id).exists()


@pytest.mark.skipif(not NO_IMG, reason="img is installed here")
def test_real_worker_fails_an_img_job_at_once_and_keeps_running(make_harness, tmp_path):
    """A worker told to take the img queue: the job fails with the reason, the worker lives on,
    and `runner doctor` names the problem."""
    h = make_harness(executors={"img": {"enabled": True}})
    h.worker_proc = h.start_worker("--queues", h.settings.queue_for("img"))
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    started = time.monotonic()
    result = h.cli("submit", str(tmp_path), "--executor", "img", "-t", f"{h.registry()}/img-test/b:1", "--json", timeout=60)
    record = json.loads(result.stdout)
    assert time.monotonic() - started < 30
    assert result.returncode == 3 and record["status"] == "failed"  # 3: infrastructure
    assert record["error"]["kind"] == "infrastructure" and "img is not installed" in record["error"]["message"]
    assert h.worker_proc.poll() is None
    doctor = h.cli("doctor").stdout
    assert "img" in doctor and "img is not installed" in doctor


# -- argv, pinned --------------------------------------------------------------------------------
def test_img_argv_pinned(tmp_path):
    config = ImgConfig(enabled=True, state_dir=Path("/var/lib/runner/img"), backend="native", cache_repo="reg:5000/cache")
    job = BuildRequest(tags=["reg:5000/app:1", "reg:5000/app:latest"], build_args={"A": "1"}, labels={"team": "ci"},
                       target="final", platform="linux/arm64", no_cache=True, secrets=["npmrc"])
    assert global_args(config) == ["-s", "/var/lib/runner/img", "-b", "native"]
    assert build_args(config, job, tmp_path / "ctx", tmp_path / "ctx/Dockerfile", [("npmrc", tmp_path / "secrets/0")]) == [
        "build", "--no-console", "-f", f"{tmp_path}/ctx/Dockerfile", "-t", "reg:5000/app:1", "-t", "reg:5000/app:latest",
        "--no-cache", "--target", "final", "--platform", "linux/arm64", "--label", "team=ci", "--build-arg", "A=1",
        "--secret", f"id=npmrc,src={tmp_path}/secrets/0", "--cache-from", "reg:5000/cache", "--cache-to", "reg:5000/cache",
        f"{tmp_path}/ctx",
    ]
    assert push_args(ImageRef.parse("127.0.0.1:5000/app:1"), insecure=True) == ["push", "--insecure-registry", "127.0.0.1:5000/app:1"]
    assert push_args(ImageRef.parse("reg.example.com/app:1"), insecure=False) == ["push", "reg.example.com/app:1"]


def test_secret_build_args_are_refused_on_img(harness, fake_img, tmp_path):
    settings = with_img(harness.settings, binary=str(fake_img[0]))
    job = BuildRequest(tags=[f"{harness.registry()}/img-test/c:1"], build_args={"T": "v"}, secret_build_args=["T"])
    with pytest.raises(InvalidJob, match="command line"):
        executor_for(settings, "img").run(job, context_for(settings, job, tmp_path, "FROM scratch\n"), ListLog(), CancelToken())
    assert calls(fake_img[1]) == []


# -- a FAKE img end to end -----------------------------------------------------------------------
def test_fake_img_builds_pushes_once_tags_the_rest_with_per_job_docker_config(harness, fake_img, tmp_path):
    """Three tags, one push: the second tag (same repository) and the third (another
    repository) get the pushed manifest without a push."""
    script, record = fake_img
    value = f"secret-{uuid.uuid4().hex}"
    settings = with_img(harness.settings, binary=str(script), state_dir=tmp_path / "img-state")
    settings = settings.model_copy(update={"build_secrets": {"npmrc": SecretStr(value)}})
    tags = [f"{harness.registry()}/img-test/{repo}:{t}-{uuid.uuid4().hex[:6]}"
            for repo, t in (("fake", "1"), ("fake", "latest"), ("fake-other", "1"))]
    job = BuildRequest(tags=tags, secrets=["npmrc"])
    context = context_for(settings, job, tmp_path, "FROM scratch\nCOPY Dockerfile /\n")
    log = ListLog()
    executor = executor_for(settings, "img")
    pushed = executor.run(job, context, log, CancelToken())
    private = private_root(executor.env, "img", job.id)
    assert sorted(p.name for p in private.iterdir()) == ["refs.json"]  # credentials and secrets already gone
    executor.cleanup(job.id)
    assert not private.exists()

    build, push, remove = calls(record)
    assert build["argv"] == [*global_args(settings.executors["img"]),
                             *build_args(settings.executors["img"], job, context.workspace / "img-context",
                                         context.workspace / "img-aside/Dockerfile", [("npmrc", private / "secrets/0")])]
    assert build["docker_config_mode"] == 0o700 and build["config_mode"] == 0o600
    assert "127.0.0.1:5000" in build["auth_hosts"]
    assert push["argv"] == [*global_args(settings.executors["img"]), "push", "--insecure-registry", tags[0]]
    assert f"[runner] tagged {tags[1]} " in log.text and f"[runner] tagged {tags[2]} " in log.text
    assert remove["argv"] == [*global_args(settings.executors["img"]), "rm", *tags]
    assert all(harness.services["RUNNER_DEV_REGISTRY_PASSWORD"] not in " ".join(c["argv"]) and value not in " ".join(c["argv"])
               for c in calls(record))
    # masked in the job's log: the build secret, and every registry password the auth file holds
    assert value in log.secrets and harness.services["RUNNER_DEV_REGISTRY_PASSWORD"] in log.secrets
    assert [p.ref for p in pushed] == tags
    assert {p.digest for p in pushed} == {registry_digest(harness.services, t) for t in tags}
    assert len({p.digest for p in pushed}) == 1
    assert stat.S_IMODE((tmp_path / "fake-img").stat().st_mode) == 0o755


def test_fake_img_images_are_signed_with_provenance(harness, fake_img, tmp_path):
    """img on the real pipeline (a worker in this process), signing with a key: the digest the
    fake img pushed has its `.sig` and `.att` tags, verified by the tests' own code
    (tests/contract/test_signing.py does this on every executor that can run here)."""
    private, public = generate(tmp_path / "cosign", None)
    settings = with_img(harness.settings, binary=str(fake_img[0]), state_dir=tmp_path / "img-state")
    settings = settings.model_copy(update={"signing": SigningConfig(key_file=private)})
    worker = Worker(settings, names=["img"], worker_id=f"img-signing-{uuid.uuid4().hex[:6]}")
    repository = f"img-test/signed-{uuid.uuid4().hex[:6]}"
    base = harness.services["RUNNER_DEV_BASE_IMAGE"]
    job = BuildRequest(tags=[f"{harness.registry()}/{repository}:1"], executor="img")
    worker.store.create(JobRecord(id=job.id, request=job, executor="img", queue="img-signing"))
    writer = worker.store.context_writer(job.id, 10**6)
    source = tmp_path / "ctx"
    source.mkdir()
    (source / "Dockerfile").write_text(f"FROM {base}\nRUN echo hi\n")
    buffer = io.BytesIO()
    write_tar(source, buffer)
    writer.write(buffer.getvalue())
    writer.close()
    record = Pipeline(worker).run(job)
    assert record.status.value == "succeeded", record.error
    [pushed] = record.images
    assert pushed.digest == registry_digest(harness.services, job.tags[0])
    reader = Registry(harness.registry(), harness.services["RUNNER_DEV_REGISTRY_USER"], harness.services["RUNNER_DEV_REGISTRY_PASSWORD"])
    [payload] = verified_signatures(reader.attached(repository, pushed.digest, "sig"), public.read_bytes())
    assert payload["critical"]["image"]["docker-manifest-digest"] == pushed.digest
    [statement] = verified_statements(reader.attached(repository, pushed.digest, "att"), public.read_bytes())
    assert statement["subject"][0]["digest"]["sha256"] == pushed.digest.removeprefix("sha256:")
    [dependency] = [d for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"] if d.get("name") == base]
    assert dependency["digest"]["sha256"] == registry_digest(harness.services, base).removeprefix("sha256:")
    assert record.attestation is not None and record.attestation.signed


def test_unreadable_password_file_fails_before_img_runs(harness, fake_img, tmp_path):
    """The push target's password_file cannot be read: an infrastructure error naming the
    registry and the setting (never the path), before img is started at all."""
    settings = with_img(harness.settings, binary=str(fake_img[0]), state_dir=tmp_path / "img-state")
    registries = [r for r in settings.registries if r.host != harness.registry()]
    registries.append(RegistryConfig(host=harness.registry(), username="ci", password_file=tmp_path / "missing" / "pw"))
    settings = settings.model_copy(update={"registries": registries})
    job = BuildRequest(tags=[f"{harness.registry()}/img-test/pwfile:1"])
    executor = executor_for(settings, "img")
    with pytest.raises(InfrastructureError) as failure:
        executor.run(job, context_for(settings, job, tmp_path, "FROM scratch\n"), ListLog(), CancelToken())
    executor.cleanup(job.id)
    assert failure.value.message.startswith(f"registry {harness.registry()}: password_file: cannot read it")
    assert str(tmp_path) not in failure.value.message
    assert calls(fake_img[1]) == []


def test_fake_img_failing_step_is_a_build_failure_naming_the_step(harness, fake_img, tmp_path):
    settings = with_img(harness.settings, binary=str(fake_img[0]), state_dir=tmp_path / "img-state")
    job = BuildRequest(tags=[f"{harness.registry()}/img-test/fail:1"])
    context = context_for(settings, job, tmp_path, "FROM scratch\nRUN echo about-to-fail && exit 3\n")
    executor = executor_for(settings, "img")
    with pytest.raises(BuildFailed) as failure:
        executor.run(job, context, ListLog(), CancelToken())
    executor.cleanup(job.id)
    assert failure.value.message.startswith("build failed at step 2/2 (RUN echo about-to-fail && exit 3): error: failed to solve")
    assert [c["argv"][4] for c in calls(fake_img[1])] == ["build", "rm"]  # no push after a failed build; tags removed


def test_fake_img_multi_platform_job_reports_the_pushed_index_and_each_platform(harness, fake_img, tmp_path):
    """`img build --platform a,b` names a list, `img push` pushes it (the FAKE img pushes the
    two-platform base): the record has the index's digest under every tag and each platform's
    manifest digest, as the registry lists them."""
    script, record = fake_img
    settings = with_img(harness.settings, binary=str(script), state_dir=tmp_path / "img-state")
    tags = [f"{harness.registry()}/img-test/multi:{t}-{uuid.uuid4().hex[:6]}" for t in ("1", "latest")]
    job = BuildRequest(tags=tags, platforms=["linux/amd64", "linux/arm64"])
    executor = executor_for(settings, "img")
    try:
        pushed = executor.run(job, context_for(settings, job, tmp_path, "FROM scratch\n"), ListLog(), CancelToken())
    finally:
        executor.cleanup(job.id)
    build = calls(record)[0]["argv"]
    assert build[build.index("--platform") + 1] == "linux/amd64,linux/arm64"
    creds = f"{harness.services['RUNNER_DEV_REGISTRY_USER']}:{harness.services['RUNNER_DEV_REGISTRY_PASSWORD']}"
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", creds, f"docker://{tags[0]}"],
                         capture_output=True, check=True).stdout
    listed = {f"{m['platform']['os']}/{m['platform']['architecture']}": m["digest"] for m in json.loads(raw)["manifests"]}
    for image in pushed:
        assert image.digest == registry_digest(harness.services, image.ref)
        assert {p.platform: p.digest for p in image.platforms} == listed and sorted(listed) == ["linux/amd64", "linux/arm64"]


# -- the real img ----------------------------------------------------------------------------------
@pytest.mark.skipif(NO_IMG, reason=NO_IMG_REASON)
def test_real_img_builds_and_pushes(harness, tmp_path):  # pragma: no cover - needs img
    settings = with_img(harness.settings, state_dir=tmp_path / "img-state")
    tag = f"{harness.registry()}/img-test/real:{uuid.uuid4().hex[:8]}"
    job = BuildRequest(tags=[tag])
    context = context_for(settings, job, tmp_path, "FROM scratch\nCOPY Dockerfile /Dockerfile\n")  # no base image to pull
    executor = executor_for(settings, "img")
    assert executor.check().ok
    try:
        [pushed] = executor.run(job, context, ListLog(), CancelToken())
    finally:
        executor.cleanup(job.id)
    assert pushed.digest == registry_digest(harness.services, tag)

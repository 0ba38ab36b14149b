"""The buildah executor: the argv it runs, where credentials and secrets travel, storage and
isolation choice, streaming, cancel / timeout / crash cleanup, the registry cache, and a
build on a worker that cannot reach any Docker Engine. Real buildah, registry and Redis."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import SecretStr

import executors.daemonless.buildah as bx
from executors.daemonless.buildah import BuildahExecutor, BuildOutput, JobPaths, Mode, build_args, push_args
from executors.daemonless.common import (
    JobFiles,
    check_push_logins,
    private_root,
    registries_conf,
    registry_auths,
    secret_arg_env,
    write_cert_dir,
)
from executors.daemonless.config import BuildahConfig
from runner.config.settings import Settings
from runner.context.build_context import BuildContext
from runner.core.cancel import CancelToken
from runner.core.errors import BuildFailed, InfrastructureError, InvalidJob, RegistryAuthFailed
from runner.core.jobs import BuildRequest, ImageRef, PushedImage
from runner.core.output_pipe import LineAssembler
from runner.core.registry_client import Registries
from runner.store.joblog import JobLog
from runner.worker import reaper
from tests.conftest import WRONG_PASSWORD_HOST, registry_digest, run_image
from tests.support import ListLog, all_support, executor_for, spooled_context
from tests.support.buildah import skip_reason

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")

PASSWORD = "ci-password"
#: what job_leftovers finds once a job is cleaned up
CLEAN = {"containers": [], "processes": [], "runc": [], "private_dir": False}


# -- helpers -----------------------------------------------------------------------------------
def with_buildah(settings: Settings, **changes) -> Settings:
    config = settings.executors["buildah"].model_copy(update=changes)
    return settings.model_copy(update={"executors": {**settings.executors, "buildah": config}})


def namespaced(settings: Settings, namespace: str) -> Settings:
    return settings.model_copy(update={"worker": settings.worker.model_copy(update={"namespace": namespace})})


def make_context(settings: Settings, job: BuildRequest, tmp_path: Path, files: dict[str, str]) -> BuildContext:
    return spooled_context(settings, job, tmp_path / f"src-{job.id[:8]}", files)


def build(settings: Settings, job: BuildRequest, tmp_path: Path, dockerfile: str) -> tuple[list[PushedImage], ListLog]:
    """Run `job` (its context: `dockerfile` alone) on a buildah executor of `settings`, cleaned up
    after; what it pushed and its log."""
    log = ListLog()
    executor = executor_for(settings, "buildah")
    try:
        return executor.run(job, make_context(settings, job, tmp_path, {"Dockerfile": dockerfile}), log, CancelToken()), log
    finally:
        executor.cleanup(job.id)


def image(harness, name: str) -> str:
    return f"{harness.registry()}/buildah-test/{name}:{uuid.uuid4().hex[:8]}"


def base(harness) -> str:
    return harness.services["RUNNER_DEV_BASE_IMAGE"]


def processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry.name}: {cmdline}")
    return found


def job_leftovers(executor: BuildahExecutor, job_id: str) -> dict:
    mode = executor.mode()
    runc = subprocess.run(["runc", "list", "--format", "json"], capture_output=True, text=True).stdout
    private = str(private_root(executor.env, "buildah", job_id))
    return {
        "containers": executor.containers_by_job(executor.tool(mode), mode).get(job_id, []),
        "processes": processes_mentioning(job_id),
        "runc": [c["id"] for c in json.loads(runc or "null") or [] if c.get("bundle", "").startswith(private)],
        "private_dir": Path(private).exists(),
    }


def run_in_thread(executor, job, context, log, cancel):
    outcome: dict = {}

    def target():
        try:
            outcome["images"] = executor.run(job, context, log, cancel)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def wait_for_line(log: ListLog, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.text:
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in the log:\n{log.text}")


@pytest.fixture
def settings(harness) -> Settings:
    """The harness's settings in a namespace of their own: the jobs these tests hand the
    executor directly have no record in the store, so the session worker's sweep (which
    removes what jobs of its namespace that are not live left) must not see them."""
    return namespaced(harness.settings, f"direct-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def storage(tmp_path):
    """A private storage root for tests that must not share the worker's layer cache."""
    root = Path(f"/var/tmp/runner-test-buildah-{uuid.uuid4().hex[:8]}")
    yield root
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines() if line.split()[1].startswith(f"{root}/")]
    for mount in sorted(mounts, reverse=True):
        subprocess.run(["umount", mount], capture_output=True)
    subprocess.run(["rm", "-rf", str(root)], check=True)


# -- the argv, pinned --------------------------------------------------------------------------
def test_build_and_push_argv_name_secrets_but_never_carry_them(tmp_path):
    config = BuildahConfig(enabled=True, cache_repo="127.0.0.1:5000/cache/app", format="docker")
    mode = Mode("buildah", "1.28.2", "overlay", "oci", "test")
    job = BuildRequest(id="job-1", tags=["127.0.0.1:5000/app:1"], build_args={"A": "1", "TOKEN": "hunter2"},
                       secret_build_args=["TOKEN"], labels={"team": "ci"}, target="final", platform="linux/amd64",
                       no_cache=True, cache_key="Main", dockerfile="docker/Dockerfile")
    paths = JobPaths(context=tmp_path / "ctx", dockerfile=tmp_path / "aside/docker/Dockerfile", authfile=tmp_path / "auth.json",
                     iidfile=tmp_path / "iid", ignorefile=tmp_path / "ignorefile", cert_dir=tmp_path / "certs",
                     secrets=(("npmrc", tmp_path / "secrets/0"),))
    assert build_args(config, mode, job, paths, "ns-1") == [
        "build", "--layers", "--force-rm", "--format", "docker",  # oci isolation as root: buildah's own default
        "--authfile", f"{tmp_path}/auth.json", "--iidfile", f"{tmp_path}/iid", "-f", f"{tmp_path}/aside/docker/Dockerfile",
        "--ignorefile", f"{tmp_path}/ignorefile", "--cert-dir", f"{tmp_path}/certs", "--no-cache", "--target", "final", "--platform", "linux/amd64",
        "--label", "team=ci", "--build-arg", "A=1", "--build-arg", "TOKEN",
        "--secret", f"id=npmrc,src={tmp_path}/secrets/0",
        "--cache-from", "127.0.0.1:5000/cache/app/main", "--cache-to", "127.0.0.1:5000/cache/app/main",
        "--build-arg", "IO_RUNNER_JOB=job-1", "--build-arg", "IO_RUNNER_NAMESPACE=ns-1",
        f"{tmp_path}/ctx",
    ]
    assert mode.global_args(config) == ["--root", "/var/lib/runner/buildah", "--runroot", "/run/runner/buildah",
                                        "--storage-driver", "overlay"]
    push = push_args(config, "abc123", ImageRef.parse("127.0.0.1:5000/app:1"), paths, tmp_path / "d")
    assert push == ["push", "--retry", "0", "--authfile", f"{tmp_path}/auth.json", "--format", "v2s2", "--digestfile", f"{tmp_path}/d",
                    "--cert-dir", f"{tmp_path}/certs", "abc123", "docker://127.0.0.1:5000/app:1"]
    assert secret_arg_env(job) == {"TOKEN": "hunter2"}
    # defaults are not repeated: oci format, and the isolation buildah picks itself; chroot is said
    plain = BuildahConfig(enabled=True, keep_images=True)
    chroot = Mode("buildah", "1.28.2", "vfs", "chroot", "test")
    argv = build_args(plain, chroot, job, paths, "ns-1")
    assert "--format" not in argv and argv[argv.index("--isolation") + 1] == "chroot"
    assert argv[argv.index("-t") + 1] == "127.0.0.1:5000/app:1"  # keep_images: named by the build, no extra process
    assert "--format" not in push_args(plain, "abc123", ImageRef.parse("127.0.0.1:5000/app:1"), paths, tmp_path / "d")


def test_build_then_push_is_one_process_start_and_quotes_only_paths(tmp_path):
    """The build and the first push run from one `sh -c`: the build's argv as the script's
    arguments (never parsed by a shell), the push's words quoted into the script."""
    odd = tmp_path / "it's a dir"
    odd.mkdir()
    iid, digest = odd / "iid", odd / "digest"
    fake = odd / "fake-buildah"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$*" >> "$(dirname "$0")/calls"\n'
                    'if [ "$1" = build ]; then echo "STEP 1/1: FROM x"; echo sha256:abc > "$(dirname "$0")/iid"; fi\n')
    fake.chmod(0o755)
    build = ["build", "--iidfile", str(iid), "--label", "a=$(touch pwned) ; `x`", str(odd)]
    push = ["push", "--digestfile", str(digest), "", "docker://127.0.0.1:5000/app:1"]
    marker = "[runner] built 0123"
    log = ListLog()
    output = bx.BuildThenPush(BuildOutput(log), bx.ToolOutput(log), marker)
    code = bx.Tool("sh").stream(bx.build_then_push([str(fake)], build, push, iid, marker), output, CancelToken())
    assert code == 0 and output.built
    assert (odd / "calls").read_text().splitlines() == [
        " ".join(build), f"push --digestfile {digest} abc docker://127.0.0.1:5000/app:1"]
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    assert marker not in log.text and output.build.step == ("1/1", "FROM x")


def test_secret_build_arg_with_a_name_the_tool_reads_is_refused():
    job = BuildRequest(tags=["127.0.0.1:5000/app:1"], build_args={"BUILDAH_ISOLATION": "x"}, secret_build_args=["BUILDAH_ISOLATION"])
    with pytest.raises(InvalidJob, match="rename the build arg"):
        secret_arg_env(job)


def test_registry_files_auth_insecure_and_ca(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nfake\n-----END CERTIFICATE-----\n")
    settings = Settings(registries=[
        {"host": "127.0.0.1:5000", "username": "ci", "password": PASSWORD},
        {"host": "registry.internal:5000", "username": "bot", "password": "p2", "insecure": True},
        {"host": "tls.example.com", "ca_file": str(ca)},
    ])
    auths = registry_auths(Registries(settings.registries), ListLog())["auths"]
    assert set(auths) == {"127.0.0.1:5000", "registry.internal:5000"}
    assert auths["127.0.0.1:5000"]["auth"] == "Y2k6Y2ktcGFzc3dvcmQ="  # base64 of ci:ci-password
    conf = registries_conf(settings.registries)
    assert 'location = "127.0.0.1:5000"\ninsecure = true' in conf
    assert 'location = "registry.internal:5000"\ninsecure = true' in conf and "tls.example.com" not in conf
    assert registries_conf(Settings(registries=[{"host": "tls.example.com"}]).registries) is None
    broken = Settings(registries=[{"host": "127.0.0.1:5000", "username": "ci", "password": PASSWORD},
                                  {"host": "other:5000", "username": "u", "password_file": str(tmp_path / "missing")}])
    log = ListLog()
    assert set(registry_auths(Registries(broken.registries), log)["auths"]) == {"127.0.0.1:5000"}  # one unreadable file does not stop every job
    assert "registry other:5000: password_file: cannot read it: No such file" in log.text and str(tmp_path) not in log.text
    assert log.secrets == [PASSWORD]  # what the auth file holds is masked in the job's log
    with pytest.raises(InfrastructureError, match="password_file: cannot read it"):  # a registry the job pushes to
        check_push_logins(Registries(broken.registries), [ImageRef.parse("other:5000/app:1")], log)
    files = JobFiles(tmp_path / "private").create()
    certs = write_cert_dir(settings.registries, files)
    assert (certs / "tls.example.com.crt").read_text() == ca.read_text()
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o700
    assert stat.S_IMODE((certs / "tls.example.com.crt").stat().st_mode) == 0o600
    files.remove()
    files.remove()  # idempotent
    assert not (tmp_path / "private").exists()


def test_output_names_the_failing_step_and_tells_auth_from_build_errors():
    log = ListLog()
    output = BuildOutput(log)
    output(["STEP 1/2: FROM base", "STEP 2/2: RUN curl x",
            "[Warning] one or more build args were not consumed: [IO_RUNNER_JOB IO_RUNNER_NAMESPACE]",
            "[Warning] one or more build args were not consumed: [FOO IO_RUNNER_JOB IO_RUNNER_NAMESPACE]",
            'Error: building at STEP "RUN curl x": while running runtime: exit status 22 (unauthorized)'])
    assert log.writes == 1  # lines that arrive together reach the store in one append
    failure = output.failure(1)
    assert isinstance(failure, BuildFailed)
    assert failure.message == "build failed at step 2/2 (RUN curl x): while running runtime: exit status 22 (unauthorized)"
    assert "IO_RUNNER" not in log.text and "not consumed: [FOO]" in log.text
    output(["Error: creating build container: initializing source docker://reg:5000/base:1: reading manifest 1 in reg:5000/base: "
           "unauthorized: authentication required"])
    failure = output.failure(125)
    assert isinstance(failure, RegistryAuthFailed)
    assert failure.message.startswith("the registry refused our credentials while pulling reg:5000/base:1: unauthorized")


def test_marked_lines_are_found_inside_big_batches_of_plain_output():
    """A batch without a marked line skips `handle`; one with a marked line anywhere in it
    (not only first) is looked at line by line."""
    log = ListLog()
    output = BuildOutput(log)
    plain = [f"{n}" for n in range(10_000)]
    output(plain)
    assert log.lines == plain and log.writes == 1 and list(output.lines) == plain[-output.KEEP:]
    output([*plain[:500], "[Warning] one or more build args were not consumed: [IO_RUNNER_JOB]", "STEP 3/4: RUN make",
            *plain[:500], "Error: building at STEP \"RUN make\": exit status 2", "after"])
    assert "IO_RUNNER_JOB" not in log.text and output.step == ("3/4", "RUN make") and log.writes == 2
    assert output.failure(2).message == "build failed at step 3/4 (RUN make): exit status 2"
    assert output.lines[-1] == "after" and len(output.lines) == output.KEEP


def test_line_splitter_keeps_utf8_split_across_chunks():
    batches = []
    splitter = LineAssembler(batches.append)
    data = "naïve line\nsecond ✓\ntail".encode()
    cut = data.index("✓".encode()) + 1  # inside the three bytes of ✓
    splitter.feed(data[:cut])
    splitter.feed(data[cut:])
    splitter.close()
    assert batches == [["naïve line"], ["second ✓"], ["tail"]]


def test_auto_isolation_follows_privileges(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert bx.auto_isolation()[0] == "rootless"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(bx, "has_cap_sys_admin", lambda: False)
    assert bx.auto_isolation() == ("chroot", "no CAP_SYS_ADMIN, as in an unprivileged container")
    monkeypatch.setattr(bx, "has_cap_sys_admin", lambda: True)
    monkeypatch.setattr(bx.shutil, "which", lambda name: "/usr/sbin/runc" if name == "runc" else None)
    assert bx.auto_isolation()[0] == "oci"


# -- check() -----------------------------------------------------------------------------------
def test_check_reports_version_storage_and_isolation(settings):
    result = executor_for(settings, "buildah").check()
    version = subprocess.run(["buildah", "--version"], capture_output=True, text=True).stdout.split()[2]
    assert result.ok, result.summary
    assert result.details["version"] == version and f"buildah {version}" in result.summary
    assert result.details["storage_driver"] == "overlay"  # overlay works on this host
    assert result.details["isolation"] == "oci"  # root with CAP_SYS_ADMIN on a host


def test_missing_binary_is_reported_and_fails_the_job_at_once(settings, tmp_path):
    broken = with_buildah(settings, binary="buildah-not-installed-here")
    result = executor_for(broken, "buildah").check()
    assert not result.ok and "buildah-not-installed-here is not installed" in result.summary and "apt-get install buildah" in result.summary
    job = BuildRequest(tags=["127.0.0.1:5000/x/y:1"])
    started = time.monotonic()
    with pytest.raises(InfrastructureError, match="not installed"):
        executor_for(broken, "buildah").run(job, make_context(broken, job, tmp_path, {"Dockerfile": "FROM scratch\n"}), ListLog(), CancelToken())
    assert time.monotonic() - started < 5
    executor_for(broken, "buildah").cleanup(job.id)  # never raises


def test_overlay_unusable_falls_back_to_vfs_and_chroot_builds(harness, settings, storage, tmp_path):
    """auto picks vfs, and says why, when buildah cannot set up overlay storage; a forced overlay
    is refused with the reason; vfs + chroot (the unprivileged-container mode) builds and pushes.
    This kernel allows overlay everywhere we can mount, so a storage root where buildah cannot
    create its overlay directory stands in for a kernel that refuses it (same code path)."""
    roots = {"storage_root": storage / "root", "run_root": storage / "run"}
    (storage / "root").mkdir(parents=True)
    (storage / "root/overlay").write_text("not a directory")
    auto = executor_for(with_buildah(settings, **roots), "buildah").check()
    assert auto.ok and auto.details["storage_driver"] == "vfs"
    assert "overlay unusable: mkdir" in auto.summary and "not a directory" in auto.summary
    forced = executor_for(with_buildah(settings, storage_driver="overlay", **roots), "buildah").check()
    assert not forced.ok and "overlay storage is not usable here" in forced.summary and "storage_driver" in forced.summary

    chroot = with_buildah(settings, isolation="chroot", **roots)
    job = BuildRequest(tags=[image(harness, "vfs-chroot")])
    [pushed], log = build(chroot, job, tmp_path, f"FROM {base(harness)}\nRUN echo via-chroot > /how\n")
    assert "storage vfs, isolation chroot" in log.text
    assert pushed.digest == registry_digest(harness.services, job.tags[0])
    assert run_image(job.tags[0], "cat", "/how").strip() == "via-chroot"
    subprocess.run(["buildah", "--root", str(roots["storage_root"]), "--runroot", str(roots["run_root"]),
                    "--storage-driver", "vfs", "rmi", "--all", "--force"], capture_output=True)


# -- credentials, secrets, streaming -----------------------------------------------------------
def test_credentials_and_secrets_travel_in_private_files_never_in_argv(harness, settings, tmp_path):
    secret_value = f"build-secret-{uuid.uuid4().hex}"
    arg_value = f"arg-secret-{uuid.uuid4().hex}"
    secured = settings.model_copy(update={"build_secrets": {"npmrc": SecretStr(secret_value)}})
    job = BuildRequest(tags=[image(harness, "secrets")], build_args={"TOKEN": arg_value}, secret_build_args=["TOKEN"],
                       secrets=["npmrc"])
    context = make_context(secured, job, tmp_path, {"Dockerfile": (
        f"FROM {base(harness)}\nARG TOKEN\n"
        "RUN --mount=type=secret,id=npmrc echo \"secret-bytes=$(cat /run/secrets/npmrc | wc -c)\" "
        "&& echo \"arg-bytes=$(printf %s \"$TOKEN\" | wc -c)\" && echo holding-$((6*7)) && sleep 3\n")})
    log = JobLog(harness.store, job.id, job.secret_values())
    executor = executor_for(secured, "buildah")
    thread, outcome = run_in_thread(executor, job, context, log, CancelToken())
    private = private_root(executor.env, "buildah", job.id)
    deadline = time.monotonic() + 60
    while "holding-42" not in "\n".join(harness.store.read_log(job.id)) and time.monotonic() < deadline:
        time.sleep(0.05)
    token = registry_auths(Registries(secured.registries), ListLog())["auths"]["127.0.0.1:5000"]["auth"]
    try:
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        assert stat.S_IMODE((private / "auth.json").stat().st_mode) == 0o600
        assert stat.S_IMODE((private / "secrets/0").stat().st_mode) == 0o600
        assert processes_mentioning(job.id), "the build should be running now"
        for value in (PASSWORD, token, secret_value, arg_value):
            assert not processes_mentioning(value), f"{value[:6]}… visible in a process argv"
    finally:
        thread.join(120)
        executor.cleanup(job.id)
    assert "images" in outcome, outcome.get("error")
    text = "\n".join(harness.store.read_log(job.id))
    assert f"secret-bytes={len(secret_value)}" in text and f"arg-bytes={len(arg_value)}" in text  # both reached the RUN step
    assert secret_value not in text and arg_value not in text and PASSWORD not in text
    assert not private.exists()


def test_output_streams_into_the_log_as_it_happens(harness, settings, tmp_path):
    job = BuildRequest(tags=[image(harness, "stream")], no_cache=True)
    _, log = build(settings, job, tmp_path, f"FROM {base(harness)}\nRUN echo first-$((1)) && sleep 2 && echo second-$((2))\n")
    times = dict(zip(log.lines, log.times, strict=True))
    assert times["second-2"] - times["first-1"] >= 1.5


def test_layer_cache_is_reused_across_jobs(harness, settings, tmp_path):
    dockerfile = f"FROM {base(harness)}\nRUN echo cached-{uuid.uuid4().hex} > /c\n"
    results = []
    for _ in range(2):
        [pushed], log = build(settings, BuildRequest(tags=[image(harness, "layers")]), tmp_path, dockerfile)
        results.append((pushed.digest, log.text))
    assert "Using cache" not in results[0][1] and "Using cache" in results[1][1]
    assert results[0][0] == results[1][0]


def test_registry_cache_feeds_a_worker_with_an_empty_store(harness, settings, storage, tmp_path):
    repo = f"{harness.registry()}/buildah-test/cache-{uuid.uuid4().hex[:8]}"
    dockerfile = f"FROM {base(harness)}\nRUN echo remote-{uuid.uuid4().hex} > /r\n"
    logs = []
    for name in ("first", "second"):  # two workers: two empty storage roots
        worker = with_buildah(settings, cache_repo=repo, storage_root=storage / name / "root", run_root=storage / name / "run")
        _, log = build(worker, BuildRequest(tags=[image(harness, "remote-cache")]), tmp_path, dockerfile)
        logs.append(log.text)
        subprocess.run(["buildah", "--root", str(storage / name / "root"), "--runroot", str(storage / name / "run"),
                        "rmi", "--all", "--force"], capture_output=True)
    assert f"Pushing cache {repo}:" in logs[0]
    assert f"Cache pulled from remote {repo}:" in logs[1]


def test_a_cache_the_registry_refuses_fails_no_job(harness, settings, storage, tmp_path):
    """buildah 1.28 ends a build when a step's --cache-to push is refused; the executor builds
    again without writing the cache (the steps are local by then) and the image is pushed."""
    repo = f"{WRONG_PASSWORD_HOST}/buildah-test/refused-{uuid.uuid4().hex[:8]}"  # the same registry, wrong password
    worker = with_buildah(settings, cache_repo=repo, storage_root=storage / "refused" / "root",
                          run_root=storage / "refused" / "run")
    dockerfile = f"FROM {base(harness)}\nRUN echo refused-{uuid.uuid4().hex} > /r\n"
    job = BuildRequest(tags=[image(harness, "refused-cache")])
    [pushed], log = build(worker, job, tmp_path, dockerfile)
    assert f"Pushing cache {repo}:" in log.text and "the registry cache could not be written" in log.text, log.text
    assert pushed.digest == registry_digest(harness.services, job.tags[0])
    assert log.text.count("Using cache") >= 1  # the second build took the first one's steps


def test_docker_format_keep_images_and_no_push(harness, settings, tmp_path):
    keep = with_buildah(settings, format="docker", keep_images=True)
    tags = [image(harness, "keep"), image(harness, "keep")]
    dockerfile = f"FROM {base(harness)}\nRUN echo kept-{uuid.uuid4().hex} > /k\n"
    jobs = [BuildRequest(tags=tags[:1]), BuildRequest(tags=tags[1:], push=False)]
    executor = executor_for(keep, "buildah")
    mode = executor.mode()
    try:
        results = []
        for job in jobs:
            results.append(executor.run(job, make_context(keep, job, tmp_path, {"Dockerfile": dockerfile}), ListLog(), CancelToken()))
            executor.cleanup(job.id)
        names = executor.tool(mode).output(["images", "--format", "{{.Name}}:{{.Tag}}"]).split()
        assert set(tags) <= set(names)  # kept under the job's tags, after cleanup too
        creds = f"ci:{PASSWORD}"
        raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", creds, f"docker://{tags[0]}"],
                             capture_output=True, text=True, check=True).stdout
        assert json.loads(raw)["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
        assert results[0][0].digest == registry_digest(harness.services, tags[0])
        [unpushed] = results[1]
        assert unpushed.digest.startswith("sha256:")
        missing = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--creds", creds, f"docker://{tags[1]}"], capture_output=True)
        assert missing.returncode != 0  # push disabled: nothing reached the registry
    finally:
        subprocess.run(["buildah", *mode.global_args(keep.executors["buildah"]), "rmi", *tags], capture_output=True)


# -- cancel, timeout, crash --------------------------------------------------------------------
def crash_mid_run(harness, settings: Settings, executor: BuildahExecutor, tmp_path: Path, job: BuildRequest) -> None:
    """Run `job` with a RUN step that sleeps, then SIGKILL buildah, as if its worker died:
    buildah cleans nothing itself and runc keeps the step running."""
    context = make_context(settings, job, tmp_path, {"Dockerfile": f"FROM {base(harness)}\nRUN echo running-$((6*7)) && sleep 300\n"})
    log = ListLog()
    thread, outcome = run_in_thread(executor, job, context, log, CancelToken())
    wait_for_line(log, "running-42")  # output, not the STEP line
    for group in {os.getpgid(int(p.split(":")[0])) for p in processes_mentioning(f"IO_RUNNER_JOB={job.id}")}:
        os.killpg(group, signal.SIGKILL)
    thread.join(60)
    assert isinstance(outcome.get("error"), BuildFailed)


def test_killed_buildah_leaves_nothing_after_cleanup(harness, settings, tmp_path):
    """As if the worker died mid-RUN: buildah SIGKILLed, so it cleans nothing itself and runc
    keeps the step running. cleanup(job_id) must find and remove all of it."""
    executor = executor_for(settings, "buildah")
    job = BuildRequest(tags=[image(harness, "crash")], no_cache=True)
    try:
        crash_mid_run(harness, settings, executor, tmp_path, job)
        before = job_leftovers(executor, job.id)
        assert before["containers"] and before["runc"], before  # the crash did leave things behind
        executor.cleanup(job.id)
        executor.cleanup(job.id)  # idempotent
        after = job_leftovers(executor, job.id)
    finally:
        executor.cleanup(job.id)
    assert after == CLEAN


def test_sweep_removes_what_dead_jobs_left_and_spares_live_and_foreign_ones(harness, settings, storage, tmp_path):
    """sweep(is_live), the reaper's call after a worker died: for each job of this namespace
    that is not live, the RUN step runc kept alive, the working containers and the private
    files go. A live job's leftovers stay, and so do those another namespace (another runner
    sharing this storage) made: its jobs are not even asked about."""
    roots = {"storage_root": storage / "root", "run_root": storage / "run"}
    ours = namespaced(with_buildah(settings, **roots), f"sweep-{uuid.uuid4().hex[:8]}")
    theirs = namespaced(with_buildah(settings, **roots), f"sweep-other-{uuid.uuid4().hex[:8]}")
    executor, foreign = executor_for(ours, "buildah"), executor_for(theirs, "buildah")
    jobs = {name: (owner, config, BuildRequest(tags=[image(harness, f"sweep-{name}")], no_cache=True))
            for name, owner, config in (("dead", executor, ours), ("live", executor, ours), ("foreign", foreign, theirs))}
    try:
        for owner, config, job in jobs.values():
            crash_mid_run(harness, config, owner, tmp_path, job)
            # the private files a dead worker leaves (here the executor's own `finally` removed them)
            JobFiles(private_root(owner.env, "buildah", job.id)).create().write("auth.json", "{}")
        dead, live, other = (jobs[name][2].id for name in ("dead", "live", "foreign"))

        def left(name: str) -> dict:
            owner, _, job = jobs[name]
            found = job_leftovers(owner, job.id)
            return {key: found[key] for key in ("containers", "runc", "private_dir")}

        before = {name: left(name) for name in jobs}
        assert all(b["containers"] and b["runc"] and b["private_dir"] for b in before.values()), before

        class StoreDown:
            def get(self, job_id: str):
                raise ConnectionError("redis is restarting")

        down = SimpleNamespace(store=StoreDown())  # the reaper's question, with the store unreachable
        assert executor.sweep(lambda job_id: reaper.is_live(down, job_id)) == []  # no answer: everything stays
        assert {name: left(name) for name in jobs} == before

        asked: list[str] = []

        def is_live(job_id: str) -> bool:
            asked.append(job_id)
            return job_id == live

        assert executor.sweep(is_live) == [dead]
        assert sorted(asked) == sorted([dead, live])
        assert job_leftovers(executor, dead) == CLEAN
        assert left("live") == before["live"] and left("foreign") == before["foreign"]
        assert executor.sweep(is_live) == []  # nothing of the dead job is left to find
        assert foreign.sweep(lambda job_id: False) == [other]  # its own namespace's sweep takes it
        assert job_leftovers(foreign, other) == CLEAN
    finally:
        for owner, _, job in jobs.values():
            owner.cleanup(job.id)
    assert job_leftovers(executor, live) == CLEAN


def test_multi_platform_argv_builds_a_manifest_list_and_pushes_it_all(tmp_path):
    """Two platforms: `--platform a,b --manifest LIST` (no --iidfile: buildah refuses it for
    several images), then `manifest push --all`; a plain-HTTP registry needs --tls-verify=false
    there (its flag overrides registries.conf), and the script pushes the list by name."""
    config, mode = BuildahConfig(enabled=True, keep_images=True), Mode("buildah", "1.28.2", "overlay", "oci", "test")
    job = BuildRequest(id="job-2", tags=["127.0.0.1:5000/app:1"], platforms=["linux/amd64", "aarch64"])
    manifest = bx.manifest_name("ns-1", job.id, "a1b2")
    assert manifest == "localhost/runner-manifest/ns-1/job-2:a1b2"
    paths = JobPaths(context=tmp_path / "ctx", dockerfile=tmp_path / "Dockerfile", authfile=tmp_path / "auth.json",
                     iidfile=tmp_path / "iid", ignorefile=tmp_path / "ignore", manifest=manifest)
    argv = build_args(config, mode, job, paths, "ns-1")
    assert argv[argv.index("--manifest") + 1] == manifest and "--iidfile" not in argv and "-t" not in argv
    assert argv[argv.index("--platform") + 1] == "linux/amd64,linux/arm64"
    push = bx.manifest_push_args(config, manifest, ImageRef.parse("127.0.0.1:5000/app:1"), paths, tmp_path / "d", plain_http=True)
    assert push == ["manifest", "push", "--all", "--format", "oci", "--tls-verify=false", "--authfile", f"{tmp_path}/auth.json",
                    "--digestfile", f"{tmp_path}/d", manifest, "docker://127.0.0.1:5000/app:1"]
    script = bx.build_then_push(["buildah"], argv, push, None, "MARK")
    assert script[1] == f'"$@" || exit; echo MARK; exec buildah {" ".join(push[:5])} --tls-verify=false --authfile ' \
        f'{tmp_path}/auth.json --digestfile {tmp_path}/d {manifest} docker://127.0.0.1:5000/app:1'
    assert "--tls-verify=false" not in bx.manifest_push_args(config, manifest, ImageRef.parse("r.example.com/app:1"), paths,
                                                            tmp_path / "d", plain_http=False)


def test_sweep_removes_a_dead_multi_platform_jobs_manifest_list(harness, settings, storage):
    roots = {"storage_root": storage / "root", "run_root": storage / "run"}
    executor = executor_for(with_buildah(settings, **roots), "buildah")
    tool = executor.tool(executor.mode())
    names = {job: bx.manifest_name(settings.worker.namespace, job, "a1b2") for job in ("dead-job", "live-job")}
    other = bx.manifest_name("another-namespace", "dead-job", "a1b2")
    for name in [*names.values(), other]:
        tool.output(["manifest", "create", name])

    def listed() -> set[str]:
        return {n for image in json.loads(tool.output(["images", "--json"]) or "[]") for n in image.get("names") or []}

    assert executor.sweep(lambda job_id: job_id == "live-job") == ["dead-job"]
    assert names["dead-job"] not in listed() and {names["live-job"], other} <= listed()


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_cancelled_or_timed_out_job_leaves_no_process_or_container(harness, tmp_path, how):
    (tmp_path / "Dockerfile").write_text(f"FROM {base(harness)}\nRUN echo now-sleeping-$((6*7)) && sleep 300\n")
    extra = ["--timeout", "8"] if how == "timeout" else []
    result = harness.cli("submit", str(tmp_path), "--executor", "buildah", "-t", image(harness, how), "--detach", *extra)
    job_id = result.stdout.strip()
    assert result.returncode == 0 and job_id, result.stderr
    deadline = time.monotonic() + 60
    while "now-sleeping-42" not in harness.cli("logs", job_id).stdout:
        assert time.monotonic() < deadline, harness.cli("logs", job_id).stdout
        time.sleep(0.2)
    if how == "cancel":
        assert harness.cli("cancel", job_id).returncode == 0
    started = time.monotonic()
    while not (record := harness.store.get(job_id)).finished:
        assert time.monotonic() - started < 30, "the job did not stop"
        time.sleep(0.1)
    assert record.status.value == ("cancelled" if how == "cancel" else "timed_out")
    executor = executor_for(harness.settings, "buildah")
    deadline = time.monotonic() + 10  # the pipeline records the result first, then cleans up
    while (left := job_leftovers(executor, job_id)) != CLEAN and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == CLEAN


# -- no Docker Engine --------------------------------------------------------------------------
def test_builds_and_pushes_on_a_worker_that_cannot_reach_any_docker_engine(make_harness, storage, tmp_path):
    """The worker runs in its own mount namespace with an empty tmpfs over /run (so no
    /var/run/docker.sock, no containerd socket) and DOCKER_HOST pointing at a dead socket.
    The shared dockerd keeps running for everyone else."""
    dead = f"unix://{tmp_path}/no-engine-here.sock"
    off = {name: {"enabled": False} for name in all_support()}
    h = make_harness(executors={**off, "buildah": {"enabled": True, "storage_root": str(storage / "root"),
                                                     "run_root": str(storage / "run")}})
    wrapper = ("unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
               'mount -t tmpfs runner-no-engine /run && exec env DOCKER_HOST="$0" "$@"', dead)
    h.worker_proc = h.start_worker(prefix=wrapper)
    pid = h.worker_proc.pid

    inside = ["nsenter", "--target", str(pid), "--mount", "--"]
    assert subprocess.run(["docker", "info"], capture_output=True).returncode == 0  # the engine is up for the host...
    assert not subprocess.run([*inside, "test", "-e", "/var/run/docker.sock"]).returncode == 0  # ...but absent for the worker
    assert subprocess.run([*inside, "env", f"DOCKER_HOST={dead}", "docker", "info"], capture_output=True, timeout=30).returncode != 0
    assert f"DOCKER_HOST={dead}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")

    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx/Dockerfile").write_text(f"FROM {base(h)}\nRUN echo no-engine-needed > /proof\n")
    ref = image(h, "no-engine")
    result = h.cli("submit", str(tmp_path / "ctx"), "--executor", "buildah", "-t", ref, "--json")
    record = json.loads(result.stdout)
    assert record["status"] == "succeeded", h.cli("logs", record["id"]).stdout
    assert record["worker"].endswith(f":{pid}")
    assert record["images"][0]["digest"] == registry_digest(h.services, ref)
    assert run_image(ref, "cat", "/proof").strip() == "no-engine-needed"
    h.stop_worker(h.worker_proc)

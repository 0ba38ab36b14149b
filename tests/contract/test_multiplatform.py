"""Multi-platform images, on every executor that can run here (the contract suite's cases).

A two-platform job (`--platform linux/amd64,linux/arm64`, buildx's syntax) builds FROM a
two-platform base that scripts/services.sh made from Debian's own busybox-static of each
architecture, with one RUN step (emulated for arm64 through qemu-user-static's binfmt handler).
What the registry holds is read with skopeo, and each platform's image is run by the host
engine (`docker run --platform`, arm64 under qemu): `uname -m` and TARGETARCH, recorded at build
time, must say the image's own architecture."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
import uuid

import pytest
import yaml

from executors.daemonless.buildah import manifest_name
from runner.core.host_platforms import host_platforms
from runner.core.platforms import parse_platform
from tests.conftest import wait_cleaned
from tests.contract.test_contract import base, executor_params, ref, submit, write
from tests.support import all_support, executor_for
from tests.support.dind import leftovers as dind_leftovers

SUPPORT = all_support()
TWO = "linux/amd64,linux/arm64"
DOCKERFILE = ("FROM {base}\nARG TARGETARCH\nARG TARGETPLATFORM\n"
              "RUN uname -m > /arch && echo \"$TARGETARCH $TARGETPLATFORM\" > /target && echo {nonce} > /nonce\n")


@pytest.fixture(params=list(executor_params()))
def executor(request) -> str:
    return request.param


@pytest.fixture(autouse=True)
def emulation() -> None:
    why = host_platforms().why_not(parse_platform("linux/arm64"))
    if why:
        pytest.skip(f"this host cannot run arm64 (qemu-user-static's binfmt handler): {why}")


def multi_base(harness) -> str:
    """The two-platform base, by the address the running case's executor reaches."""
    return base(harness).replace("/base/busybox:1", "/base/busybox-multi:1")


def raw_manifest(services: dict, image: str) -> tuple[str, dict]:
    """(digest, document) of what the registry holds for `image`, read with skopeo."""
    creds = f"{services['RUNNER_DEV_REGISTRY_USER']}:{services['RUNNER_DEV_REGISTRY_PASSWORD']}"
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", creds, f"docker://{image}"],
                         capture_output=True, check=True, timeout=60).stdout
    return "sha256:" + hashlib.sha256(raw).hexdigest(), json.loads(raw)


def in_registry(services: dict, image: str) -> bool:
    creds = f"{services['RUNNER_DEV_REGISTRY_USER']}:{services['RUNNER_DEV_REGISTRY_PASSWORD']}"
    return subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", creds, f"docker://{image}"],
                          capture_output=True, timeout=60).returncode == 0


def run_platform(image: str, platform: str, *cmd: str) -> str:
    """Pull `image` (an index) for `platform` and run it on the host engine."""
    out = subprocess.run(["docker", "run", "--rm", "--pull", "always", "--platform", platform, image, *cmd],
                         capture_output=True, text=True, timeout=180)
    subprocess.run(["docker", "rmi", "-f", image], capture_output=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def index_platforms(document: dict) -> dict[str, str]:
    """platform -> manifest digest, as the index lists them."""
    entries = {}
    for entry in document["manifests"]:
        p = entry["platform"]
        entries["/".join(filter(None, (p["os"], p["architecture"], p.get("variant"))))] = entry["digest"]
    return entries


def test_a_two_platform_job_pushes_an_index_of_exactly_both_under_every_tag(harness, executor, tmp_path):
    nonce = uuid.uuid4().hex
    ctx = write(tmp_path, {"Dockerfile": DOCKERFILE.format(base=multi_base(harness), nonce=nonce)})
    first, same, other = ref(harness, executor, "multi"), ref(harness, executor, "multi"), ref(harness, executor, "multi-other")
    tags = [first, same, other]
    if SUPPORT[executor].registry_key == "RUNNER_DEV_REGISTRY":  # the same registry by its other name: a second push
        tags.append(f"{harness.registry('RUNNER_DEV_REGISTRY_NAME')}/contract/{executor}-multi:{uuid.uuid4().hex[:10]}")
    result, record = submit(harness, executor, ctx, "--platform", TWO, *[arg for t in tags for arg in ("-t", t)])
    assert result.returncode == 0, result.stderr + result.stdout
    assert record["status"] == "succeeded" and record["request"]["platforms"] == ["linux/amd64", "linux/arm64"]
    log = harness.cli("logs", record["id"]).stdout
    assert "[linux/amd64] " in log and "[linux/arm64] " in log  # each platform's build lines carry its name

    shown = harness.cli("status", record["id"]).stdout
    for image in record["images"]:
        digest, index = raw_manifest(harness.services, image["ref"])
        assert image["digest"] == digest, image  # the tag holds the index the record names
        assert index["mediaType"] in ("application/vnd.oci.image.index.v1+json",
                                      "application/vnd.docker.distribution.manifest.list.v2+json")
        listed = index_platforms(index)
        assert sorted(listed) == ["linux/amd64", "linux/arm64"]  # exactly these two, nothing else
        assert {p["platform"]: p["digest"] for p in image["platforms"]} == listed
        assert f"  {image['ref']}@{digest} (index)" in shown
        for platform, child in listed.items():
            assert f"    {platform} {child}" in shown
    assert [i["ref"] for i in record["images"]] == tags
    assert len({i["digest"] for i in record["images"][:3]}) == 1  # one registry: one index for all its tags

    amd64 = run_platform(other, "linux/amd64", "cat", "/arch", "/target", "/nonce").split("\n")
    arm64 = run_platform(other, "linux/arm64", "cat", "/arch", "/target", "/nonce").split("\n")
    assert amd64[:3] == ["x86_64", "amd64 linux/amd64", nonce]
    assert arm64[:3] == ["aarch64", "arm64 linux/arm64", nonce]


def test_a_single_platform_job_is_unchanged_an_image_not_an_index(harness, executor, tmp_path):
    ctx = write(tmp_path, {"Dockerfile": DOCKERFILE.format(base=multi_base(harness), nonce=uuid.uuid4().hex)})
    image = ref(harness, executor, "single-arm64")
    result, record = submit(harness, executor, ctx, "--platform", "linux/arm64", "-t", image)
    assert result.returncode == 0, result.stderr + result.stdout
    assert record["request"]["platform"] == "linux/arm64" and record["request"]["platforms"] == ["linux/arm64"]
    [pushed] = record["images"]
    digest, manifest = raw_manifest(harness.services, image)
    assert pushed["digest"] == digest and pushed["platforms"] == []
    assert "manifests" not in manifest and "layers" in manifest  # one image manifest
    assert "[linux/arm64] " not in harness.cli("logs", record["id"]).stdout  # no platform prefixes
    assert run_platform(image, "linux/arm64", "cat", "/arch", "/target").split("\n")[:2] == ["aarch64", "arm64 linux/arm64"]


def test_a_platform_this_host_cannot_build_is_refused_before_the_build_naming_it(harness, executor, tmp_path):
    """linux/wasm is a platform containerd knows, which no binfmt handler here runs."""
    ctx = write(tmp_path, {"Dockerfile": DOCKERFILE.format(base=multi_base(harness), nonce="x")})
    image = ref(harness, executor, "refused")
    result, record = submit(harness, executor, ctx, "--platform", "linux/amd64,linux/wasm", "-t", image)
    assert result.returncode == 1, result.stderr + result.stdout
    assert record["status"] == "failed" and record["error"]["kind"] == "invalid", record["error"]
    message = record["error"]["message"]
    assert message.startswith("refused before the build: linux/wasm cannot be built on this host"), message
    assert "no binfmt handler for wasm" in message
    log = harness.cli("logs", record["id"]).stdout
    assert "STEP" not in log and "#1 " not in log and "sidecar" not in log  # nothing was built or started
    assert not in_registry(harness.services, image)


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_cancel_and_timeout_mid_build_leave_nothing_behind(harness, executor, tmp_path, how):
    ctx = write(tmp_path, {"Dockerfile": f"FROM {multi_base(harness)}\nRUN echo started-$((6*7)) && sleep 300\n"})
    image = ref(harness, executor, f"multi-{how}")
    extra = ["--timeout", "12"] if how == "timeout" else []
    result = harness.cli("submit", str(ctx), "--executor", executor, "--platform", TWO, "-t", image, "--detach", *extra)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    deadline = time.monotonic() + 120
    while "started-42" not in (log := harness.cli("logs", job_id).stdout):
        assert time.monotonic() < deadline and not harness.store.get(job_id).finished, log
        time.sleep(0.2)
    if how == "cancel":
        assert harness.cli("cancel", job_id).returncode == 0
    deadline = time.monotonic() + 60
    while not (record := harness.store.get(job_id)).finished:
        assert time.monotonic() < deadline, "the job did not stop"
        time.sleep(0.1)
    assert record.status.value == ("cancelled" if how == "cancel" else "timed_out"), record
    wait_cleaned(harness, job_id)
    assert not in_registry(harness.services, image)
    assert job_leftovers(harness, executor, job_id, image) == {}


def job_leftovers(harness, name: str, job_id: str, image: str) -> dict[str, list[str]]:
    """What the job left on the engine, in buildah's store, or as sidecars (empty: nothing)."""
    found: dict[str, list[str]] = {}
    processes = [line for line in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
                 if job_id in line and "ps -eo" not in line]
    if processes:
        found["processes"] = processes
    if name == "socket":
        listed = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True, text=True,
                                check=True).stdout.split()
        if mine := [t for t in listed if t.startswith(f"runner-job/{job_id}:") or t == image]:
            found["engine images"] = mine
    elif name in ("dind", "sysbox"):
        found.update(dind_leftovers(f"io.runner.job={job_id}"))
    elif name == "buildah":
        buildah = executor_for(harness.settings, "buildah")
        mode = buildah.mode()
        tool = buildah.tool(mode)
        if containers := buildah.containers_by_job(tool, mode).get(job_id):
            found["containers"] = containers
        names = [n for i in json.loads(tool.output(["images", "--json"]) or "[]") or [] for n in i.get("names") or []]
        prefix = manifest_name(harness.settings.worker.namespace, job_id, "")
        if lists := [n for n in names if n.startswith(prefix)]:
            found["manifest lists"] = lists
    return found


def test_two_jobs_of_one_repository_keep_their_own_per_platform_registry_cache(make_harness, executor, tmp_path):
    """cache_repo on a two-platform job: each platform reads and writes its own cache
    (engines: `buildcache-linux-amd64`, `buildcache-linux-arm64`, each that platform's image)."""
    h = make_harness()
    h.config["executors"][executor] = {**h.config["executors"][executor], "cache_repo": "{registry}/cache/{repo}"}
    h.config_path.write_text(yaml.safe_dump(h.config))
    h.worker_proc = h.start_worker()
    ctx = write(tmp_path, {"Dockerfile": DOCKERFILE.format(base=multi_base(h), nonce=uuid.uuid4().hex)})
    image = ref(h, executor, "multi-cache")
    result, record = submit(h, executor, ctx, "--platform", TWO, "-t", image)
    assert result.returncode == 0, result.stderr + result.stdout
    registry, repository = image.split("/", 1)[0], image.split("/", 1)[1].rsplit(":", 1)[0]
    cache = f"{registry}/cache/{repository}"
    if SUPPORT[executor].engine:
        for platform in ("linux/amd64", "linux/arm64"):
            _, manifest = raw_manifest(h.services, f"{cache}:buildcache-{platform.replace('/', '-')}")
            assert manifest["config"]["digest"]  # an image, written by that platform's build
        # the same inputs again: asked to build (not to reuse the first image), it reads each platform's cache
        again, second = submit(h, executor, ctx, "--platform", TWO, "-t", ref(h, executor, "multi-cache"), "--no-reuse")
        assert again.returncode == 0, again.stderr
        log = h.cli("logs", second["id"]).stdout
        for slug in ("linux-amd64", "linux-arm64"):
            assert re.search(rf"^\[linux/{slug[6:]}\] \[runner\] registry build cache: {re.escape(cache)}:buildcache-{slug}$",
                             log, re.M), log
    else:
        creds = f"{h.services['RUNNER_DEV_REGISTRY_USER']}:{h.services['RUNNER_DEV_REGISTRY_PASSWORD']}"
        tags = subprocess.run(["skopeo", "list-tags", "--tls-verify=false", "--creds", creds, f"docker://{cache}"],
                              capture_output=True, text=True, check=True).stdout
        assert json.loads(tags)["Tags"], tags  # buildah's --cache-to wrote its per-step images for both builds

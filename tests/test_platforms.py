"""Target platforms: read as buildx reads `--platform` (containerd's parser, then its
normaliser), checked where a job comes in (bad input is `invalid`, naming the value), what a
host can build (binfmt handlers), the pieces a multi-platform build is made of (builds at once
with their own log prefix, the OCI index), and where the per-platform digests are shown.

The parser's table is containerd's own (platforms_test.go, TestParseSelector and
TestParseSelectorInvalid), each case taken through Normalize as buildx does; where the runner
is stricter on purpose (an OS without an architecture, another OS than linux, OS versions and
features, an architecture containerd does not know) the case says so. The full tier also
compares the normalised results with what the Docker Engine builds for each specifier."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from executors.image_index import OCI_INDEX, index_manifest
from executors.platform_builds import PrefixedLog, build_each
from runner.config.sections import RepositoryHook
from runner.config.settings import Settings
from runner.core.cancel import CancelToken
from runner.core.errors import BuildFailed, Cancelled
from runner.core.host_platforms import HostPlatforms, host_platforms, native_platform
from runner.core.jobs import BuildRequest, JobRecord, PlatformImage, PushedImage, Status
from runner.core.platforms import Platform, PlatformError, parse_platform, parse_platforms, split_specifiers
from runner.core.registry_client import Manifest
from runner.worker.admission import QUEUE, Rejected, admit, parse_request
from runner.worker.notify.statuses import describe
from tests.support import ListLog

TAG = "127.0.0.1:5000/a:1"

# -- the parser: containerd's table, normalised as buildx does ------------------------------------
PARSED = [
    ("linux/arm64", "linux/arm64"),
    ("linux/arm64/v8", "linux/arm64"),  # Parse keeps v8, Normalize drops it
    ("linux/arm", "linux/arm/v7"),  # Parse leaves the variant blank, Normalize says v7
    ("linux/arm/v6", "linux/arm/v6"),
    ("linux/arm/v7", "linux/arm/v7"),
    ("arm", "linux/arm/v7"),
    ("armel", "linux/arm/v6"),
    ("armhf", "linux/arm/v7"),
    ("Aarch64", "linux/arm64"),
    ("x86_64", "linux/amd64"),
    ("Linux/x86_64", "linux/amd64"),
    ("i386", "linux/386"),
    ("s390x", "linux/s390x"),
    ("linux/s390x", "linux/s390x"),
    # normalizeArch's other spellings
    ("linux/x86-64", "linux/amd64"),
    ("linux/amd64/v1", "linux/amd64"),
    ("linux/amd64/v3", "linux/amd64/v3"),
    ("linux/arm/7", "linux/arm/v7"),
    ("linux/arm/5", "linux/arm/v5"),
    ("linux/aarch64/9", "linux/arm64/v9"),
    ("linux/ppc64le", "linux/ppc64le"),
    ("riscv64", "linux/riscv64"),
]
REFUSED = [
    # TestParseSelectorInvalid
    ("", "not a platform"),
    ("/linux/arm", "not a platform"),
    ("linux/arm/", "not a platform"),
    ("linux /arm", "not a platform"),
    ("linux/&arm", "not a platform"),
    ("linux/arm/foo/bar", "not a platform"),
    ("*", "not a platform"),  # containerd: wildcards not yet supported
    # stricter than containerd, on purpose
    ("linux", "without an architecture"),  # containerd adds the host's architecture: whose host?
    ("macOS", "without an architecture"),
    ("windows", "without an architecture"),
    ("windows/amd64", "linux images only"),
    ("darwin/arm64", "linux images only"),
    ("windows(10.0.17763)/amd64", "not a platform"),  # OS versions and features: no Linux builder uses them
    ("linux(+gpu)/amd64", "not a platform"),
    ("linux/foo", "unknown architecture 'foo'"),  # containerd accepts any pair; no engine can build it
    ("plan9/amd64", "linux images only"),
    ("nosuchos/amd64", "unknown operating system"),
    ("linux/arm/v9", "arm has no variant 'v9'"),
    ("linux/riscv64/v2", "riscv64 has no variant 'v2'"),
    ("linux/amd64,linux/arm64", "not a platform"),
]


@pytest.mark.parametrize("specifier, expected", PARSED)
def test_containerds_specifiers_parse_and_normalise_as_buildx_does(specifier, expected):
    platform = parse_platform(specifier)
    assert str(platform) == expected
    assert parse_platform(str(platform)) == platform  # the round trip is stable


@pytest.mark.parametrize("specifier, said", REFUSED)
def test_bad_specifiers_are_refused_naming_the_value(specifier, said):
    with pytest.raises(PlatformError) as info:
        parse_platform(specifier)
    assert said in str(info.value) and repr(specifier[:100]) in str(info.value)


def test_a_platform_named_twice_is_refused_also_under_another_spelling():
    assert [str(p) for p in parse_platforms(["linux/amd64", "linux/arm64", "linux/arm/v7"])] == \
        ["linux/amd64", "linux/arm64", "linux/arm/v7"]
    with pytest.raises(PlatformError, match=r"'linux/arm64' is listed twice \(as 'linux/arm64' and 'aarch64'\)"):
        parse_platforms(["linux/arm64", "aarch64"])
    with pytest.raises(PlatformError, match="'linux/amd64' is listed twice$"):
        parse_platforms(["linux/amd64", "linux/amd64"])
    assert split_specifiers("linux/amd64, linux/arm64") == ["linux/amd64", "linux/arm64"]


def test_the_oci_platform_object_and_the_build_args_buildkit_sets():
    arm = parse_platform("linux/arm/v7")
    assert arm.oci() == {"architecture": "arm", "os": "linux", "variant": "v7"}
    assert parse_platform("linux/arm64").oci() == {"architecture": "arm64", "os": "linux"}
    assert arm.build_args(parse_platform("linux/amd64")) == {
        "TARGETPLATFORM": "linux/arm/v7", "TARGETOS": "linux", "TARGETARCH": "arm", "TARGETVARIANT": "v7",
        "BUILDPLATFORM": "linux/amd64", "BUILDOS": "linux", "BUILDARCH": "amd64", "BUILDVARIANT": ""}
    assert arm.slug == "linux-arm-v7"


# -- the request and admission ------------------------------------------------------------------
def test_platform_and_platforms_on_the_request():
    old = BuildRequest(tags=[TAG], platform="linux/aarch64")  # the old single field keeps working
    assert (old.platform, old.platforms, old.multi_platform) == ("linux/arm64", ["linux/arm64"], False)
    two = BuildRequest(tags=[TAG], platforms=["linux/amd64", "arm64"])
    assert (two.platform, two.platforms, two.multi_platform) == (None, ["linux/amd64", "linux/arm64"], True)
    assert BuildRequest.model_validate_json(two.model_dump_json()) == two  # a stored record reads back the same
    none = BuildRequest(tags=[TAG])
    assert (none.platform, none.platforms) == (None, [])
    same = BuildRequest(tags=[TAG], platform="linux/arm64", platforms=["aarch64"])
    assert same.platforms == ["linux/arm64"]


@pytest.mark.parametrize("fields, field, said", [
    ({"platforms": ["linux/amd64", "linux/foo"]}, "platforms", "'linux/foo': unknown architecture 'foo'"),
    ({"platforms": ["linux/amd64", "x86_64"]}, "platforms", "'linux/amd64' is listed twice (as 'linux/amd64' and 'x86_64')"),
    ({"platforms": ["linux/amd64,linux/arm64"]}, "platforms", "'linux/amd64,linux/arm64' is not a platform"),
    ({"platform": "linux/amd64,linux/arm64"}, "platform", "names several platforms: list them in `platforms`"),
    ({"platform": "windows/amd64"}, "platform", "'windows/amd64': the executors build linux images only"),
    ({"platform": "linux/amd64", "platforms": ["linux/arm64"]}, "request", "disagree"),
    ({"platforms": "linux/amd64"}, "platforms", "list"),
])
def test_bad_platforms_are_invalid_naming_the_value(fields, field, said):
    with pytest.raises(Rejected) as info:
        parse_request({"tags": [TAG], **fields})
    assert info.value.field == field and said in info.value.message, info.value


def test_more_platforms_than_limits_max_platforms_are_refused_at_admission():
    settings = Settings(registries=[{"host": "127.0.0.1:5000"}], executors={"socket": {"enabled": True}},
                        default_executor="socket")
    assert settings.limits.max_platforms == 4
    five = BuildRequest(tags=[TAG], platforms=["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/ppc64le", "linux/s390x"])
    with pytest.raises(Rejected) as info:
        admit(five, settings, QUEUE)
    assert info.value.field == "platforms"
    assert info.value.message == ("5 platforms (linux/amd64, linux/arm64, linux/arm/v7, linux/ppc64le, linux/s390x) is over "
                                  "the limit of 4 (limits.max_platforms)")
    admit(five.model_copy(update={"platforms": five.platforms[:4]}), settings, QUEUE)
    tight = settings.model_copy(update={"limits": settings.limits.model_copy(update={"max_platforms": 1})})
    with pytest.raises(Rejected, match="limit of 1"):
        admit(BuildRequest(tags=[TAG], platforms=["linux/amd64", "linux/arm64"]), tight, QUEUE)
    admit(BuildRequest(tags=[TAG], platform="linux/arm64"), tight, QUEUE)


def test_a_webhook_repository_names_its_platforms():
    hook = RepositoryHook(images=["127.0.0.1:5000/x/{repo}:{short_sha}"], platforms=["linux/amd64", "aarch64"])
    assert hook.platforms == ["linux/amd64", "linux/arm64"]
    with pytest.raises(ValueError, match="'linux/mips128': unknown architecture"):
        RepositoryHook(images=["127.0.0.1:5000/x/{repo}"], platforms=["linux/mips128"])
    with pytest.raises(ValueError, match="listed twice"):
        RepositoryHook(images=["127.0.0.1:5000/x/{repo}"], platforms=["arm64", "linux/arm64/v8"])


# -- what a host can build ------------------------------------------------------------------
#: a handler file as the kernel shows it (/proc/sys/fs/binfmt_misc/qemu-aarch64 on Debian 12 with
#: qemu-user-static registered from /usr/lib/binfmt.d/qemu-aarch64.conf)
AARCH64 = """enabled
interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P
flags: POF
offset 0
magic 7f454c460201010000000000000000000200b700
mask ffffffffffffff00fffffffffffffffffeffffff
"""
ARM = """enabled
interpreter /usr/libexec/qemu-binfmt/arm-binfmt-P
flags: POF
offset 0
magic 7f454c4601010100000000000000000002002800
mask ffffffffffffff00fffffffffffffffffeffffff
"""
S390X = """enabled
interpreter /usr/libexec/qemu-binfmt/s390x-binfmt-P
flags: PO
offset 0
magic 7f454c4602020100000000000000000000020016
mask ffffffffffffff00fffffffffffffffffffeffff
"""
PYTHON = """enabled
interpreter /usr/bin/python3.11
flags:
offset 0
magic a70d0d0a
"""


def binfmt(tmp_path: Path, handlers: dict[str, str], status: str = "enabled") -> Path:
    root = tmp_path / "binfmt_misc"
    root.mkdir()
    (root / "status").write_text(status + "\n")
    (root / "register").write_text("")
    for name, text in handlers.items():
        (root / name).write_text(text)
    return root


def test_handlers_are_placed_by_the_elf_header_they_match_whatever_their_name(tmp_path):
    root = binfmt(tmp_path, {"qemu-aarch64": AARCH64, "armhf-by-another-tool": ARM, "python3.11": PYTHON})
    host = host_platforms(root, machine="x86_64")
    assert host.native == Platform("linux", "amd64")
    assert sorted(host.emulated) == ["arm", "arm64"]
    for wanted in ("linux/amd64", "linux/386", "linux/arm64", "linux/arm/v7", "linux/arm/v6"):
        assert host.why_not(parse_platform(wanted)) is None, wanted
    assert host.describe() == ("native: linux/amd64, linux/386; emulated: linux/arm, linux/arm64 "
                               "(binfmt handlers armhf-by-another-tool, qemu-aarch64)")
    missing = host.why_not(parse_platform("linux/ppc64le"))
    assert missing is not None and missing.startswith("linux/ppc64le cannot be built on this host (linux/amd64): "
                                                      "no binfmt handler for ppc64le is registered")


def test_a_handler_without_the_f_flag_or_disabled_does_not_count_and_says_why(tmp_path):
    root = binfmt(tmp_path, {"qemu-s390x": S390X, "qemu-aarch64": AARCH64.replace("enabled", "disabled", 1)})
    host = host_platforms(root, machine="x86_64")
    assert host.emulated == {}
    s390x = host.why_not(parse_platform("linux/s390x"))
    assert s390x is not None and "registered without the F flag" in s390x and "s390x-binfmt-P" in s390x
    arm64 = host.why_not(parse_platform("linux/arm64"))
    assert arm64 is not None and "binfmt handler qemu-aarch64 is disabled" in arm64


def test_no_binfmt_misc_means_the_native_platform_only(tmp_path):
    host = host_platforms(tmp_path / "absent", machine="aarch64")
    assert host.native == Platform("linux", "arm64") and host.why_not(parse_platform("arm64")) is None
    why = host.why_not(parse_platform("linux/amd64"))
    assert why is not None and f"binfmt_misc is not mounted at {tmp_path / 'absent'}" in why
    off = host_platforms(binfmt(tmp_path, {"qemu-aarch64": AARCH64}, "disabled"), machine="x86_64")
    assert off.emulated == {}
    assert off.describe() == f"native: linux/amd64, linux/386; no emulation: binfmt_misc is disabled ({tmp_path}/binfmt_misc/status)"
    assert native_platform("armv7l") == Platform("linux", "arm", "v7")


def test_an_engine_elsewhere_is_known_by_its_architecture_only():
    remote = HostPlatforms(native_platform("x86_64"), where="the Docker Engine at tcp://build-1:2376", sees_handlers=False)
    assert remote.why_not(parse_platform("linux/amd64")) is None
    why = remote.why_not(parse_platform("linux/arm64"))
    assert why is not None and why.startswith("linux/arm64 cannot be built on the Docker Engine at tcp://build-1:2376")
    assert "cannot see its emulators" in why


# -- builds at once, and the index ----------------------------------------------------------
def test_each_platform_builds_at_once_with_its_own_log_prefix():
    log, started = ListLog(), []
    both = threading.Barrier(2, timeout=10)  # each build waits for the other: they must run at once

    def build(platform: Platform, prefixed, stop: CancelToken) -> str:
        started.append(platform)
        both.wait()
        prefixed.write("step one\n\npartial ")
        prefixed.write("line\n")
        return f"image-{platform.architecture}"

    platforms = [parse_platform("linux/amd64"), parse_platform("linux/arm64")]
    assert build_each(platforms, build, log, CancelToken()) == ["image-amd64", "image-arm64"]
    for name in ("linux/amd64", "linux/arm64"):
        assert [line for line in log.lines if line.startswith(f"[{name}] ")] == [f"[{name}] step one", f"[{name}] partial line"]
    assert "" in log.lines  # an empty line stays empty


def test_the_first_failure_stops_the_other_builds_and_is_the_one_raised():
    stopped_after: list[float] = []

    def build(platform: Platform, prefixed, stop: CancelToken) -> str:
        if platform.architecture == "arm64":
            time.sleep(0.2)
            raise BuildFailed("build failed at [2/2] RUN false: exit code: 1")
        begun = time.monotonic()
        stop.wait(30)
        stopped_after.append(time.monotonic() - begun)
        stop.raise_if_set()
        return "never"

    with pytest.raises(BuildFailed) as info:
        build_each([parse_platform("linux/amd64"), parse_platform("linux/arm64")], build, ListLog(), CancelToken())
    assert info.value.message == "build failed at [2/2] RUN false: exit code: 1 (for linux/arm64)"
    assert stopped_after and stopped_after[0] < 5


def test_the_jobs_cancel_stops_every_build():
    cancel = CancelToken()

    def build(platform: Platform, prefixed, stop: CancelToken) -> str:
        stop.wait(30)
        stop.raise_if_set()
        return "never"

    threading.Timer(0.2, cancel.set, args=("timeout",)).start()
    started = time.monotonic()
    with pytest.raises(Cancelled) as info:
        build_each([parse_platform("linux/amd64"), parse_platform("linux/arm64")], build, ListLog(), cancel)
    assert info.value.kind == "timeout" and time.monotonic() - started < 5


def test_prefixed_log_keeps_a_partial_line_until_its_end():
    log = ListLog()
    prefixed = PrefixedLog(log, "linux/arm64")
    prefixed.write("no end yet")
    assert log.lines == []
    prefixed.flush()
    assert log.lines == ["[linux/arm64] no end yet"]


def test_the_index_lists_each_platforms_manifest_with_its_own_media_type():
    docker_v2 = "application/vnd.docker.distribution.manifest.v2+json"
    child = Manifest(body=b'{"schemaVersion": 2}', media_type=docker_v2, digest="sha256:" + "a" * 64)
    index = index_manifest([(parse_platform("linux/amd64"), child), (parse_platform("linux/arm/v7"), child)])
    import hashlib
    import json

    assert index.media_type == OCI_INDEX and index.digest == "sha256:" + hashlib.sha256(index.body).hexdigest()
    assert json.loads(index.body) == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": docker_v2, "digest": child.digest, "size": len(child.body), "platform": {"architecture": "amd64", "os": "linux"}},
        {"mediaType": docker_v2, "digest": child.digest, "size": len(child.body),
         "platform": {"architecture": "arm", "os": "linux", "variant": "v7"}}]}


# -- where the digests are shown --------------------------------------------------------------
def multi_record() -> JobRecord:
    from datetime import UTC, datetime, timedelta

    start = datetime(2026, 12, 7, tzinfo=UTC)
    platforms = [PlatformImage(platform="linux/amd64", digest="sha256:" + "1" * 64),
                 PlatformImage(platform="linux/arm64", digest="sha256:" + "2" * 64)]
    images = [PushedImage(ref=ref, digest="sha256:" + "9" * 64, platforms=platforms) for ref in (TAG, TAG + "b")]
    return JobRecord(id="j", request=BuildRequest(tags=[TAG, TAG + "b"], platforms=["linux/amd64", "linux/arm64"]),
                     executor="buildah", queue="q", status=Status.succeeded, started_at=start,
                     finished_at=start + timedelta(seconds=41), images=images)


def test_the_commit_status_names_the_index_and_each_platforms_manifest():
    assert describe("finished", multi_record(), {}) == ("built and pushed 2 tags in 41 s; index 999999999999: "
                                                         "linux/amd64 111111111111, linux/arm64 222222222222")


def test_the_dashboards_record_panel_lists_each_platform_under_the_index():
    from runner.config.sections import ApiToken
    from runner.entry.dashboard.routes import record_panel

    html = record_panel(multi_record(), ApiToken(name="r", token="t" * 20, rights=["read"]))
    assert html.count("index of 2 platforms") == 2
    for digest in ("1" * 64, "2" * 64):
        assert html.count(f"sha256:{digest}") == 2
    assert "<dt>Platforms</dt><dd>linux/amd64, linux/arm64</dd>" in html



def signed_multi_record() -> JobRecord:
    """multi_record() whose index and both platforms' manifests were attested and signed."""
    from runner.core.attestations import Attestation, AttestedImage

    record = multi_record()
    repository = TAG.rsplit(":", 1)[0]
    index = record.images[0]
    attested = [AttestedImage(repository=repository, digest=digest, platform=platform, signature=f"{repository}:sig-{i}",
                              attestation=f"{repository}:att-{i}", statement_digest="sha256:" + "0" * 64)
                for i, (digest, platform) in enumerate([(index.digest, None), *((p.digest, p.platform) for p in index.platforms)])]
    assert record.started_at is not None and record.finished_at is not None
    attestation = Attestation(signed=True, key_id="k", builder_id="urn:b", builder_version="1", build_started=record.started_at,
                              build_finished=record.finished_at, images=attested)
    return record.model_copy(update={"attestation": attestation})


def test_a_signed_multi_platform_job_shows_signed_on_the_index_and_each_platform():
    """The commit status, the dashboard's record panel and `runner status` each mark the index
    and every platform's manifest signed (the record's attestation names all three)."""
    from runner.config.sections import ApiToken
    from runner.entry.dashboard.routes import record_panel

    record = signed_multi_record()
    assert describe("finished", record, {}).startswith("built, pushed and signed 2 tags in 41 s; index 999999999999: ")
    html = record_panel(record, ApiToken(name="r", token="t" * 20, rights=["read"]))
    assert html.count('class="badge signed"') == 6  # both tags (one repository): the index and its two manifests
    unsigned = record.model_copy(update={"attestation": record.attestation.model_copy(update={"images": record.attestation.images[:1]})})
    assert record_panel(unsigned, ApiToken(name="r", token="t" * 20, rights=["read"])).count('class="badge signed"') == 2

# -- against the real thing (full tier) -------------------------------------------------------
ENGINE_CASES = ["linux/arm", "armel", "linux/arm64/v8", "aarch64", "Linux/x86_64", "i386", "linux/arm/7", "linux/arm/v6",
                "x86_64", "linux/ppc64le", "s390x", "riscv64"]


def test_the_docker_engine_builds_the_platform_we_normalise_to(services, tmp_path):
    """The reference: Debian's docker CLI with BuildKit builds `FROM scratch` for each specifier;
    the image's os/architecture/variant is what the engine made of it."""
    (tmp_path / "f").write_text("x")
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY f /\n")
    for specifier in ENGINE_CASES:
        tag = f"runner-test-platform:{uuid.uuid4().hex[:8]}"
        built = subprocess.run(["/usr/bin/docker", "build", "-q", "--platform", specifier, "-t", tag, str(tmp_path)],
                               env={"DOCKER_BUILDKIT": "1", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=120)
        assert built.returncode == 0, built.stderr
        try:
            shown = subprocess.run(["docker", "image", "inspect", "-f", "{{.Os}}/{{.Architecture}}/{{.Variant}}", tag],
                                   capture_output=True, text=True, check=True).stdout.strip().rstrip("/")
        finally:
            subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)
        assert shown == str(parse_platform(specifier)), specifier


def test_this_hosts_registered_qemu_handlers_are_the_emulated_platforms(services):
    """scripts/services.sh registers Debian's qemu-user-static handlers: each one for an
    architecture we know is read back as emulated (with its F flag), arm64 among them."""
    host = host_platforms()
    if host.problem:
        pytest.skip(f"no emulation on this host: {host.problem}")
    registered = {p.name for p in Path("/proc/sys/fs/binfmt_misc").iterdir() if p.name.startswith("qemu-")}
    assert "qemu-aarch64" in registered and host.emulated["arm64"].name == "qemu-aarch64"
    assert host.why_not(parse_platform("linux/arm64")) is None
    assert {h.name for h in host.emulated.values()} <= registered


def test_doctor_says_which_platforms_each_enabled_executor_builds_here(harness):
    host = host_platforms()
    out = harness.cli("doctor").stdout
    for name in harness.settings.enabled_executors():
        line = next((line for line in out.splitlines() if f" platforms {name}: " in line), None)
        assert line is not None, out
        assert line.endswith(host.describe()) and "native: linux/amd64" in line
    if "arm64" in host.emulated:
        assert "emulated: linux/arm" in out and "qemu-aarch64" in out


def test_the_cli_and_the_api_take_platforms_and_show_each_platforms_digest(services, tmp_path_factory, tmp_path):
    """On the fake executor (it reports an index and a digest per platform): `runner submit
    --platform a,b` (repeatable, buildx's syntax), the record the API serves, `runner status`;
    bad input is refused by both doors, naming the value."""
    from tests.test_api import TOKEN_ALL, context_tar, start_stack, stop_stack

    stack = start_stack(services, tmp_path_factory, executors={"fake": {"enabled": True}}, limits={"max_platforms": 3})
    h = stack.harness
    try:
        (tmp_path / "Dockerfile").write_text("FROM scratch\n")
        tag = f"{h.registry()}/platforms/cli:{uuid.uuid4().hex[:8]}"
        result = h.cli("submit", str(tmp_path), "--executor", "fake", "-t", tag, "--platform", "linux/amd64,aarch64",
                       "--platform", "linux/arm/v7")
        assert result.returncode == 0, result.stderr
        job_id = h.store.list(limit=1)[0].id
        record = h.store.get(job_id)
        assert record.request.platforms == ["linux/amd64", "linux/arm64", "linux/arm/v7"]
        [image] = record.images
        assert [p.platform for p in image.platforms] == record.request.platforms
        assert result.stdout.strip() == f"{tag}@{image.digest}"  # stdout stays one REF@DIGEST a tag
        for p in image.platforms:
            assert f"  {p.platform} {p.digest}" in result.stderr
        shown = h.cli("status", job_id).stdout
        assert f"  {tag}@{image.digest} (index)\n" in shown and f"    linux/arm64 {image.platforms[1].digest}\n" in shown

        refused = h.cli("submit", str(tmp_path), "--executor", "fake", "-t", tag, "--platform", "linux/amd64,linux/foo")
        assert refused.returncode == 2 and "platforms" in refused.stderr and "'linux/foo': unknown architecture" in refused.stderr
        many = h.cli("submit", str(tmp_path), "--executor", "fake", "-t", tag, "--platform", "amd64,arm64,arm,ppc64le")
        assert many.returncode == 2 and "4 platforms (linux/amd64, linux/arm64, linux/arm/v7, linux/ppc64le) is over the " \
            "limit of 3 (limits.max_platforms)" in many.stderr

        with stack.client(TOKEN_ALL) as c:
            api_id = f"platforms-{uuid.uuid4().hex[:10]}"
            assert c.post(f"/v1/jobs/{api_id}/context", content=context_tar({"Dockerfile": "FROM scratch\n"}),
                          headers={"Content-Type": "application/x-tar"}).status_code == 201
            assert c.post("/v1/jobs", json={"id": api_id, "tags": [tag], "executor": "fake",
                                            "platforms": ["linux/amd64", "linux/arm64"]}).status_code == 202
            served = stack.wait(api_id)
            assert served["request"]["platforms"] == ["linux/amd64", "linux/arm64"]
            assert [p["platform"] for p in served["images"][0]["platforms"]] == ["linux/amd64", "linux/arm64"]
            bad = c.post("/v1/jobs", json={"tags": [tag], "executor": "fake", "platforms": ["linux/arm64", "arm64"]})
            assert bad.status_code == 422 and "platforms" in bad.text and "listed twice" in bad.text
    finally:
        stop_stack(stack)


def test_the_binfmt_daemonset_validates_and_runs_the_script_services_sh_runs():
    """deploy/k8s/emulation: the DaemonSet passes kubernetes-validate's strict schemas, its
    privileged init container runs the image's entrypoint, and that image installs Debian's
    qemu-user-static and the very script scripts/services.sh registers the handlers with."""
    import kubernetes_validate
    import yaml

    root = Path(__file__).resolve().parent.parent
    emulation = root / "deploy" / "k8s" / "emulation"
    [daemonset] = list(yaml.safe_load_all((emulation / "binfmt.yaml").read_text()))
    kubernetes_validate.validate(daemonset, kubernetes_validate.latest_version(), strict=True)
    spec = daemonset["spec"]["template"]["spec"]
    [register] = spec["initContainers"]
    assert register["securityContext"]["privileged"] is True and "command" not in register
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert all(not c.get("securityContext", {}).get("privileged") for c in spec["containers"])
    dockerfile = (emulation / "Dockerfile").read_text()
    assert "qemu-user-static" in dockerfile and "COPY scripts/binfmt-register.sh /usr/local/bin/binfmt-register" in dockerfile
    assert 'ENTRYPOINT ["/usr/local/bin/binfmt-register"]' in dockerfile
    assert 'binfmt-register.sh"' in (root / "scripts" / "services.sh").read_text()
    assert yaml.safe_load((emulation / "kustomization.yaml").read_text())["resources"] == ["binfmt.yaml"]


def test_the_register_script_registers_every_handler_with_the_f_flag(services):
    """What scripts/binfmt-register.sh left in the kernel (services.sh ran it): one handler per
    qemu conf Debian ships, each enabled and with F (containers need it)."""
    confs = sorted(p.stem for p in Path("/usr/lib/binfmt.d").glob("qemu-*.conf"))
    if not confs:
        pytest.skip("qemu-user-static is not installed (scripts/services.sh installs it)")
    host = host_platforms()
    if host.problem:
        pytest.skip(f"no emulation on this host: {host.problem}")
    out = subprocess.run(["sh", str(Path(__file__).resolve().parent.parent / "scripts" / "binfmt-register.sh")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "0 handler(s) registered" in out.stdout, out  # idempotent: all were there
    for name in confs:
        text = Path(f"/proc/sys/fs/binfmt_misc/{name}").read_text()
        assert text.startswith("enabled\n") and "F" in next(line for line in text.splitlines() if line.startswith("flags:"))

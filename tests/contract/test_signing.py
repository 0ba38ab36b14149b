"""Signed images with provenance, on every executor that can run here: one real build each,
queued through the HTTP API as a push webhook would queue it (a git context at a commit, and
that commit as the job's source), with a build arg, a secret build arg and a build secret, its
base image named through a global ARG; a worker with a passphrase-protected signing key.

Read back with the tests' own code (tests/support/cosign_check.py: httpx, cryptography, DSSE's
PAE written from the spec; skopeo for what a tag holds):

- the `.sig` and `.att` tags exist for the pushed digest;
- the signature verifies with the public key over a payload whose docker-manifest-digest is the
  pushed digest (the one the registry holds under the tag, read with skopeo);
- the attestation's DSSE signature verifies over its PAE; its statement's subject is the pushed
  digest, its base image digest the one the registry holds for the FROM tag, its commit the job's;
- no secret value (build arg, build secret, the key's passphrase, the registry password) in them,
  in the record, the log or anything the job left in Redis;
- `runner verify` accepts the image, and GET /v1/jobs/{id}/provenance gives the statement that
  was attached.

A webhook's own job (its commit in the provenance) is in tests/test_webhooks.py."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from runner.core.host_platforms import host_platforms
from runner.core.platforms import parse_platform
from tests.conftest import RUNNER, registry_digest
from tests.contract.test_contract import executor_params
from tests.contract.test_multiplatform import raw_manifest
from tests.support import all_support, every_value
from tests.support.cosign_check import Registry, verified_signatures, verified_statements
from tests.test_api import TOKENS, start_stack, stop_stack
from tests.test_gitsource import commit_files, git

SUPPORT = all_support()
ARG_SECRET = "arg-" + uuid.uuid4().hex
BUILD_SECRET = "npm-" + uuid.uuid4().hex
PASSPHRASE = "pass-" + uuid.uuid4().hex
SIGNER = "signer-" + uuid.uuid4().hex
SIGNER_TOKEN = {"name": "signer", "token": SIGNER, "rights": ["submit", "read", "status"]}


@pytest.fixture(params=list(executor_params()))
def executor(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def signing(services, tmp_path_factory):
    """`runner serve` and a worker (every executor) signing with a passphrase-protected key."""
    keys = tmp_path_factory.mktemp("signing-keys")
    (keys / "passphrase").write_text(PASSPHRASE + "\n")
    (keys / "passphrase").chmod(0o600)
    made = subprocess.run([RUNNER, "keys", "generate", "--output", str(keys / "cosign"), "--passphrase-file",
                           str(keys / "passphrase")], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    stack = start_stack(services, tmp_path_factory, api={"tokens": [*TOKENS, SIGNER_TOKEN], "max_body_bytes": 64 * 1024},
                        build_secrets={"npmrc": BUILD_SECRET},
                        signing={"key_file": str(keys / "cosign.key"), "passphrase_file": str(keys / "passphrase"),
                                 "public_key_file": str(keys / "cosign.pub"), "builder_id": "https://ci.example/runner"})
    yield stack, keys / "cosign.pub"
    stop_stack(stack)


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    """A repository whose Dockerfile names its base through a global ARG and reads the secrets."""
    path = tmp_path_factory.mktemp("signed-repo") / "app"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    dockerfile = ("ARG BASE=nothing-here:0\nFROM ${BASE}\nARG MODE\nARG TOKEN\n"
                  "RUN --mount=type=secret,id=npmrc test -s /run/secrets/npmrc && echo \"$MODE\" > /mode\n")
    commit = commit_files(path, {"svc/Dockerfile": dockerfile, "svc/app.txt": f"{uuid.uuid4().hex}\n"}, "app")
    return path, commit


def base_for(services, executor: str) -> str:
    support = SUPPORT[executor]
    return support.base_image(services) if support.base_image else services["RUNNER_DEV_BASE_IMAGE"]


def build(stack, executor: str, repository, tag: str, base: str, **extra) -> tuple[str, dict, str]:
    """The repository's app built FROM `base` through the API as a push webhook would queue it
    (its commit as the job's source): (job id, its record, its log), the job succeeded."""
    path, commit = repository
    job = {"tags": [tag], "executor": executor, "dockerfile": "Dockerfile",
           "context": {"type": "git", "url": f"file://{path}", "ref": "refs/heads/main", "commit": commit, "subdir": "svc"},
           "source": {"host": "github", "repository": "acme/app", "sha": commit, "ref": "refs/heads/main"},
           "build_args": {"BASE": base, "MODE": "release", "TOKEN": ARG_SECRET}, "secret_build_args": ["TOKEN"],
           "secrets": ["npmrc"], **extra}
    with stack.client(token=SIGNER) as client:
        queued = client.post("/v1/jobs", json=job)
        assert queued.status_code == 202, queued.text
        job_id = queued.json()["id"]
    record = stack.wait(job_id, timeout=600)
    log = "\n".join(stack.harness.store.read_log(job_id))
    assert record["status"] == "succeeded", (record["error"], log[-3000:])
    return job_id, record, log


def test_every_pushed_digest_is_signed_with_provenance(signing, repository, executor, services):
    stack, public_key = signing
    _, commit = repository
    registry = services[SUPPORT[executor].registry_key]
    name = f"signed/{executor}"
    tag = f"{registry}/{name}:{uuid.uuid4().hex[:10]}"
    base = base_for(services, executor)
    job_id, record, log = build(stack, executor, repository, tag, base)

    [pushed] = record["images"]
    digest = pushed["digest"]
    assert digest == registry_digest(services, tag)
    attestation = record["attestation"]
    assert attestation["signed"] and attestation["builder_id"] == "https://ci.example/runner"
    [attested] = attestation["images"]
    suffix = digest.replace(":", "-")
    assert attested["signature"] == f"{registry}/{name}:{suffix}.sig" and attested["attestation"] == f"{registry}/{name}:{suffix}.att"

    reader = Registry(registry, services["RUNNER_DEV_REGISTRY_USER"], services["RUNNER_DEV_REGISTRY_PASSWORD"])
    assert {f"{suffix}.sig", f"{suffix}.att"} <= set(reader.tags(name))
    public_pem = public_key.read_bytes()
    signature_layers, attestation_layers = reader.attached(name, digest, "sig"), reader.attached(name, digest, "att")
    payloads = verified_signatures(signature_layers, public_pem)
    assert [p["critical"]["image"]["docker-manifest-digest"] for p in payloads] == [digest]
    assert payloads[0]["critical"]["identity"]["docker-reference"] == f"{registry}/{name}"

    [statement] = verified_statements(attestation_layers, public_pem)
    assert statement["subject"] == [{"name": f"{registry}/{name}", "digest": {"sha256": digest.removeprefix("sha256:")}}]
    definition = statement["predicate"]["buildDefinition"]
    dependencies = {d.get("name"): d for d in definition["resolvedDependencies"]}
    assert dependencies["source"]["digest"] == {"gitCommit": commit} and dependencies["source"]["annotations"] == {"checkedOut": True}
    base_digest = registry_digest(services, base)
    base_name = base if ":" in base.rsplit("/", 1)[-1] else f"{base}:latest"
    assert dependencies[base_name]["digest"] == {"sha256": base_digest.removeprefix("sha256:")}, dependencies
    external = definition["externalParameters"]
    assert external["source"]["commit"] == commit and external["source"]["repository"] == "acme/app"
    assert external["buildArgs"] == {"BASE": base, "MODE": "release"} and external["secretBuildArgs"] == ["TOKEN"]
    assert external["secrets"] == ["npmrc"] and external["context"]["path"] == "svc"
    assert definition["internalParameters"]["executor"] == executor
    assert statement["predicate"]["runDetails"]["metadata"]["invocationId"] == job_id
    assert record["inputs"]["base_images"][0]["digest"] == base_digest

    secrets = (ARG_SECRET, BUILD_SECRET, PASSPHRASE, services["RUNNER_DEV_REGISTRY_PASSWORD"])
    attached = b"".join(data for _, data in signature_layers + attestation_layers)
    everything = json.dumps(record) + log + every_value(stack.harness.store)
    for secret in secrets:
        assert secret.encode() not in attached and secret not in everything, secret[:4]

    verified = stack.harness.cli("verify", tag, "--key", str(public_key))
    assert verified.returncode == 0, verified.stderr
    assert f"base image   {base_name} @ {base_digest}" in verified.stdout
    with stack.client(token=SIGNER) as client:
        provenance = client.get(f"/v1/jobs/{job_id}/provenance").json()
    [served] = provenance["images"]
    assert provenance["signed"] and served["statement_matches"] and served["statement"] == statement


def test_a_two_platform_job_signs_and_attests_the_index_and_each_platforms_manifest(signing, repository, executor, services):
    """The same repository built for linux/amd64 and linux/arm64 (arm64 emulated) FROM the
    two-platform base: the index under the tag and each platform's manifest in it get a `.sig`
    and a `.att` whose subject is that digest, and `runner verify` of the tag verifies all three."""
    why = host_platforms().why_not(parse_platform("linux/arm64"))
    if why:
        pytest.skip(f"this host cannot run arm64 (qemu-user-static's binfmt handler): {why}")
    stack, public_key = signing
    _, commit = repository
    registry = services[SUPPORT[executor].registry_key]
    name = f"signed/{executor}-multi"
    tag = f"{registry}/{name}:{uuid.uuid4().hex[:10]}"
    base = base_for(services, executor).replace("/base/busybox:1", "/base/busybox-multi:1")
    job_id, record, _ = build(stack, executor, repository, tag, base, platforms=["linux/amd64", "linux/arm64"])

    reader = Registry(registry, services["RUNNER_DEV_REGISTRY_USER"], services["RUNNER_DEV_REGISTRY_PASSWORD"])
    [pushed] = record["images"]
    held = reader.manifest(name, tag.rsplit(":", 1)[1])
    assert held is not None
    index_bytes, index = held
    assert pushed["digest"] == index
    listed = {f"{m['platform']['os']}/{m['platform']['architecture']}": m["digest"] for m in json.loads(index_bytes)["manifests"]}
    assert sorted(listed) == ["linux/amd64", "linux/arm64"]
    assert {p["platform"]: p["digest"] for p in pushed["platforms"]} == listed
    expected = {index: None, **{digest: platform for platform, digest in listed.items()}}
    attestation = record["attestation"]
    assert attestation["signed"]
    assert {a["digest"]: a["platform"] for a in attestation["images"]} == expected

    public_pem = public_key.read_bytes()
    base_index, _ = raw_manifest(services, base)
    tags = set(reader.tags(name))
    for digest, platform in expected.items():
        suffix = digest.replace(":", "-")
        assert {f"{suffix}.sig", f"{suffix}.att"} <= tags, (platform, digest)
        payloads = verified_signatures(reader.attached(name, digest, "sig"), public_pem)
        assert [p["critical"]["image"]["docker-manifest-digest"] for p in payloads] == [digest], platform
        [statement] = verified_statements(reader.attached(name, digest, "att"), public_pem)
        assert statement["subject"] == [{"name": f"{registry}/{name}", "digest": {"sha256": digest.removeprefix("sha256:")}}]
        definition = statement["predicate"]["buildDefinition"]
        assert definition["externalParameters"]["platforms"] == ["linux/amd64", "linux/arm64"]
        dependencies = {d.get("name"): d for d in definition["resolvedDependencies"]}
        assert dependencies["source"]["digest"] == {"gitCommit": commit}
        [based] = [d for d in definition["resolvedDependencies"] if d.get("uri", "").startswith("docker-image://")]
        assert based["digest"] == {"sha256": base_index.removeprefix("sha256:")}
        assert set(based["annotations"]["platforms"]) == {"linux/amd64", "linux/arm64"}
        attached = b"".join(data for _, data in reader.attached(name, digest, "sig") + reader.attached(name, digest, "att"))
        for secret in (ARG_SECRET, BUILD_SECRET, PASSPHRASE, services["RUNNER_DEV_REGISTRY_PASSWORD"]):
            assert secret.encode() not in attached, secret[:4]

    verified = stack.harness.cli("verify", tag, "--key", str(public_key))
    assert verified.returncode == 0, verified.stderr
    assert f"verified {registry}/{name}@{index}: signature and SLSA provenance" in verified.stdout
    for platform, digest in listed.items():
        assert f"verified {registry}/{name}@{digest} ({platform}): signature and SLSA provenance" in verified.stdout
    shown = stack.harness.cli("status", job_id).stdout
    assert f"{tag}@{index} (index) signed" in shown and f"    linux/arm64 {listed['linux/arm64']} signed" in shown

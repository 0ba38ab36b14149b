"""Signatures and provenance (runner.supply) without a build:

- cosign's own output (tests/fixtures/cosign: an image signature, a blob attestation and an
  image attestation, each made by cosign) verifies with our verifier, and ours verify with the
  same algorithm written independently in tests/support/cosign_check.py;
- our simple-signing payload is cosign's byte for byte;
- the statement is SLSA provenance v1 made from the BuildInputs, and holds no secret;
- keys: generation, passphrases, their errors (never the passphrase), rotation;
- against the real registry: the `.sig` and `.att` tags, no second signature for the same key,
  unsigned provenance without a key, `runner verify` (a tampered tag fails it), and a registry
  that refuses the extra tags failing the job as `infrastructure` (a worker with the fake
  executor told that its digests are in the registry: the refusal is what is tested, not a build).

The builds on every executor are in tests/contract/test_signing.py."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from runner.context.pack import write_tar
from runner.context.spool import spool_context
from runner.core.attestations import SLSA_PROVENANCE_V1
from runner.core.build_inputs import BuildInputs, SourceInputs
from runner.core.errors import InfrastructureError
from runner.core.jobs import BuildRequest, GitContext, PlatformImage, PushedImage
from runner.core.registry_client import Registries
from runner.core.registry_config import RegistryConfig
from runner.supply.attester import Attester, SigningFailed, pushed_digests
from runner.supply.cosign import Layer, envelope, simple_signing_payload
from runner.supply.inputs import compute_inputs
from runner.supply.keys import KeyHolder, SigningKeyError, generate, load_private_key, load_public_key
from runner.supply.provenance import BUILD_TYPE, RunDetails, Subject, external_parameters, statement
from runner.supply.verify import envelope_statement, signature_verifies
from tests.conftest import RUNNER, registry_digest
from tests.support import ListLog
from tests.support.cosign_check import Registry, ecdsa_verifies, pae, verified_signatures, verified_statements

FIXTURES = Path(__file__).parent / "fixtures" / "cosign"
SECRET = "s3cr3t-" + uuid.uuid4().hex
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


# -- cosign's formats ------------------------------------------------------------------------------
def test_our_simple_signing_payload_is_cosigns_byte_for_byte():
    # sigstore/cosign pkg/cosign/obsolete_test.go: what cosign's payload marshals to
    assert simple_signing_payload(
        "index.docker.io/namespace/image", "sha256:4aa3054270f7a70b4528f2064ee90961788e1e1518703592ae4463de3b889dec") == (
        b'{"critical":{"identity":{"docker-reference":"index.docker.io/namespace/image"},"image":{"docker-manifest-digest":'
        b'"sha256:4aa3054270f7a70b4528f2064ee90961788e1e1518703592ae4463de3b889dec"},"type":"cosign container image '
        b'signature"},"optional":null}')
    made = json.loads((FIXTURES / "image-signature.json").read_text())  # a payload `cosign sign` wrote
    assert simple_signing_payload("192.168.64.2:5000/cosign-signed-single-sample", IMAGE_DIGEST) == base64.b64decode(made["payload"])


IMAGE_DIGEST = "sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00"


def cosign_image_signature() -> Layer:
    made = json.loads((FIXTURES / "image-signature.json").read_text())
    return Layer(base64.b64decode(made["payload"]), made["mimeType"], made["annotations"])


def test_an_image_signature_made_by_cosign_verifies_with_ours():
    public = load_public_key(FIXTURES / "image-signature.pub")
    layer = cosign_image_signature()
    digest = "sha256:" + hashlib.sha256((FIXTURES / "image-manifest.json").read_bytes()).hexdigest()
    assert digest == IMAGE_DIGEST  # the signature is of that manifest
    assert signature_verifies(layer, IMAGE_DIGEST, public) is None
    assert signature_verifies(layer, "sha256:" + "0" * 64, public) == f"a signature of another digest ({IMAGE_DIGEST})"
    other = load_public_key(FIXTURES / "blob-attestation.pub")
    assert signature_verifies(layer, IMAGE_DIGEST, other) == "a signature the key does not verify"
    tampered = Layer(layer.data.replace(b"single", b"double"), layer.media_type, layer.annotations)
    assert signature_verifies(tampered, IMAGE_DIGEST, public) == "a signature the key does not verify"


def test_attestations_made_by_cosign_verify_with_ours():
    blob = (FIXTURES / "blob-slsa-attestation.dsse.json").read_bytes()
    public = load_public_key(FIXTURES / "blob-attestation.pub")
    blob_digest = "sha256:658781cd4ed9bca60dacd09f7bb914bb51502e8b5d619f57f39a1d652596cc24"  # sha256("some-payload")
    found, why = envelope_statement(blob, blob_digest, public, predicate_type="https://slsa.dev/provenance/v0.2")
    assert why is None and found["subject"][0]["name"] == "blob"
    assert envelope_statement(blob, blob_digest, public) == (None, "an attestation of predicate type 'https://slsa.dev/provenance/v0.2'")
    assert envelope_statement(blob, "sha256:" + "1" * 64, public, None) == (None, "an attestation about another digest")
    assert envelope_statement(blob, blob_digest, load_public_key(FIXTURES / "image-signature.pub"), None)[1] == \
        "an attestation the key does not verify"

    bundle = json.loads((FIXTURES / "oci-attestation.sigstore.json").read_text())  # `cosign attest` on an image
    certificate = x509.load_der_x509_certificate(base64.b64decode(bundle["verificationMaterial"]["certificate"]["rawBytes"]))
    key_of_certificate = certificate.public_key()
    image = "sha256:732112270d7e59418a8c080b134b24cabd67d250d0d0147a97ed95ba5c280aa4"
    found, why = envelope_statement(json.dumps(bundle["dsseEnvelope"]).encode(), image, key_of_certificate,  # type: ignore[arg-type]
                                    predicate_type="https://cosign.sigstore.dev/attestation/v1")
    assert why is None and found["predicate"]["Data"] == '{"foo": "bar"}\n'


def test_the_independent_verifier_accepts_cosigns_output_too():
    """The test's own verifier is checked on cosign's bytes before it judges ours."""
    made = json.loads((FIXTURES / "image-signature.json").read_text())
    assert ecdsa_verifies((FIXTURES / "image-signature.pub").read_bytes(),
                          base64.b64decode(made["annotations"]["dev.cosignproject.cosign/signature"]),
                          base64.b64decode(made["payload"]))
    blob = json.loads((FIXTURES / "blob-slsa-attestation.dsse.json").read_text())
    body = base64.b64decode(blob["payload"])
    assert ecdsa_verifies((FIXTURES / "blob-attestation.pub").read_bytes(), base64.b64decode(blob["signatures"][0]["sig"]),
                          pae(blob["payloadType"], body))


@pytest.fixture(scope="module")
def keypair(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("keys")
    return generate(folder / "cosign", None)


def inputs() -> BuildInputs:
    return BuildInputs(context_digest="sha256:" + "c" * 64, dockerfile="build/Dockerfile", target="app", platforms=["linux/amd64"],
                       source=SourceInputs(url="https://git.example/acme/app.git", host="github", repository="acme/app",
                                           ref="refs/heads/main", commit="a" * 40, path="svc", checked_out=True),
                       build_args={"MODE": "release"}, secret_build_args=["TOKEN"], secrets=["npmrc"], labels={"l": "v"},
                       executor="buildah", builder="auto")


RUN = RunDetails(builder_id="https://ci.example/runner", builder_version="1.2.3", invocation_id="job-1", worker="w:1",
                 started=NOW, finished=NOW.replace(minute=5))


def test_ours_verify_with_the_independent_verifier(keypair):
    key = load_private_key(keypair[0])
    public_pem = keypair[1].read_bytes()
    subject = Subject("127.0.0.1:5000/acme/app", "sha256:" + "d" * 64)
    body = statement(subject, inputs(), RUN)
    wrapped = json.loads(envelope(body, key.signer))
    assert wrapped["payloadType"] == "application/vnd.in-toto+json" and base64.b64decode(wrapped["payload"]) == body
    [signature] = wrapped["signatures"]
    assert signature["keyid"] == ""  # as cosign's own: its verifier skips a signature whose key id it cannot match
    assert ecdsa_verifies(public_pem, base64.b64decode(signature["sig"]), pae(wrapped["payloadType"], body))
    assert not ecdsa_verifies(public_pem, base64.b64decode(signature["sig"]), pae(wrapped["payloadType"], body + b" "))
    payload = simple_signing_payload(subject.repository, subject.digest)
    assert ecdsa_verifies(public_pem, base64.b64decode(key.sign(payload)), payload)


def test_the_statement_is_slsa_v1_made_from_the_inputs():
    made = json.loads(statement(Subject("127.0.0.1:5000/acme/app", "sha256:" + "d" * 64, "linux/amd64"), inputs(), RUN))
    assert made["_type"] == "https://in-toto.io/Statement/v1" and made["predicateType"] == SLSA_PROVENANCE_V1
    assert made["subject"] == [{"name": "127.0.0.1:5000/acme/app", "digest": {"sha256": "d" * 64}}]
    definition, details = made["predicate"]["buildDefinition"], made["predicate"]["runDetails"]
    assert definition["buildType"] == BUILD_TYPE
    assert definition["externalParameters"] == {
        "source": {"url": "https://git.example/acme/app.git", "host": "github", "repository": "acme/app",
                   "ref": "refs/heads/main", "commit": "a" * 40, "path": "svc"},
        "context": {"digest": "sha256:" + "c" * 64, "path": "svc"}, "dockerfile": "build/Dockerfile", "target": "app",
        "platforms": ["linux/amd64"], "buildArgs": {"MODE": "release"}, "secretBuildArgs": ["TOKEN"], "secrets": ["npmrc"],
        "labels": {"l": "v"}}
    assert definition["internalParameters"] == {"executor": "buildah", "builder": "auto", "worker": "w:1"}
    assert definition["resolvedDependencies"][:2] == [
        {"name": "source", "uri": "git+https://git.example/acme/app.git@refs/heads/main", "digest": {"gitCommit": "a" * 40},
         "annotations": {"checkedOut": True}},
        {"name": "context", "digest": {"sha256": "c" * 64}, "mediaType": "application/x-tar"}]
    assert details == {"builder": {"id": "https://ci.example/runner", "version": {"ci-build-runner": "1.2.3"}},
                       "metadata": {"invocationId": "job-1", "startedOn": "2026-12-07T12:00:00Z",
                                    "finishedOn": "2026-12-07T12:05:00Z"}}
    again = statement(Subject("127.0.0.1:5000/acme/app", "sha256:" + "d" * 64, "linux/amd64"), inputs(), RUN)
    assert again == statement(Subject("127.0.0.1:5000/acme/app", "sha256:" + "d" * 64, "linux/amd64"), inputs(), RUN)


def spooled(tmp_path: Path, request: BuildRequest, files: dict[str, str]):
    source = tmp_path / "src"
    for name, text in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(text)
    buffer = io.BytesIO()
    write_tar(source, buffer, request.dockerfile)
    return spool_context([buffer.getvalue()], tmp_path / "work" / request.id, request.dockerfile, 10**8)


def test_inputs_hold_no_secret_even_when_a_from_line_uses_one(tmp_path):
    """A secret build arg's value, even substituted into a FROM, never reaches the inputs or the statement."""
    request = BuildRequest(tags=["127.0.0.1:5000/a/b:1"], build_args={"TOKEN": SECRET, "MODE": "x"}, secret_build_args=["TOKEN"],
                           secrets=["npmrc"], context=GitContext(url=f"https://user:{SECRET}@git.example/a.git", commit="b" * 40))
    context = spooled(tmp_path, request, {"Dockerfile": "ARG TOKEN\nFROM registry.invalid/${TOKEN}:1 AS a\nFROM scratch\n"
                                          "COPY --from=a / /\n"})
    context.commit = "b" * 40
    log = ListLog()
    found = compute_inputs(request, context, "fake", "auto", None, log)
    assert found.context_digest == "sha256:" + hashlib.sha256(context.tar_path.read_bytes()).hexdigest()
    assert found.source is not None and found.source.url == "https://git.example/a.git" and found.source.commit == "b" * 40
    assert [b.ref for b in found.base_images] == ["registry.invalid/***:1"]
    assert found.build_args == {"MODE": "x"} and found.secret_build_args == ["TOKEN"] and found.secrets == ["npmrc"]
    body = statement(Subject("127.0.0.1:5000/a/b", "sha256:" + "e" * 64), found, RUN)
    assert SECRET not in found.model_dump_json() and SECRET.encode() not in body and SECRET not in log.text


def test_a_dockerfile_the_spool_did_not_keep_is_read_from_the_tar(tmp_path):
    request = BuildRequest(tags=["127.0.0.1:5000/a/b:1"], dockerfile="d/Dockerfile")
    context = spooled(tmp_path, request, {"d/Dockerfile": "FROM scratch AS s\nFROM base:1\n"})
    assert context.dockerfile_content == b"FROM scratch AS s\nFROM base:1\n"
    context.dockerfile_content = None  # as for a Dockerfile over the spool's cap, or a hard link
    found = compute_inputs(request, context, "fake", "auto", None, ListLog())
    assert [(b.ref, b.name, b.error) for b in found.base_images] == [
        ("base:1", "base:1", "not looked up (the executor uses no registry)")]


def test_pushed_digests_once_per_repository():
    digest = "sha256:" + "f" * 64
    images = [PushedImage(ref="127.0.0.1:5000/a/b:1", digest=digest), PushedImage(ref="127.0.0.1:5000/a/b:latest", digest=digest),
              PushedImage(ref="127.0.0.1:5000/a/c:1", digest=digest), PushedImage(ref="reg.example:5000/a/b", digest=digest)]
    assert pushed_digests(images) == [Subject("127.0.0.1:5000/a/b", digest), Subject("127.0.0.1:5000/a/c", digest),
                                      Subject("reg.example:5000/a/b", digest)]


def test_pushed_digests_of_a_multi_platform_job_are_the_index_and_each_platforms_manifest():
    index, amd64, arm64 = ("sha256:" + c * 64 for c in "abc")
    platforms = [PlatformImage(platform="linux/amd64", digest=amd64), PlatformImage(platform="linux/arm64", digest=arm64)]
    images = [PushedImage(ref="127.0.0.1:5000/a/b:1", digest=index, platforms=platforms),
              PushedImage(ref="127.0.0.1:5000/a/b:2", digest=index, platforms=platforms)]
    assert pushed_digests(images) == [Subject("127.0.0.1:5000/a/b", index), Subject("127.0.0.1:5000/a/b", amd64, "linux/amd64"),
                                      Subject("127.0.0.1:5000/a/b", arm64, "linux/arm64")]


# -- keys ----------------------------------------------------------------------------------------------
def test_keys_with_a_passphrase_and_what_their_errors_say(tmp_path):
    private, public = generate(tmp_path / "k", b"pass-" + SECRET.encode())
    assert private.stat().st_mode & 0o777 == 0o600 and b"ENCRYPTED PRIVATE KEY" in private.read_bytes()
    (tmp_path / "pass").write_text(f"pass-{SECRET}\n")
    key = load_private_key(private, tmp_path / "pass")
    assert key.public_pem == public.read_bytes()
    errors = []
    for passphrase_file, expected in ((None, "the key is encrypted: set signing.passphrase_file"),
                                      (tmp_path / "wrong", "or the passphrase is wrong"),
                                      (tmp_path / "missing", "cannot read it")):
        if passphrase_file is not None and passphrase_file.name == "wrong":
            passphrase_file.write_text("not-" + SECRET)
        with pytest.raises(SigningKeyError, match=expected) as caught:
            load_private_key(private, passphrase_file)
        errors.append(str(caught.value))
    plain, _ = generate(tmp_path / "plain", None)
    with pytest.raises(SigningKeyError, match="not encrypted, but a passphrase is set"):
        load_private_key(plain, tmp_path / "pass")
    (tmp_path / "rsa.pem").write_bytes(rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(SigningKeyError, match="not an ECDSA P-256 key"):
        load_private_key(tmp_path / "rsa.pem")
    with pytest.raises(SigningKeyError, match="exists already"):
        generate(tmp_path / "k", None)
    assert not any(SECRET in e for e in errors)


def test_a_rotated_key_is_used_from_the_next_job(tmp_path):
    first, _ = generate(tmp_path / "first", None)
    second, _ = generate(tmp_path / "second", None)
    live = tmp_path / "live.key"
    live.write_bytes(first.read_bytes())
    holder = KeyHolder(live)
    before = holder.current().key_id
    assert holder.current() is holder.current()  # not read again while unchanged
    os.replace(second, live)  # as a Kubernetes secret update swaps the file
    assert holder.current().key_id != before == load_private_key(first).key_id


# -- against the registry ------------------------------------------------------------------------------
def registries(services, host: str | None = None) -> Registries:
    return Registries([RegistryConfig(host=host or services["RUNNER_DEV_REGISTRY"], username=services["RUNNER_DEV_REGISTRY_USER"],
                                      password=SecretStr(services["RUNNER_DEV_REGISTRY_PASSWORD"]))])


def test_a_multi_platform_jobs_inputs_name_every_platform_and_the_base_manifest_each_takes(services, tmp_path):
    """The two-platform base scripts/services.sh made: its index, and each platform's manifest
    in it as the registry lists them (read with skopeo)."""
    base = services["RUNNER_DEV_BASE_IMAGE"].replace("/base/busybox:1", "/base/busybox-multi:1")
    request = BuildRequest(tags=[f"{services['RUNNER_DEV_REGISTRY']}/a/b:1"], platforms=["linux/amd64", "linux/arm64"])
    context = spooled(tmp_path, request, {"Dockerfile": f"FROM {base}\nRUN true\n"})
    found = compute_inputs(request, context, "buildah", "auto", registries(services), ListLog())
    creds = f"{services['RUNNER_DEV_REGISTRY_USER']}:{services['RUNNER_DEV_REGISTRY_PASSWORD']}"
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", creds, f"docker://{base}"],
                         capture_output=True, check=True, timeout=60).stdout
    listed = {f"{m['platform']['os']}/{m['platform']['architecture']}": m["digest"] for m in json.loads(raw)["manifests"]}
    [image] = found.base_images
    assert image.digest == "sha256:" + hashlib.sha256(raw).hexdigest() and image.error is None
    assert image.platforms == {p: listed[p] for p in ("linux/amd64", "linux/arm64")}
    assert found.platforms == ["linux/amd64", "linux/arm64"]
    assert external_parameters(found)["platforms"] == ["linux/amd64", "linux/arm64"]


def copy_image(services, source: str, target: str, every_platform: bool = False) -> str:
    """`source` copied to `target` in the dev registry (an index whole with `every_platform`); its digest there."""
    creds = f"{services['RUNNER_DEV_REGISTRY_USER']}:{services['RUNNER_DEV_REGISTRY_PASSWORD']}"
    subprocess.run(["skopeo", "copy", "-q", *(["--all"] if every_platform else []), "--src-creds", creds, "--dest-creds", creds,
                    "--src-tls-verify=false", "--dest-tls-verify=false", f"docker://{source}", f"docker://{target}"],
                   check=True, capture_output=True, timeout=120)
    return registry_digest(services, target)


def reader(services) -> Registry:
    return Registry(services["RUNNER_DEV_REGISTRY"], services["RUNNER_DEV_REGISTRY_USER"], services["RUNNER_DEV_REGISTRY_PASSWORD"])


def test_signature_and_attestation_tags_in_the_registry_and_runner_verify(services, keypair, tmp_path):
    host = services["RUNNER_DEV_REGISTRY"]
    repository = f"signing/attached-{uuid.uuid4().hex[:8]}"
    image = f"{host}/{repository}:1"
    digest = copy_image(services, services["RUNNER_DEV_BASE_IMAGE"], image)
    attester = Attester(registries(services), KeyHolder(keypair[0]), True, "https://ci.example/runner")
    log = ListLog()
    done = attester.attest([PushedImage(ref=image, digest=digest)], inputs(), RUN, log)
    assert done.signed and done.key_id == load_private_key(keypair[0]).key_id and done.unsigned_reason is None
    [attested] = done.images
    tag = digest.replace(":", "-")
    assert attested.signature == f"{host}/{repository}:{tag}.sig" and attested.attestation == f"{host}/{repository}:{tag}.att"
    assert {f"{tag}.sig", f"{tag}.att"} <= set(reader(services).tags(repository))
    public_pem = keypair[1].read_bytes()
    [payload] = verified_signatures(reader(services).attached(repository, digest, "sig"), public_pem)
    assert payload["critical"] == {"identity": {"docker-reference": f"{host}/{repository}"},
                                   "image": {"docker-manifest-digest": digest}, "type": "cosign container image signature"}
    [made] = verified_statements(reader(services).attached(repository, digest, "att"), public_pem)
    assert made["subject"][0]["digest"] == {"sha256": digest.removeprefix("sha256:")}

    again = attester.attest([PushedImage(ref=image, digest=digest)], inputs(), RUN, log)
    assert again.signed
    assert len(reader(services).attached(repository, digest, "sig")) == 1  # the same key's signature is not added twice
    assert len(reader(services).attached(repository, digest, "att")) == 2  # each job's provenance is kept

    config = tmp_path / "runner.yml"
    config.write_text(json.dumps({"registries": [{"host": host, "username": services["RUNNER_DEV_REGISTRY_USER"],
                                                  "password": services["RUNNER_DEV_REGISTRY_PASSWORD"]}]}))
    env = {**os.environ, "RUNNER_CONFIG": str(config)}
    runner = RUNNER
    verified = subprocess.run([runner, "verify", image, "--key", str(keypair[1])], env=env, capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0, verified.stderr
    assert f"verified {host}/{repository}@{digest}" in verified.stdout
    assert "source       https://git.example/acme/app.git refs/heads/main @ " + "a" * 40 in verified.stdout
    other, _ = generate(tmp_path / "other", None)
    wrong = subprocess.run([runner, "verify", image, "--key", str(other.with_suffix(".pub"))], env=env, capture_output=True,
                           text=True, timeout=60)
    assert wrong.returncode == 1 and "NOT VERIFIED" in wrong.stderr and "no signature the key verifies" in wrong.stderr

    # tampered: another manifest pushed under the tag; its digest has no signature of ours
    copy_image(services, f"{host}/{repository}:{tag}.att", image)
    tampered = subprocess.run([runner, "verify", image, "--key", str(keypair[1])], env=env, capture_output=True, text=True,
                              timeout=60)
    assert tampered.returncode == 1, tampered.stdout
    assert "(no .sig tag)" in tampered.stderr and "(no .att tag)" in tampered.stderr


def test_without_a_key_the_provenance_is_attached_unsigned(services):
    host = services["RUNNER_DEV_REGISTRY"]
    repository = f"signing/unsigned-{uuid.uuid4().hex[:8]}"
    image = f"{host}/{repository}:1"
    digest = copy_image(services, services["RUNNER_DEV_BASE_IMAGE"], image)
    done = Attester(registries(services), None, False, "urn:x").attest([PushedImage(ref=image, digest=digest)], inputs(), RUN,
                                                                       ListLog())
    assert not done.signed and done.unsigned_reason == "no signing key is configured (signing.key_file)"
    [attested] = done.images
    assert attested.signature is None
    [(descriptor, data)] = reader(services).attached(repository, digest, "att")
    wrapped = json.loads(data)
    assert wrapped["signatures"] == [] and json.loads(base64.b64decode(wrapped["payload"]))["subject"][0]["digest"]["sha256"] == \
        digest.removeprefix("sha256:")
    assert f"{digest.replace(':', '-')}.sig" not in reader(services).tags(repository)


def test_jobs_that_pushed_the_same_digest_take_turns_at_its_tags(services, keypair, new_store):
    """Four jobs attaching to one digest at once (as two pushes of the same commit do): none
    fails, none is lost: four attestations, one signature (the same key's, not added twice)."""
    host = services["RUNNER_DEV_REGISTRY"]
    repository = f"signing/turns-{uuid.uuid4().hex[:8]}"
    image = f"{host}/{repository}:1"
    digest = copy_image(services, services["RUNNER_DEV_BASE_IMAGE"], image)
    store = new_store()
    results: list[object] = []

    def one(n: int) -> None:
        attester = Attester(registries(services), KeyHolder(keypair[0]), True, "urn:x", lock=store.turn)
        run = RunDetails("urn:x", "1", f"job-{n}", "w", NOW, NOW)
        try:
            results.append(attester.attest([PushedImage(ref=image, digest=digest)], inputs(), run, ListLog()))
        except Exception as exc:  # noqa: BLE001 - what failed is the test's answer
            results.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert all(getattr(r, "signed", False) for r in results) and len(results) == 4, results
    assert len(reader(services).attached(repository, digest, "sig")) == 1
    made = verified_statements(reader(services).attached(repository, digest, "att"), keypair[1].read_bytes())
    assert sorted(s["predicate"]["runDetails"]["metadata"]["invocationId"] for s in made) == [f"job-{n}" for n in range(4)]


class RefusingProxy(BaseHTTPRequestHandler):
    """A registry that refuses extra tags: the real one behind it, except that a manifest PUT
    under a `.sig` tag is answered 400 TAG_INVALID, as a registry with tag rules would."""

    upstream = ""
    refused: list[str] = []

    def log_message(self, *args):
        pass

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.command == "PUT" and "/manifests/sha256-" in self.path and self.path.endswith(".sig"):
            RefusingProxy.refused.append(self.path)
            answer = json.dumps({"errors": [{"code": "TAG_INVALID", "message": "tags of this form are not allowed"}]}).encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
        response = httpx.request(self.command, f"http://{self.upstream}{self.path}", content=body, headers=headers, timeout=30)
        self.send_response(response.status_code)
        for name, value in response.headers.items():
            if name.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.content)

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward


@pytest.fixture
def refusing_registry(services):
    RefusingProxy.upstream, RefusingProxy.refused = services["RUNNER_DEV_REGISTRY"], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), RefusingProxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_registry_refusing_the_signature_tag_fails_required_signing(services, keypair, refusing_registry):
    repository = f"signing/refused-{uuid.uuid4().hex[:8]}"
    digest = copy_image(services, services["RUNNER_DEV_BASE_IMAGE"], f"{services['RUNNER_DEV_REGISTRY']}/{repository}:1")
    image = PushedImage(ref=f"{refusing_registry}/{repository}:1", digest=digest)
    through = registries(services, refusing_registry)
    with pytest.raises(SigningFailed) as caught:
        Attester(through, KeyHolder(keypair[0]), True, "urn:x").attest([image], inputs(), RUN, ListLog())
    assert isinstance(caught.value, InfrastructureError) and caught.value.kind == "infrastructure"
    assert "the signature could not be stored" in caught.value.message and "(400)" in caught.value.message
    assert RefusingProxy.refused
    optional = Attester(through, KeyHolder(keypair[0]), False, "urn:x").attest([image], inputs(), RUN, ListLog())
    assert not optional.signed and "the signature could not be stored" in (optional.unsigned_reason or "")


def test_a_job_whose_signature_is_refused_fails_as_infrastructure(make_harness, services, keypair, refusing_registry, tmp_path):
    """Through a real worker: the fake executor (its digest made up, nothing built) told its
    digests are in the registry, so the refusal of the `.sig` tag is what the job meets."""
    user, password = services["RUNNER_DEV_REGISTRY_USER"], services["RUNNER_DEV_REGISTRY_PASSWORD"]
    h = make_harness(executors={"fake": {"enabled": True, "publishes": True}}, signing={"key_file": str(keypair[0])})
    h.config["registries"].append({"host": refusing_registry, "username": user, "password": password})
    h.config_path.write_text(json.dumps(h.config))
    h.worker_proc = h.start_worker("--queues", f"{h.config['worker']['namespace']}.fake")
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    result = h.cli("submit", str(tmp_path), "-t", f"{refusing_registry}/signing/job:{uuid.uuid4().hex[:8]}", "--executor", "fake",
                   "--json")
    record = json.loads(result.stdout)
    assert result.returncode == 3, result.stderr  # infrastructure
    assert record["status"] == "failed" and record["error"]["kind"] == "infrastructure"
    assert "(signing.required)" in record["error"]["message"] and "the signature could not be stored" in record["error"]["message"]
    assert record["attestation"] is None and record["inputs"]["executor"] == "fake"
    deadline = time.monotonic() + 10
    while not RefusingProxy.refused and time.monotonic() < deadline:
        time.sleep(0.1)
    assert RefusingProxy.refused

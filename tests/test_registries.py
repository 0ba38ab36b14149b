"""The registry client's tagging without a push (runner/core/registry_client.py) and the executors'
one-push-per-registry rule (executors/tags.py), against the real htpasswd registry; what the
registry holds afterwards is read back with skopeo, not with our code."""

from __future__ import annotations

import hashlib
import json
import subprocess
import uuid

import pytest

from executors.tags import push_tags
from runner.core.cancel import CancelToken
from runner.core.errors import RegistryAuthFailed
from runner.core.jobs import ImageRef
from runner.core.registry_client import INDEX_TYPES, Copies, Manifest, NotCopied, Registries
from runner.core.registry_config import RegistryConfig
from tests.conftest import WRONG_PASSWORD_HOST, registry_digest
from tests.support import ListLog


def skopeo(services, *args: str) -> str:
    creds = f"{services['RUNNER_DEV_REGISTRY_USER']}:{services['RUNNER_DEV_REGISTRY_PASSWORD']}"
    return subprocess.run(["skopeo", *args[:1], "--creds" if args[0] == "inspect" else "--src-creds", creds,
                           *(["--dest-creds", creds] if args[0] == "copy" else []), *args[1:]],
                          capture_output=True, text=True, check=True, timeout=120).stdout


@pytest.fixture
def registries(services) -> Registries:
    user, password = services["RUNNER_DEV_REGISTRY_USER"], services["RUNNER_DEV_REGISTRY_PASSWORD"]
    return Registries([RegistryConfig(host=services["RUNNER_DEV_REGISTRY"], username=user, password=password),
                       RegistryConfig(host=WRONG_PASSWORD_HOST, username=user, password="wrong-password", insecure=True)])


@pytest.fixture
def pushed(services) -> ImageRef:
    """An image pushed to a repository of its own (by skopeo, from the base image)."""
    ref = ImageRef.parse(f"{services['RUNNER_DEV_REGISTRY']}/regtest/src-{uuid.uuid4().hex[:8]}:pushed")
    skopeo(services, "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
           f"docker://{services['RUNNER_DEV_BASE_IMAGE']}", f"docker://{ref}")
    return ref


def other(ref: ImageRef, repository: str | None = None, tag: str | None = None) -> ImageRef:
    return ImageRef(registry=ref.registry, repository=repository or ref.repository, tag=tag or uuid.uuid4().hex[:8])


def test_a_tag_in_the_same_repository_is_the_same_manifest(services, registries, pushed):
    digest = registry_digest(services, str(pushed))
    target = other(pushed)
    assert registries.copy_tag(pushed, digest, target) == digest
    assert registry_digest(services, str(target)) == digest
    assert skopeo(services, "inspect", "--raw", "--tls-verify=false", f"docker://{target}") == \
        skopeo(services, "inspect", "--raw", "--tls-verify=false", f"docker://{pushed}")  # byte for byte


def test_another_repository_gets_its_blobs_mounted_and_the_image_pulls_from_there(services, registries, pushed, tmp_path):
    digest = registry_digest(services, str(pushed))
    target = other(pushed, f"regtest/dst-{uuid.uuid4().hex[:8]}")
    copies = Copies()
    assert registries.copy_tag(pushed, digest, target, copies) == digest
    assert list(copies.manifests) == [digest]  # fetched once, and mounted once: the job's next tag reuses both
    assert {blob for repo, blob in copies.mounted if repo == target.repository} == set(copies.manifests[digest].blobs())
    assert registry_digest(services, str(target)) == digest
    # every blob is readable from the new repository itself: pull it whole with skopeo
    skopeo(services, "copy", "--src-tls-verify=false", f"docker://{target}", f"dir:{tmp_path / 'pulled'}")
    manifest = json.loads((tmp_path / "pulled" / "manifest.json").read_text())
    for blob in [manifest["config"], *manifest["layers"]]:
        data = (tmp_path / "pulled" / blob["digest"].removeprefix("sha256:")).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == blob["digest"]


def test_a_multi_platform_index_is_copied_with_its_manifests(services, registries, pushed):
    client = registries.client(pushed.registry)
    child_digest = registry_digest(services, str(pushed))
    child = client.manifest(pushed.repository, child_digest)
    index = json.dumps({"schemaVersion": 2, "mediaType": INDEX_TYPES[0], "manifests": [
        {"mediaType": child.media_type, "digest": child_digest, "size": len(child.body),
         "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()
    index_digest = "sha256:" + hashlib.sha256(index).hexdigest()
    source = other(pushed, tag="index")
    client.put_manifest(source.repository, source.tag, Manifest(index, INDEX_TYPES[0], index_digest))
    target = other(pushed, f"regtest/idx-{uuid.uuid4().hex[:8]}")
    assert registries.copy_tag(source, index_digest, target) == index_digest
    assert json.loads(skopeo(services, "inspect", "--raw", "--tls-verify=false", f"docker://{target}"))["manifests"][0][
        "digest"] == child_digest
    repo = f"{target.registry}/{target.repository}"
    assert registry_digest(services, f"{repo}@{child_digest}") == child_digest  # the platform image is there too


def test_a_declined_mount_is_said_and_the_tag_is_pushed_instead(services, registries, pushed, monkeypatch):
    client = registries.client(pushed.registry)
    target_repo = f"regtest/declined-{uuid.uuid4().hex[:8]}"
    # a real decline: the source repository does not hold that blob, so the registry opens an
    # upload instead (202), which the client cancels
    assert client.mount_blob(target_repo, "sha256:" + "0" * 64, pushed.repository) is False
    # the rest of the path with a registry that declines every mount (e.g. across namespaces it
    # may not read): push_tags pushes that tag for real
    monkeypatch.setattr(client, "mount_blob", lambda *args: False)
    digest = registry_digest(services, str(pushed))
    target = other(pushed, target_repo)
    with pytest.raises(NotCopied):
        registries.copy_tag(pushed, digest, target)
    pushes, log = [], ListLog()

    def push(ref: ImageRef) -> str:
        pushes.append(ref)
        if ref != pushed:
            skopeo(services, "copy", "--src-tls-verify=false", "--dest-tls-verify=false", f"docker://{pushed}", f"docker://{ref}")
        return digest

    same = other(pushed)
    images = push_tags([pushed, same, target], push, registries, log, CancelToken())
    assert pushes == [pushed, target]  # the same-repository tag needed no mount: a manifest PUT
    assert [i.digest for i in images] == [digest] * 3 == [registry_digest(services, str(r)) for r in (pushed, same, target)]
    assert f"[runner] could not tag {target} without a push" in log.text and "pushing it" in log.text
    assert f"[runner] tagged {same} {digest} (manifest put, same repository; no push)" in log.text


def test_refused_credentials_fail_the_tag_and_are_not_retried_as_a_push(services, registries, pushed):
    digest = registry_digest(services, str(pushed))
    wrong = ImageRef(registry=WRONG_PASSWORD_HOST, repository=pushed.repository, tag="src")
    pushes: list[ImageRef] = []
    with pytest.raises(RegistryAuthFailed):
        push_tags([wrong, other(wrong)], lambda ref: pushes.append(ref) or digest, registries, ListLog(), CancelToken())
    assert pushes == [wrong]  # the second tag's manifest PUT was refused: no push attempted after it

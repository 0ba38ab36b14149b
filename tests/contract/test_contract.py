"""The contract suite: the same end-to-end cases on every executor that can run here.

Each case drives the real CLI against a real worker, then reads the result back from the
registry with skopeo and runs the image on the host engine."""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import WRONG_PASSWORD_HOST, registry_digest, run_image
from tests.support import all_support

SUPPORT = all_support()


def executor_params():
    for name, support in SUPPORT.items():
        reason = support.skip_reason()
        yield pytest.param(name, id=name, marks=[pytest.mark.skip(reason=reason)] if reason else [])


@pytest.fixture(params=list(executor_params()))
def executor(request) -> str:
    return request.param


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def ref(harness, executor: str, name: str, tag: str | None = None) -> str:
    registry = harness.registry(SUPPORT[executor].registry_key)
    return f"{registry}/contract/{executor}-{name}:{tag or uuid.uuid4().hex[:10]}"


def submit(harness, executor: str, context: Path, *args: str):
    result = harness.cli("submit", str(context), "--executor", executor, "--json", *args)
    record = json.loads(result.stdout) if result.stdout.strip().startswith("{") else None
    return result, record


def base(harness) -> str:
    """The base image by the address the running case's executor reaches (its param id)."""
    current = re.search(r"\[([^\]]+)\]", os.environ.get("PYTEST_CURRENT_TEST", ""))
    for name in (current[1].split("-") if current else []):
        if name in SUPPORT and SUPPORT[name].base_image:
            return SUPPORT[name].base_image(harness.services)
    return harness.services["RUNNER_DEV_BASE_IMAGE"]


def test_simple_build_lands_in_registry_with_reported_digest(harness, executor, tmp_path):
    ctx = write(tmp_path, {"Dockerfile": f"FROM {base(harness)}\nRUN echo built-by-{executor} > /out.txt\n"})
    image = ref(harness, executor, "simple")
    result, record = submit(harness, executor, ctx, "-t", image)
    assert result.returncode == 0, result.stderr + result.stdout
    assert record["status"] == "succeeded" and record["executor"] == executor
    [pushed] = record["images"]
    assert pushed["ref"] == image
    assert pushed["digest"] == registry_digest(harness.services, image)
    assert run_image(image, "cat", "/out.txt").strip() == f"built-by-{executor}"


def test_multi_stage_target_stops_at_stage(harness, executor, tmp_path):
    ctx = write(tmp_path, {"Dockerfile": (
        f"FROM {base(harness)} AS first\nRUN echo first > /stage.txt\n"
        f"FROM {base(harness)} AS second\nRUN echo second > /stage.txt\n")})
    image = ref(harness, executor, "target")
    result, record = submit(harness, executor, ctx, "-t", image, "--target", "first")
    assert result.returncode == 0, result.stderr
    assert run_image(image, "cat", "/stage.txt").strip() == "first"


def test_build_args_reach_the_build(harness, executor, tmp_path):
    ctx = write(tmp_path, {"Dockerfile": f"FROM {base(harness)}\nARG COLOUR=none\nRUN echo $COLOUR > /colour\n"})
    image = ref(harness, executor, "args")
    result, _ = submit(harness, executor, ctx, "-t", image, "--build-arg", "COLOUR=teal")
    assert result.returncode == 0, result.stderr
    assert run_image(image, "cat", "/colour").strip() == "teal"


def test_dockerignore_keeps_files_out(harness, executor, tmp_path):
    ctx = write(tmp_path, {
        "Dockerfile": f"FROM {base(harness)}\nCOPY . /src\nRUN ls -a /src | sort > /listing\n",
        ".dockerignore": "*.log\nsecret/\n!keep.log\n",
        "app.txt": "a", "debug.log": "x", "keep.log": "k", "secret/key": "s",
    })
    image = ref(harness, executor, "ignore")
    result, _ = submit(harness, executor, ctx, "-t", image)
    assert result.returncode == 0, result.stderr
    listing = run_image(image, "cat", "/listing").split()
    assert "app.txt" in listing and "keep.log" in listing
    assert "debug.log" not in listing and "secret" not in listing


def test_dockerfile_in_subfolder(harness, executor, tmp_path):
    ctx = write(tmp_path, {"docker/build.Dockerfile": f"FROM {base(harness)}\nCOPY data.txt /data.txt\n", "data.txt": "from-root"})
    image = ref(harness, executor, "subdir")
    result, _ = submit(harness, executor, ctx, "-t", image, "-f", "docker/build.Dockerfile")
    assert result.returncode == 0, result.stderr
    assert run_image(image, "cat", "/data.txt") == "from-root"


def test_two_tags_one_digest(harness, executor, tmp_path):
    ctx = write(tmp_path, {"Dockerfile": f"FROM {base(harness)}\nRUN echo two > /two\n"})
    first, second = ref(harness, executor, "two", "1.0"), ref(harness, executor, "two", "latest")
    result, record = submit(harness, executor, ctx, "-t", first, "-t", second)
    assert result.returncode == 0, result.stderr
    digests = {image["digest"] for image in record["images"]}
    assert len(digests) == 1 and [i["ref"] for i in record["images"]] == [first, second]
    assert registry_digest(harness.services, first) == registry_digest(harness.services, second) == digests.pop()


def test_extra_tags_are_put_without_a_push_one_push_per_registry(harness, executor, tmp_path):
    """Tags in the pushed repository and in another repository of the same registry get the
    pushed manifest (a PUT; blobs mounted across repositories), not a second push; a tag on
    another registry is pushed there. Every tag holds the digest reported for it, and the
    image in the other repository runs."""
    ctx = write(tmp_path, {"Dockerfile": f"FROM {base(harness)}\nRUN echo {uuid.uuid4().hex} > /tagged\n"})
    first, same, other_repo = ref(harness, executor, "tags"), ref(harness, executor, "tags"), ref(harness, executor, "tags-other")
    tags = [first, same, other_repo]
    if SUPPORT[executor].registry_key == "RUNNER_DEV_REGISTRY":  # the same registry by its other name: another registry to us
        name = harness.registry("RUNNER_DEV_REGISTRY_NAME")
        tags += [f"{name}/contract/{executor}-tags:{uuid.uuid4().hex[:10]}", f"{name}/contract/{executor}-tags-b:{uuid.uuid4().hex[:10]}"]
    result, record = submit(harness, executor, ctx, *[arg for t in tags for arg in ("-t", t)])
    assert result.returncode == 0, result.stderr + result.stdout
    log = harness.cli("logs", record["id"]).stdout
    registries = {t.split("/", 1)[0] for t in tags}
    assert len(re.findall(r"^\[runner\] pushed ", log, re.M)) == len(registries), log
    assert len(re.findall(r"^\[runner\] tagged .* \(manifest put, ", log, re.M)) == len(tags) - len(registries), log
    assert f"[runner] tagged {other_repo} " in log and "blobs mounted from" in log
    images = {image["ref"]: image["digest"] for image in record["images"]}
    assert list(images) == tags
    for tag in tags:
        assert images[tag] == registry_digest(harness.services, tag)
    for registry in registries:
        assert len({digest for tag, digest in images.items() if tag.startswith(registry + "/")}) == 1
    assert run_image(other_repo, "cat", "/tagged") == run_image(first, "cat", "/tagged")


def test_failing_step_fails_the_job_and_names_the_step(harness, executor, tmp_path):
    ctx = write(tmp_path, {"Dockerfile": f"FROM {base(harness)}\nRUN echo about-to-fail && exit 3\n"})
    result, record = submit(harness, executor, ctx, "-t", ref(harness, executor, "fails"))
    assert result.returncode == 1
    assert record["status"] == "failed" and record["error"]["kind"] == "build"
    assert "exit 3" in record["error"]["message"] or "RUN echo about-to-fail" in record["error"]["message"]
    log = harness.cli("logs", record["id"]).stdout
    assert "about-to-fail" in log


def test_wrong_registry_password_fails_with_auth_message(harness, executor, tmp_path):
    if SUPPORT[executor].registry_key != "RUNNER_DEV_REGISTRY":
        pytest.skip(f"{executor} reaches the registry by name; the wrong-password alias is {WRONG_PASSWORD_HOST}")
    ctx = write(tmp_path, {"Dockerfile": f"FROM {base(harness)}\nRUN echo hi > /hi\n"})
    result, record = submit(harness, executor, ctx, "-t", f"{WRONG_PASSWORD_HOST}/contract/{executor}-auth:1")
    assert result.returncode == 1, result.stderr
    assert record["status"] == "failed" and record["error"]["kind"] == "auth"
    assert "wrong-password" not in json.dumps(record) and "wrong-password" not in harness.cli("logs", record["id"]).stdout


def test_unreadable_password_file_fails_the_push_at_once_naming_it(make_harness, executor, tmp_path):
    """The push target's password_file cannot be read: an infrastructure error that names the
    registry and the setting (never the host path), with no retry and no anonymous push."""
    if SUPPORT[executor].registry_key != "RUNNER_DEV_REGISTRY":
        pytest.skip(f"{executor} reaches the registry by name; the alias is {WRONG_PASSWORD_HOST}")
    missing = tmp_path / "secrets" / "registry-password"
    h = make_harness()
    h.config["registries"] = [r for r in h.config["registries"] if r["host"] != WRONG_PASSWORD_HOST] + [
        {"host": WRONG_PASSWORD_HOST, "username": h.services["RUNNER_DEV_REGISTRY_USER"], "password_file": str(missing),
         "insecure": True}]
    h.config_path.write_text(yaml.safe_dump(h.config))
    h.worker_proc = h.start_worker()
    ctx = write(tmp_path / "ctx", {"Dockerfile": f"FROM {base(h)}\nRUN echo hi > /hi\n"})
    result, record = submit(h, executor, ctx, "-t", f"{WRONG_PASSWORD_HOST}/contract/{executor}-pwfile:1")
    assert result.returncode == 3, result.stderr + result.stdout  # the CLI's exit code for infrastructure
    assert record["status"] == "failed" and record["error"]["kind"] == "infrastructure", record["error"]
    message, log = record["error"]["message"], h.cli("logs", record["id"]).stdout
    assert f"registry {WRONG_PASSWORD_HOST}: password_file: cannot read it" in message, message
    assert str(tmp_path) not in message and str(tmp_path) not in log
    assert "retrying" not in log and "[runner] requeued" not in log and record["attempts"] == 1, log  # no retry

"""The frontend image a `# syntax=` line (or the BUILDKIT_SYNTAX build arg) names is one of a
BuildKit build's inputs: the real engine (the socket executor's BuildKit, Docker 20.10) hands
the Dockerfile to it exactly where runner.context.dockerfile_bases.frontend_image reads one
(tests/test_dockerfile_bases.py's FRONTEND_CASES, a busybox as the "frontend", which fails
when run as one); and the job's inputs name it, resolved in the registry, so a reuse's key
moves when its tag does, on the executors that use it only."""

from __future__ import annotations

import uuid

import pytest

from runner.config.settings import Settings
from runner.context.dockerfile_bases import frontend_image
from runner.core.cancel import CancelToken
from runner.core.errors import ExecutorError
from runner.core.host_platforms import native_platform
from runner.core.jobs import BuildRequest
from runner.supply.inputs import compute_inputs
from runner.supply.provenance import resolved_dependencies
from tests.support import ListLog, executor_for, spooled_context
from tests.test_dockerfile_bases import FRONTEND_CASES, frontend_case
from tests.test_signing import copy_image, registries

#: what the engine's error says when it ran the image a Dockerfile named as its frontend (and
#: busybox, run as one, exited); an empty BUILDKIT_SYNTAX fails before: "invalid reference format"
RAN_THE_FRONTEND = "failed to solve with frontend gateway.v0: exit code"


@pytest.fixture(scope="module")
def settings(harness) -> Settings:
    return harness.settings


@pytest.mark.parametrize("case", FRONTEND_CASES, ids=[repr(c[0][:32]) + (" +arg" if c[1] else "") for c in FRONTEND_CASES])
def test_the_engine_runs_the_frontend_exactly_where_one_is_read(case, settings, services, tmp_path):
    base = services["RUNNER_DEV_BASE_IMAGE"]
    dockerfile, args, expected, used = frontend_case(case, base, base)
    job = BuildRequest(executor="socket", tags=[f"{services['RUNNER_DEV_REGISTRY']}/frontend/x:{uuid.uuid4().hex[:8]}"],
                       push=False, build_args=args)
    executor = executor_for(settings, "socket")
    error = ""
    try:
        executor.run(job, spooled_context(settings, job, tmp_path / "src", {"Dockerfile": dockerfile}), ListLog(), CancelToken())
    except ExecutorError as exc:
        error = exc.message
    finally:
        executor.cleanup(job.id)
    assert (RAN_THE_FRONTEND in error) == used, error
    if used:  # never read narrower than the engine: a frontend it runs is always in the inputs
        assert frontend_image(dockerfile, args) == expected == base


def test_the_inputs_name_the_frontend_resolved_and_the_key_moves_with_its_tag(settings, services, tmp_path):
    frontend = f"{services['RUNNER_DEV_REGISTRY']}/frontend/syntax-{uuid.uuid4().hex[:8]}:1"
    first = copy_image(services, services["RUNNER_DEV_BASE_IMAGE"], frontend)
    request = BuildRequest(tags=[f"{services['RUNNER_DEV_REGISTRY']}/a/b:1"])
    context = spooled_context(settings, request, tmp_path / "src", {"Dockerfile": f"# syntax={frontend}\nFROM {services['RUNNER_DEV_BASE_IMAGE']}\n"})

    def inputs(reads_frontend: bool):
        return compute_inputs(request, context, "socket", "auto", registries(services), ListLog(), reads_frontend)

    on_buildkit, elsewhere = inputs(True), inputs(False)
    [read] = [image for image in on_buildkit.base_images if image.ref == frontend]
    assert read.digest == first and read.error is None and on_buildkit.key() is not None
    assert {"uri": f"docker-image://{frontend}", "digest": first} in [  # and the provenance names it
        {"uri": d.pb.uri, "digest": f"sha256:{d.pb.digest['sha256']}"} for d in resolved_dependencies(on_buildkit) if d.pb.digest]
    assert frontend not in {image.ref for image in elsewhere.base_images}  # buildah, the classic builder: not an input

    multi = services["RUNNER_DEV_BASE_IMAGE"].replace("/base/busybox:1", "/base/busybox-multi:1")
    moved = copy_image(services, multi, frontend, every_platform=True)  # the tag moves (to an index)
    after = inputs(True)
    [read] = [image for image in after.base_images if image.ref == frontend]
    assert read.digest == moved != first
    assert list(read.platforms) == [str(native_platform())]  # the frontend runs on the worker's own platform
    assert after.key() != on_buildkit.key()
    assert inputs(False).key() == elsewhere.key()  # where no frontend is read, its tag's move changes nothing


@pytest.mark.parametrize(("executor", "builder", "reads"), [
    ("socket", "auto", True), ("socket", "buildkit", True), ("socket", "classic", False), ("buildah", "auto", False),
])
def test_which_builds_read_a_frontend(settings, executor, builder, reads):
    assert executor_for(settings, executor).reads_frontend(builder) is reads

"""bench/bench_cache.py --breakdown: a job's log cut into phases (where a cold worker's time
goes); --ahead: the cache images a log names, and the auth file its pulls read. The timings
themselves belong to the benchmark; this checks the cutting, on buildah's own log lines."""

from __future__ import annotations

import base64
import json
import stat

import pytest

from bench.bench_cache import exported_cache_images, phases, write_authfile

#: a cold worker's job log with the registry cache (buildah 1.28's lines, abridged), times in s
COLD = [
    (0.000, "[runner] buildah 1.28.2, storage overlay, isolation oci (storage: overlay works)"),
    (0.023, "STEP 1/3: FROM 127.0.0.1:5000/base/busybox:1"),
    (0.026, "Trying to pull 127.0.0.1:5000/base/busybox:1..."),
    (0.050, "Getting image source signatures"),  # the FROM pull's: not the push
    (0.159, "STEP 2/3: RUN sleep 1 && dd if=/dev/urandom of=/deps.bin bs=1M count=8"),
    (0.274, "--> Cache pulled from remote 127.0.0.1:5000/bench-cache/app:7aada340"),
    (0.274, "--> Using cache 8977d49d8d9f"),
    (0.279, "[2/2] STEP 3/3: COPY app.txt /app.txt"),
    (0.479, "--> Using cache 71b097d3454f"),
    (0.598, "--> Pushing cache 127.0.0.1:5000/bench-cache/app:9fd7228d"),
    (0.631, "Getting image source signatures"),
    (0.631, "Copying blob sha256:7fead1205135"),
    (0.709, "[runner] pushed 127.0.0.1:5000/bench/app:1 sha256:36ddc7e9"),
]


def cut(log: list[tuple[float, str]]) -> dict[str, float]:
    return phases(log[0][0], log[-1][0], [at for at, _ in log], [text for _, text in log])


def test_a_log_is_cut_at_each_step_its_cache_export_and_its_push():
    took = cut(COLD)
    assert list(took) == ["start, up to STEP 1", "STEP 1/3: FROM 127.0.0.1:5000/base/busybox",  # 32 characters of it
                          "STEP 2/3: RUN sleep 1 && dd if=/dev/urando",
                          "STEP 3/3: COPY app.txt /app.txt", "STEP 3/3: --cache-to export", "push"]
    assert took["start, up to STEP 1"] == pytest.approx(0.023)
    assert took["STEP 1/3: FROM 127.0.0.1:5000/base/busybox"] == pytest.approx(0.136)  # to STEP 2, past the FROM's signatures line
    assert took["STEP 3/3: COPY app.txt /app.txt"] == pytest.approx(0.319)
    assert took["STEP 3/3: --cache-to export"] == pytest.approx(0.033)
    assert took["push"] == pytest.approx(0.078)
    assert sum(took.values()) == pytest.approx(0.709)


def test_a_log_without_a_push_ends_with_its_last_step():
    took = cut(COLD[:9])
    assert list(took)[-1] == "STEP 3/3: COPY app.txt /app.txt"
    assert "push" not in took
    assert sum(took.values()) == pytest.approx(0.479)


def test_a_log_without_steps_is_one_phase():
    assert cut([(1.0, "[runner] building with BuildKit"), (1.5, "#5 DONE 0.1s"), (2.0, "[runner] pushed x")]) == {
        "the whole job (no STEP lines: not buildah's log)": pytest.approx(1.0)}


def test_the_cache_images_a_warm_log_pushed_are_named_in_step_order():
    warm = ["STEP 2/3: RUN x", "--> Using cache 8977d49d8d9f", "--> Pushing cache 127.0.0.1:5000/bench-cache/app:7aada340",
            "--> Cache pulled from remote 127.0.0.1:5000/bench-cache/app:0000",  # pulled, not pushed: not named
            "STEP 3/3: COPY app.txt /app.txt", "--> Pushing cache 127.0.0.1:5000/bench-cache/app:9fd7228d"]
    assert exported_cache_images(warm) == ["127.0.0.1:5000/bench-cache/app:7aada340", "127.0.0.1:5000/bench-cache/app:9fd7228d"]
    assert exported_cache_images([text for _, text in COLD]) == ["127.0.0.1:5000/bench-cache/app:9fd7228d"]


def test_the_pulls_read_their_login_from_a_private_file(tmp_path):
    env = {"RUNNER_DEV_REGISTRY": "127.0.0.1:5000", "RUNNER_DEV_REGISTRY_USER": "ci", "RUNNER_DEV_REGISTRY_PASSWORD": "pw:1"}
    path = write_authfile(env, tmp_path / "auth.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert base64.b64decode(json.loads(path.read_text())["auths"]["127.0.0.1:5000"]["auth"]) == b"ci:pw:1"

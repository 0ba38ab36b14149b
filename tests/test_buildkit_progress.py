"""The BuildKit progress decoder and printer, replayed against real engine streams.

tests/fixtures/buildkit/*.jsonl are the JSON lines this machine's Docker Engine (20.10)
sent for real builds (captured by tests/fixtures/buildkit/capture.py). That engine sends no
warnings (StatusResponse field 4 came with later BuildKit), so the warning test encodes one
by hand; everything else replays captured bytes.
"""

from __future__ import annotations

import base64
import io
import json
import re
import tarfile
import zlib
from pathlib import Path

import pytest

from executors.engine.builders import BuildCache
from executors.engine.buildkit import _Follower, build_params, clean_error, context_body, iter_events
from executors.engine.buildkit_progress import DecodeError, ProgressPrinter, decode_status, decode_trace, iter_fields
from executors.engine.buildkit_session import encode_fields
from runner.config.settings import Settings
from runner.context.build_context import BuildContext
from runner.core.errors import InvalidJob
from runner.core.jobs import BuildRequest, ImageRef
from tests.support import ListLog, executor_for

FIXTURES = Path(__file__).parent / "fixtures" / "buildkit"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.jsonl"))


def replay(name: str) -> tuple[_Follower, ListLog]:
    log = ListLog()
    follower = _Follower(log)
    with (FIXTURES / f"{name}.jsonl").open("rb") as handle:
        for event in iter_events(handle):
            follower.feed(event)
    follower.printer.close()
    return follower, log


def step_number(log: str, name: str) -> str:
    match = re.search(rf"^#(\d+) {re.escape(name)}$", log, re.M)
    assert match, f"no step {name!r} in:\n{log}"
    return match[1]


# -- the wire decoder ---------------------------------------------------------------------------
def test_iter_fields_reads_every_wire_type():
    data = encode_fields((1, 150), (2, b"abc")) + bytes([0x1D]) + (7).to_bytes(4, "little") \
        + bytes([0x21]) + (9).to_bytes(8, "little")
    assert list(iter_fields(data)) == [(1, 150), (2, b"abc"), (3, 7), (4, 9)]


@pytest.mark.parametrize("data", [b"\x0a\x05ab", b"\x08\xff", b"\x0b", b"\x08" + b"\xff" * 11])
def test_truncated_or_odd_messages_raise_decode_error(data):
    with pytest.raises(DecodeError):
        list(iter_fields(data))


def test_unknown_fields_are_skipped_and_negative_int64_decoded():
    status = encode_fields((1, "id"), (2, "sha256:v"), (4, (1 << 64) - 5), (99, b"future"))
    response = decode_status(encode_fields((2, status), (42, b"from a newer engine")))
    assert response.statuses[0].id == "id" and response.statuses[0].current == -5


def test_decode_trace_rejects_non_base64():
    with pytest.raises(DecodeError):
        decode_trace("not base64!")


def test_warning_is_decoded_and_printed():
    """Built by hand: engine 20.10 never sends warnings (field 4 of StatusResponse)."""
    stamp = encode_fields((1, 1_700_000_000))
    vertex = encode_fields((1, "sha256:w"), (3, "[1/1] FROM x"), (5, stamp), (6, stamp))
    warning = encode_fields((1, "sha256:w"), (2, 1), (3, b"FromAsCasing: 'as' and 'FROM' keywords' casing do not match"),
                            (4, b"detail"), (5, "https://docs.docker.com/go/dockerfile/rule/from-as-casing/"))
    response = decode_trace(base64.b64encode(encode_fields((1, vertex), (4, warning))).decode())
    assert response.warnings[0].short.startswith("FromAsCasing") and response.warnings[0].detail == ["detail"]
    lines: list[str] = []
    printer = ProgressPrinter(lines.append)
    printer.feed(response)
    printer.close()
    assert lines == ["", "#1 [1/1] FROM x", "#1 WARN: FromAsCasing: 'as' and 'FROM' keywords' casing do not match", "#1 DONE 0.0s"]


# -- replaying captured streams -----------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_every_captured_trace_decodes_and_every_step_ends_once(name):
    with (FIXTURES / f"{name}.jsonl").open("rb") as handle:
        traces = [e["aux"] for e in iter_events(handle) if e.get("id") == "moby.buildkit.trace"]
    assert traces
    for aux in traces:
        decode_trace(aux)
    _, log = replay(name)
    numbers = sorted({int(m) for m in re.findall(r"^#(\d+) ", log.text, re.M)})
    assert numbers == list(range(1, len(numbers) + 1))  # steps numbered in order, no gaps
    for n in numbers:
        ends = re.findall(rf"^#{n} (DONE \d+\.\ds|CACHED|ERROR: .*|CANCELED)$", log.text, re.M)
        assert len(ends) == 1, f"step #{n} ends {ends} in {name}:\n{log.text}"


def test_failing_step_output_error_and_message():
    follower, log = replay("failing")
    n = step_number(log.text, "[2/2] RUN echo about-to-fail && exit 3")
    assert re.search(rf"^#{n} 0\.\d{{3}} about-to-fail$", log.text, re.M)
    assert f"#{n} ERROR: executor failed running [/bin/sh -c echo about-to-fail && exit 3]: exit code: 3" in log.lines
    failure = follower.failure()
    assert failure.message == ("build failed at [2/2] RUN echo about-to-fail && exit 3: "
                               "executor failed running [/bin/sh -c echo about-to-fail && exit 3]: exit code: 3")
    summary = log.lines[log.lines.index("------"):]
    assert summary[:2] == ["------", " > [2/2] RUN echo about-to-fail && exit 3:"] and "about-to-fail" in summary[2]
    assert follower.image_id is None


def test_cached_steps_are_marked():
    follower, log = replay("cached")
    n = step_number(log.text, "[2/2] RUN echo cached-step > /c")
    assert log.lines[log.lines.index(f"#{n} [2/2] RUN echo cached-step > /c") + 1] == f"#{n} CACHED"
    assert follower.image_id and follower.image_id.startswith("sha256:") and follower.error is None


def test_parallel_stages_output_and_partial_lines():
    follower, log = replay("multistage")
    a = step_number(log.text, "[a 2/2] RUN echo stage-a && echo warn-a >&2 && sleep 1 && echo done-a > /a")
    b = step_number(log.text, "[b 2/2] RUN for i in 1 2 3; do echo b-line-$i; done; printf no-newline; sleep 1; echo x > /b")
    for n, text in [(a, "stage-a"), (a, "warn-a"), (b, "b-line-1"), (b, "b-line-3"), (b, "no-newline")]:
        assert re.search(rf"^#{n} \d\.\d{{3}} {text}$", log.text, re.M), text
    # both stages ran at once: b's output appears before a's DONE
    assert log.lines.index(next(x for x in log.lines if x.endswith(" b-line-1"))) < log.lines.index(
        next(x for x in log.lines if re.match(rf"#{a} DONE", x)))
    assert re.search(rf"^#{a} DONE 1\.\ds$", log.text, re.M) and re.search(rf"^#{b} DONE 1\.\ds$", log.text, re.M)
    with (FIXTURES / "multistage.jsonl").open("rb") as handle:
        [reported] = [e["aux"]["ID"] for e in iter_events(handle) if e.get("id") == "moby.image.id"]
    assert follower.image_id == reported


def test_pull_progress_prints_sizes_once_done():
    _, log = replay("pull")
    assert re.search(r"^#\d+ sha256:[0-9a-f]{64} 3\.00MB / 3\.00MB( \d+\.\ds)? done$", log.text, re.M), log.text
    assert re.search(r"^#\d+ extracting sha256:[0-9a-f]{64}( \d+\.\ds)? done$", log.text, re.M)


def test_unused_stage_never_appears():
    follower, log = replay("target_skips")
    assert "[broken" not in log.text and "exit 7" not in log.text and follower.error is None


def test_parse_error_has_no_step_and_reads_cleanly():
    follower, _ = replay("parse_error")
    assert follower.printer.failed_step() is None
    assert follower.failure().message == "build failed: failed to create LLB definition: dockerfile parse error line 2: unknown instruction: RUNX"


def test_cancelled_step_marked_canceled_not_failed():
    follower, log = replay("cancelled")
    n = step_number(log.text, "[2/2] RUN echo start-long && sleep 30 && echo never")
    assert f"#{n} CANCELED" in log.lines and follower.printer.failed_step() is None


def test_secret_mount_trace():
    _, log = replay("secret")
    assert re.search(r"^#\d+ \d\.\d{3} 19 /run/secrets/tok$", log.text, re.M)


# -- request helpers ------------------------------------------------------------------------------
def test_build_params():
    job = BuildRequest(tags=["127.0.0.1:5000/a/b:1"], build_args={"A": "1"}, labels={"l": "v"}, target="t",
                       no_cache=True, platform="linux/amd64", dockerfile="d/Dockerfile")
    params = build_params(job, "bid", "runner-job/x:build")
    assert params == {"version": "2", "buildid": "bid", "dockerfile": "d/Dockerfile", "t": "runner-job/x:build", "pull": "0",
                      "rm": "1", "buildargs": '{"A": "1"}', "labels": '{"l": "v"}', "target": "t", "nocache": "1",
                      "platform": "linux/amd64"}
    cache = BuildCache(ref=ImageRef.parse("127.0.0.1:5000/cache/a/b:buildcache"), export=True)
    params = build_params(job, "bid", "runner-job/x:build", cache)
    assert params["cachefrom"] == '["127.0.0.1:5000/cache/a/b:buildcache"]'
    assert json.loads(params["buildargs"]) == {"A": "1", "BUILDKIT_INLINE_CACHE": "1"}  # the cache goes into the image
    assert job.build_args == {"A": "1"}  # the job's own args are untouched
    reading = build_params(job, "bid", "runner-job/x:build", BuildCache(ref=cache.ref, export=False))
    assert reading["cachefrom"] == params["cachefrom"] and reading["buildargs"] == '{"A": "1"}'  # no push: read it only


def test_unknown_build_secret_is_an_invalid_job():
    executor = executor_for(Settings(build_secrets={"npmrc": "x"}), "socket")
    assert executor.job_secrets(BuildRequest(tags=["127.0.0.1:5000/a:1"], secrets=["npmrc"])) == {"npmrc": b"x"}
    with pytest.raises(InvalidJob, match="pypirc"):
        executor.job_secrets(BuildRequest(tags=["127.0.0.1:5000/a:1"], secrets=["pypirc"]))


def test_clean_error_strips_frontend_prefixes():
    assert clean_error("failed to solve with frontend dockerfile.v0: failed to solve: rpc error: code = Unknown desc = boom\n") == "boom"


@pytest.mark.parametrize("fmt, gzipped", [(tarfile.PAX_FORMAT, True), (tarfile.USTAR_FORMAT, False)])
def test_context_body_gzips_tars_the_engine_would_misread(tmp_path, fmt, gzipped):
    """A PAX header first pushes the first real member past the 1024 bytes the engine sniffs."""
    path = tmp_path / "context.tar"
    with tarfile.open(path, "w", format=fmt) as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size, info.mtime = 5, 1700000000.25 if fmt == tarfile.PAX_FORMAT else 1700000000
        tar.addfile(info, io.BytesIO(b"FROM\n"))
    with context_body(BuildContext(tar_path=path, workspace=tmp_path)) as body:
        data = b"".join(body) if gzipped else body.read()
    assert (data[:2] == b"\x1f\x8b") is gzipped
    raw = zlib.decompress(data, 31) if gzipped else data
    assert raw == path.read_bytes()


def test_stream_lines_other_than_traces_are_logged():
    log = ListLog()
    follower = _Follower(log)
    for event in iter_events([json.dumps({"stream": "Successfully tagged x\n"}).encode(), b"not json"]):
        follower.feed(event)
    assert log.lines == ["Successfully tagged x", "not json"]


def test_registry_credentials_come_from_config_with_docker_hub_alias():
    from executors.engine.buildkit import registry_credentials
    from runner.core.registry_client import Registries

    settings = Settings(registries=[{"host": "127.0.0.1:5000", "username": "ci", "password": "pw"},
                                    {"host": "docker.io", "username": "hub", "password": "hubpw"},
                                    {"host": "anon.example.com"}])
    registries, log = Registries(settings.registries), ListLog()
    assert registry_credentials(registries, "127.0.0.1:5000", log) == ("ci", "pw")
    assert registry_credentials(registries, "registry-1.docker.io", log) == ("hub", "hubpw")
    assert registry_credentials(registries, "anon.example.com", log) is None
    assert registry_credentials(registries, "elsewhere.example.com", log) is None
    assert log.secrets == ["pw", "hubpw"]  # what the session hands out is masked in the job's log


def test_this_engine_supports_buildkit(services):
    from executors.engine.builders import BuildKitSupport
    from executors.engine.client import EngineClient

    client = EngineClient.connect("unix:///var/run/docker.sock", timeout=10)
    try:
        supported, why = BuildKitSupport().check(client)
    finally:
        client.close()
    assert supported, why
    assert why.startswith("engine API 1.") and "linux" in why
    assert client.key == "/var/run/docker.sock"  # not http+docker://localhost, shared by every socket


def test_auto_falls_back_to_classic_where_the_engine_lacks_buildkit(tmp_path):
    """The verdict for an engine is kept by socket path; seed it for an engine that says no."""
    from executors.engine.builders import BuildKitSupport
    from executors.engine.client import EngineClient
    from executors.engine.engine import choose_builder
    from runner.core.registry_client import Registries

    client = EngineClient.at(f"unix://{tmp_path}/old-engine.sock", "1.38", timeout=10)
    support = BuildKitSupport()
    support._known[client.key] = (False, "engine API 1.38 on linux; BuildKit needs API >= 1.39 on linux")
    try:
        assert choose_builder(client, "auto", support, Registries(), {}).name == "classic"
        with pytest.raises(InvalidJob, match="API 1.38"):
            choose_builder(client, "buildkit", support, Registries(), {})
    finally:
        client.close()


def test_an_unreachable_engine_fails_the_builder_choice_as_infrastructure(tmp_path):
    """No engine behind the socket: a clear infrastructure error, never a raw connection error."""
    from executors.engine.builders import BuildKitSupport
    from executors.engine.client import EngineClient
    from executors.engine.engine import choose_builder
    from runner.core.errors import InfrastructureError
    from runner.core.registry_client import Registries

    client = EngineClient.at(f"unix://{tmp_path}/no-engine.sock", "1.41", timeout=2)
    try:
        with pytest.raises(InfrastructureError, match="lost the Docker Engine"):
            choose_builder(client, "auto", BuildKitSupport(), Registries(), {})
        assert choose_builder(client, "classic", BuildKitSupport(), Registries(), {}).name == "classic"  # asks nothing
    finally:
        client.close()

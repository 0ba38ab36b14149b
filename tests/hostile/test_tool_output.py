"""Build-tool output as a heavy or hostile build produces it: a million lines, one huge line
without a newline, invalid UTF-8, and a tool that leaves a process behind holding its output
pipe. The line assembler and the pipe reader are checked on their own (chunk boundaries,
CR/LF, invalid bytes); then `Tool.stream` with real processes; then real buildah jobs on a
real `runner worker`, on both Pythons the worker may run on."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.core.cancel import CancelToken
from runner.core.errors import Cancelled
from runner.core.output_pipe import DRAIN_LIMIT, LineAssembler, read_until_exit
from runner.core.process import Tool, ToolOutput
from tests.conftest import registry_digest
from tests.support import ListLog
from tests.support import buildah as buildah_support

NEEDS_BUILDAH = pytest.mark.skipif(buildah_support.skip_reason() is not None, reason=buildah_support.skip_reason() or "")


def reference_lines(data: bytes) -> list[str]:
    """What the log must show for `data`: one entry per line, decoded line by line."""
    parts = data.split(b"\n")
    if parts[-1] == b"":
        parts.pop()
    return [part.decode("utf-8", "replace").rstrip("\r") for part in parts]


def assemble(chunks: list[bytes], **kwargs) -> list[list[str]]:
    batches: list[list[str]] = []
    assembler = LineAssembler(batches.append, **kwargs)
    for chunk in chunks:
        assembler.feed(chunk)
    assembler.close()
    return batches


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


# -- the line assembler ------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(alphabet=st.characters(blacklist_characters="\n", blacklist_categories=("Cs",))).map(str.encode),
                          st.binary().map(lambda b: b.replace(b"\n", b""))), max_size=12),
       st.booleans(), st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_any_chunking_gives_the_same_lines(lines, final_newline, points):
    """Text, CR/LF, and arbitrary invalid bytes, cut anywhere (inside a UTF-8 sequence too)."""
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    batches = assemble(cut(data, points))
    assert [line for batch in batches for line in batch] == reference_lines(data)


def test_lines_that_arrive_together_are_one_batch():
    batches = assemble([b"one\ntwo\nthr", b"ee\r\nfour\r\n", b"no newline at the end"])
    assert batches == [["one", "two"], ["three", "four"], ["no newline at the end"]]


def test_crlf_and_bare_cr_and_invalid_bytes():
    batches = assemble([b"crlf\r\n", b"progress 10%\rprogress 20%\n", b"bad \xff\xfe bytes\n", b"cut \xe2\x9c\n"])
    assert [line for batch in batches for line in batch] == [
        "crlf", "progress 10%\rprogress 20%", "bad \ufffd\ufffd bytes", "cut \ufffd"]


def test_a_400_kb_line_without_newline_arrives_whole_in_one_batch():
    line = ("0123456789" * 40_000).encode()
    assert assemble([line[i:i + 4096] for i in range(0, len(line), 4096)]) == [[line.decode()]]


def test_a_line_over_the_cap_goes_on_in_pieces_that_never_split_a_character():
    text = "ab✓é" * 1000  # 1- 2- and 3-byte characters
    data = text.encode()
    batches = assemble([data[i:i + 7] for i in range(0, len(data), 7)], max_line=64)
    pieces = [piece for batch in batches for piece in batch]
    assert "".join(pieces) == text  # nothing lost, no replacement character: no sequence was cut
    assert len(pieces) > 1 and all(len(piece.encode()) <= 64 for piece in pieces)


def test_memory_held_for_an_endless_line_stays_bounded():
    assembler = LineAssembler(lambda batch: None, max_line=1000)
    for _ in range(10_000):
        assembler.feed(b"x" * 333)
        assert assembler._pending_size <= 1000


# -- the pipe reader ---------------------------------------------------------------------------
def test_reader_reads_to_eof_when_every_writer_is_gone():
    read_end, write_end = os.pipe()
    exited_read, exited_write = os.pipe()
    os.write(write_end, b"all\nof it\n")
    os.close(write_end)
    got: list[bytes] = []
    try:
        assert read_until_exit(read_end, exited_read, got.append) is True
    finally:
        for fd in (read_end, exited_read, exited_write):
            os.close(fd)
    assert b"".join(got) == b"all\nof it\n"


def test_reader_stops_after_the_tool_exits_though_the_pipe_stays_open_and_busy():
    """Something the tool left behind keeps writing: what is in the pipe is read (at most
    DRAIN_LIMIT more), then reading stops."""
    read_end, write_end = os.pipe()
    exited_read, exited_write = os.pipe()
    os.write(write_end, b"last words of the tool\n")
    os.write(exited_write, b"x")
    stop = threading.Event()

    def chatter():
        try:
            while not stop.is_set():
                os.write(write_end, b"y" * 4096)
        except OSError:
            pass

    writer = threading.Thread(target=chatter, daemon=True)
    writer.start()
    got: list[bytes] = []
    try:
        assert read_until_exit(read_end, exited_read, got.append) is False
    finally:
        stop.set()
        os.close(read_end)  # the writer gets EPIPE and ends
        writer.join(10)
        for fd in (write_end, exited_read, exited_write):
            os.close(fd)
    data = b"".join(got)
    assert data.startswith(b"last words of the tool\n") and len(data) <= DRAIN_LIMIT


# -- Tool.stream with real processes -----------------------------------------------------------
def processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def kill_marked(marker: str) -> None:
    for pid in processes_with(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def stream_in_thread(script: str, cancel: CancelToken) -> tuple[threading.Thread, dict, ListLog]:
    sink, outcome = ListLog(), {}

    def target():
        try:
            outcome["code"] = Tool("sh").stream(["-c", script], ToolOutput(sink), cancel)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome, sink


def unique_sleep() -> str:
    """A sleep whose argv is unique, so the test finds exactly its own process."""
    return f"3600.{uuid.uuid4().int % 10**9:09d}"


def test_a_leftover_in_the_tools_group_holding_the_pipe_neither_hangs_nor_survives():
    duration = unique_sleep()
    thread, outcome, sink = stream_in_thread(f"echo before; sleep {duration} & echo after; exit 7", CancelToken())
    thread.join(60)
    try:
        assert not thread.is_alive(), "stream() waited for a process the tool left behind"
        assert outcome == {"code": 7} and sink.lines == ["before", "after"]
        deadline = time.monotonic() + 10
        while processes_with(f"sleep\0{duration}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not processes_with(f"sleep\0{duration}"), "the leftover in the tool's own group should be killed"
    finally:
        kill_marked(f"sleep\0{duration}")


def test_a_leftover_in_another_session_holding_the_pipe_does_not_hang_the_tool_or_its_cancel():
    """As runc keeps a RUN step alive in its own session: neither a normal exit nor a cancel
    may wait for it."""
    durations = [unique_sleep(), unique_sleep()]
    try:
        thread, outcome, sink = stream_in_thread(f"echo started; setsid sleep {durations[0]} & echo done", CancelToken())
        thread.join(60)
        assert not thread.is_alive() and outcome == {"code": 0} and sink.lines == ["started", "done"]

        cancel = CancelToken()
        thread, outcome, sink = stream_in_thread(f"setsid sleep {durations[1]} & echo running; sleep 3600", cancel)
        deadline = time.monotonic() + 30
        while "running" not in sink.lines and time.monotonic() < deadline:
            time.sleep(0.02)
        cancel.set()
        thread.join(30)  # kill_group's bound: SIGTERM, then SIGKILL after 2 s
        assert not thread.is_alive(), "cancel waited for a process outside the tool's group"
        assert isinstance(outcome.get("error"), Cancelled)
    finally:
        for duration in durations:
            kill_marked(f"sleep\0{duration}")


def test_output_that_never_ends_a_line_reaches_the_log_whole():
    thread, outcome, sink = stream_in_thread("yes 0123456789 | head -n 40000 | tr -d '\\n'", CancelToken())
    thread.join(60)
    assert outcome == {"code": 0} and sink.lines == ["0123456789" * 40_000]


# -- real buildah jobs on a real worker --------------------------------------------------------
def submit(h, context: Path, tag: str, *extra: str) -> dict:
    result = h.cli("submit", str(context), "--executor", "buildah", "-t", tag, "--no-cache", "--json", *extra, timeout=600)
    assert result.stdout, result.stderr
    return json.loads(result.stdout)


@NEEDS_BUILDAH
def test_a_million_line_class_build_arrives_complete_and_in_order(make_harness, worker_runner, tmp_path):
    """200,000 numbered lines from one RUN, and a 400 KB line without a newline from the next:
    every line in order in the job log, the long one whole."""
    h = make_harness(limits={"max_log_lines": 1_000_000})
    h.worker_proc = h.start_worker(runner=worker_runner)
    base = h.services["RUNNER_DEV_BASE_IMAGE"]
    (tmp_path / "Dockerfile").write_text(
        f"FROM {base}\n"
        "RUN seq 1 200000 | sed 's/^/line-/'\n"
        "RUN printf START; yes 0123456789 | head -n 40000 | tr -d '\\n'; printf END\n")
    tag = f"{h.registry()}/hostile/tool-output:{uuid.uuid4().hex[:8]}"
    record = submit(h, tmp_path, tag)
    log = h.cli("logs", record["id"]).stdout.splitlines()
    assert record["status"] == "succeeded", "\n".join(log[-30:])
    assert record["images"][0]["digest"] == registry_digest(h.services, tag)
    numbered = [line for line in log if line.startswith("line-")]
    assert numbered == [f"line-{n}" for n in range(1, 200_001)]
    [long_line] = [line for line in log if "START0123456789" in line]
    assert "START" + "0123456789" * 40_000 + "END" in long_line


@NEEDS_BUILDAH
def test_a_build_tool_that_leaves_a_process_holding_its_output_does_not_hang_the_job(make_harness, worker_runner, tmp_path):
    """The configured buildah is a wrapper that runs the real one, then, after a build, leaves
    a sleeping child behind with the output pipe open. Were the worker to read until EOF, the
    job would hang until its timeout."""
    duration = unique_sleep()
    wrapper = tmp_path / "buildah-leaves-a-child"
    wrapper.write_text("#!/bin/sh\n"
                       'buildah "$@"\ncode=$?\n'
                       f'case " $* " in *" build "*) sleep {duration} & ;; esac\n'
                       'exit "$code"\n')
    wrapper.chmod(0o755)
    h = make_harness(executors={"buildah": {**buildah_support.config({}), "binary": str(wrapper)}})
    h.worker_proc = h.start_worker(runner=worker_runner)
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {h.services['RUNNER_DEV_BASE_IMAGE']}\nRUN echo built-$((6*7))\n")
    tag = f"{h.registry()}/hostile/leftover:{uuid.uuid4().hex[:8]}"
    try:
        record = submit(h, context, tag, "--timeout", "240")
        log = h.cli("logs", record["id"]).stdout
        assert record["status"] == "succeeded", log[-3000:]
        assert "built-42" in log.splitlines()
        assert record["images"][0]["digest"] == registry_digest(h.services, tag)
        deadline = time.monotonic() + 10
        while processes_with(f"sleep\0{duration}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not processes_with(f"sleep\0{duration}"), "the leftover in the tool's own group should be killed"
    finally:
        kill_marked(f"sleep\0{duration}")

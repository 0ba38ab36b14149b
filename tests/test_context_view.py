"""The spool's view of a context is the only one (runner.context.view): written as the upload
streams when its ignore file comes first, read back and written at the end when that turns out
wrong, and unpacked as it is, without matching the patterns again.

The corpus of .dockerignore cases (each with the tree a real BuildKit `docker build` copied) is
sent with the ignore file first, so the view is written while the tar streams; the unpacked
folder and the tar an engine gets must be what Docker copied, as for the scrambled tars of
tests/test_copy_filter.py. Then each way the early view can turn out wrong.
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "dockerignore"))


from runner.config.settings import LimitsConfig
from runner.context import spool as spool_module
from runner.context.copy_filter import CopyFilter
from runner.context.dockerignore import DockerignoreError
from runner.context.pack import write_tar
from runner.context.spool import spool_context
from runner.core.errors import InvalidJob
from tests.test_copy_filter import CORPUS, DOCKERFILE, IDS, corpus_case, engine_view, raw_tar, tree, write

SCRATCH = ("context.side.tar", "context.view.tar", "context.stash")


@pytest.fixture
def rewrites(monkeypatch) -> list[int]:
    """Counts the views written at the end (a second write of the tar), not as the tar streamed."""
    calls: list[int] = []
    real = spool_module.write_copy_view

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(spool_module, "write_copy_view", counted)
    return calls


def ignore_first(data: bytes, dockerfile: str) -> bytes:
    """The tar with the ignore file BuildKit would use (if a regular file) moved first, after the
    folders above it, the rest in its order: as runner.context.pack writes it."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar]  # type: ignore[union-attr]
    names = [m.name for m, _ in members]
    for candidate in (dockerfile + ".dockerignore", ".dockerignore"):
        if candidate in names:
            break
    else:
        return data
    if not members[names.index(candidate)][0].isreg():
        return data
    parts = candidate.split("/")
    lead = ["/".join(parts[:depth]) for depth in range(1, len(parts) + 1)]
    first = [entry for name in lead for entry in members if entry[0].name == name]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member, content in first + [entry for entry in members if entry[0].name not in lead]:
            tar.addfile(member, io.BytesIO(content) if content is not None else None)
    return out.getvalue()


def unpack(data: bytes, workspace: Path, dockerfile: str = "Dockerfile", limits: LimitsConfig | int = 10**8):
    ctx = spool_context([data], workspace, dockerfile, limits)
    assert not [name for name in SCRATCH if (workspace / name).exists()], "the spool's scratch files are gone"
    return ctx.unpack(workspace / "ctx", workspace / "aside")


def engine_names(workspace: Path) -> list[str]:
    with tarfile.open(workspace / "context.tar") as tar:
        return sorted(tar.getnames())


# -- the corpus, ignore file first ------------------------------------------------------------------
@pytest.mark.parametrize("case", CORPUS, ids=IDS)
def test_view_written_as_the_tar_streams_is_what_docker_copied(case, tmp_path):
    expected, source, dockerfile, extra, refused = corpus_case(case, tmp_path)
    if expected.tree is None or refused & set(expected.tree):
        return  # refusals: tests/test_copy_filter.py (the order of the members does not matter there)
    data = ignore_first(raw_tar(source, seed=len(case["entries"]), extra=extra, skip=refused), dockerfile)
    unpacked = unpack(data, tmp_path / "ws", dockerfile)
    got = tree(unpacked.context)
    if extra:
        got.pop(dockerfile, None)
    assert got == expected.tree
    assert unpacked.dockerfile.read_text() == DOCKERFILE
    view = engine_view(tmp_path / "ws", dockerfile)
    assert view == {p: v for p, v in expected.tree.items() if p != dockerfile and not dockerfile.startswith(p + "/")}


def test_most_of_the_corpus_is_written_once(tmp_path, rewrites):
    """Most corpus cases whose ignore file leads as a regular file with patterns are written as
    the tar streams, without a second write (so the test above tests that path)."""
    streamed = 0
    for n, case in enumerate(CORPUS):
        (tmp_path / f"src{n}").mkdir()
        _, source, dockerfile, extra, refused = corpus_case(case, tmp_path / f"src{n}")
        data = ignore_first(raw_tar(source, seed=n, extra=extra, skip=refused), dockerfile)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            first = tar.next()
            lead = first is not None and first.isreg() and first.name.endswith(".dockerignore")
            content = tar.extractfile(first).read() if lead else b""  # type: ignore[union-attr, arg-type]
        patterns = any(line.strip() and not line.lstrip().startswith(b"#") for line in content.split(b"\n"))
        if not (lead and patterns):
            continue
        before = len(rewrites)
        try:
            spool_context([data], tmp_path / f"ws{n}", dockerfile, 10**8)
        except InvalidJob:
            continue  # a malformed ignore file: refused at the end, as before
        streamed += len(rewrites) == before
    assert streamed >= 250, f"only {streamed} corpus cases were written as the tar streamed"  # 298 when written


# -- packed contexts: written once ---------------------------------------------------------------------
def test_a_packed_context_leads_with_its_ignore_file_and_is_written_once(tmp_path, rewrites):
    src = write(tmp_path / "src", {"Dockerfile": DOCKERFILE, ".dockerignore": ".dockerignore\n**/*.log\n!a/keep.log\n",
                                   "a/x.log": "x", "a/keep.log": "k", "b/c.txt": "c", "b/d.log": "d"})
    buffer = io.BytesIO()
    write_tar(src, buffer)
    with tarfile.open(fileobj=io.BytesIO(buffer.getvalue())) as tar:
        assert tar.getnames()[0] == ".dockerignore"
    unpacked = unpack(buffer.getvalue(), tmp_path / "ws")
    assert sorted(tree(unpacked.context)) == ["Dockerfile", "a", "a/keep.log", "b", "b/c.txt"]
    assert engine_names(tmp_path / "ws") == ["Dockerfile", "a", "a/keep.log", "b", "b/c.txt"]
    assert rewrites == []


def test_the_dockerfiles_own_ignore_file_leads_after_the_folders_above_it(tmp_path, rewrites):
    src = write(tmp_path / "src", {"app/Dockerfile": DOCKERFILE, "app/Dockerfile.dockerignore": "app\n!app/Dockerfile\nb.txt\n",
                                   ".dockerignore": "a.txt\n", "a.txt": "a", "b.txt": "b", "app/other": "o"})
    buffer = io.BytesIO()
    write_tar(src, buffer, "app/Dockerfile")
    with tarfile.open(fileobj=io.BytesIO(buffer.getvalue())) as tar:
        assert tar.getnames()[:2] == ["app", "app/Dockerfile.dockerignore"]
    unpacked = unpack(buffer.getvalue(), tmp_path / "ws", "app/Dockerfile")
    assert sorted(tree(unpacked.context)) == [".dockerignore", "a.txt", "app", "app/Dockerfile"]
    assert rewrites == []


# -- when the early view turns out wrong ------------------------------------------------------------------
def ordered_tar(entries: list[tuple[str, str | bytes | None]], links: dict[str, str] | None = None) -> bytes:
    """A tar of `entries` in this order: a file (its content), or a folder (None); `links`: hard links name -> target."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            if name in (links or {}):
                info.type, info.linkname = tarfile.LNKTYPE, (links or {})[name]
                tar.addfile(info)
            elif content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                data = content.encode() if isinstance(content, str) else content
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_the_dockerfiles_own_ignore_file_later_in_the_tar_wins(tmp_path, rewrites):
    data = ordered_tar([(".dockerignore", "a.txt\n"), ("a.txt", "a"), ("b.txt", "b"), ("Dockerfile", DOCKERFILE),
                        ("Dockerfile.dockerignore", "b.txt\n")])
    assert sorted(tree(unpack(data, tmp_path / "ws").context)) == [".dockerignore", "Dockerfile", "Dockerfile.dockerignore", "a.txt"]
    assert len(rewrites) == 1


def test_a_later_member_replacing_the_ignore_file_wins(tmp_path, rewrites):
    data = ordered_tar([(".dockerignore", "a.txt\n"), ("a.txt", "a"), ("b.txt", "b"), ("Dockerfile", DOCKERFILE),
                        (".dockerignore", "b.txt\n")])
    assert sorted(tree(unpack(data, tmp_path / "ws").context)) == [".dockerignore", "Dockerfile", "a.txt"]
    assert len(rewrites) == 1


def test_a_kept_hard_link_to_a_left_out_file_is_that_file(tmp_path, rewrites):
    data = ordered_tar([(".dockerignore", "cache\n"), ("Dockerfile", DOCKERFILE), ("cache", None), ("cache/blob", "shared"),
                        ("kept", None)], links={"kept": "cache/blob"})
    unpacked = unpack(data, tmp_path / "ws")
    assert (unpacked.context / "kept").read_text() == "shared" and not (unpacked.context / "cache").exists()
    assert engine_names(tmp_path / "ws") == [".dockerignore", "Dockerfile", "kept"]
    assert len(rewrites) == 1


def test_a_malformed_first_ignore_file_is_refused_unless_replaced(tmp_path):
    bad = [(".dockerignore", "ok\n[\n"), ("Dockerfile", DOCKERFILE), ("a.txt", "a")]
    with pytest.raises(DockerignoreError) as refused:
        unpack(ordered_tar(bad), tmp_path / "ws")
    assert refused.value.line == 2 and "syntax error in pattern" in refused.value.message
    assert not (tmp_path / "ws" / "context.tar").exists()
    unpacked = unpack(ordered_tar(bad + [(".dockerignore", "a.txt\n")]), tmp_path / "ws2")
    assert sorted(tree(unpacked.context)) == [".dockerignore", "Dockerfile"]


def test_a_first_ignore_file_over_the_pattern_limit_is_refused_naming_it(tmp_path):
    data = ordered_tar([(".dockerignore", "a\nb\nc\n"), ("Dockerfile", DOCKERFILE)])
    with pytest.raises(DockerignoreError) as refused:
        unpack(data, tmp_path / "ws", limits=LimitsConfig(max_context_bytes=10**8, max_ignore_patterns=2))
    assert refused.value.message == ".dockerignore: holds 3 patterns, over the limit of 2 (limits.max_ignore_patterns)"


# -- unpacking takes the view as it is ---------------------------------------------------------------------
def test_unpacking_asks_the_patterns_only_about_the_dockerfile_and_the_folders_above_it(tmp_path, monkeypatch):
    files = {f"src/f{n:03d}.txt": "x" for n in range(200)}
    src = write(tmp_path / "src", {**files, "build/Dockerfile": DOCKERFILE, ".dockerignore": "build\n*.log\n"})
    buffer = io.BytesIO()
    write_tar(src, buffer, "build/Dockerfile")
    ctx = spool_context([buffer.getvalue()], tmp_path / "ws", "build/Dockerfile", 10**8)
    asked: list[str] = []
    real = CopyFilter.__call__
    monkeypatch.setattr(CopyFilter, "__call__", lambda self, path, kind: asked.append(path) or real(self, path, kind))
    unpacked = ctx.unpack(tmp_path / "ws" / "ctx", tmp_path / "ws" / "aside")
    assert sorted(set(asked)) == ["build", "build/Dockerfile"]
    got = tree(unpacked.context)
    assert "build" not in got and len(got) == 202  # .dockerignore, src, its 200 files: not the ignored Dockerfile's folder
    assert unpacked.dockerfile.read_text() == DOCKERFILE


def test_a_folder_kept_by_the_patterns_stays_when_only_its_dockerfile_is_ignored(tmp_path):
    src = write(tmp_path / "src", {"build/Dockerfile": DOCKERFILE, ".dockerignore": "build/Dockerfile\n", "a": "a"})
    buffer = io.BytesIO()
    write_tar(src, buffer, "build/Dockerfile")
    unpacked = unpack(buffer.getvalue(), tmp_path / "ws", "build/Dockerfile")
    assert sorted(tree(unpacked.context)) == [".dockerignore", "a", "build"]
    assert os.listdir(unpacked.context / "build") == []

"""The context a daemonless build reads (runner.context.copy_filter, runner.context.extract):
exactly what `COPY .` sees in `docker build`.

The 320 cases of the .dockerignore corpus (tests/fixtures/dockerignore, each with the /ctx tree
a real BuildKit `docker build` produced) are sent as a RAW tar (every file, ignore file not
applied, in a scrambled order, as `tar -cf - .` into Redis would), spooled and unpacked: the
unpacked context must be the recorded tree. Then the spool's handling of the ignore file itself:
which file, links, malformed and oversized files, the Dockerfile set aside.
"""

from __future__ import annotations

import io
import os
import random
import stat
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "dockerignore"))

import harness  # noqa: E402

from runner.config.settings import LimitsConfig
from runner.context.dockerignore import DockerignoreError
from runner.context.pack import write_tar
from runner.context.spool import spool_context
from runner.context.tarpolicy import member_parts, symlink_target
from runner.context.tarstream import Member
from runner.core.errors import InvalidJob

CORPUS = harness.load_corpus()
IDS = [f"case{n:03d}" for n in range(len(CORPUS))]
DOCKERFILE = "FROM scratch\nCOPY . /ctx\n"


def refused_link(root: Path, rel: str) -> bool:
    """A symlink the runner refuses in any context (one pointing outside it), ignored or not."""
    if not os.path.islink(root / rel):
        return False
    try:
        symlink_target(Member(rel, "symlink", 0, 0o777, 0, os.readlink(root / rel)), member_parts(rel))
    except InvalidJob:
        return True
    return False


def raw_tar(root: Path, seed: int = 0, extra: dict[str, bytes] | None = None, skip: set[str] = frozenset()) -> bytes:
    """Every entry under `root` but `skip` (nothing ignored), in a scrambled order that still
    puts a folder's entry somewhere (before or after its children), plus `extra` files."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            entries.append(os.path.relpath(os.path.join(dirpath, name), root))
    entries = [e for e in entries if e not in skip]
    random.Random(seed).shuffle(entries)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in entries:
            info = tar.gettarinfo(str(root / rel), arcname=rel)
            if info.isreg():
                with open(root / rel, "rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def packed_tar(root: Path, dockerfile: str) -> bytes:
    buffer = io.BytesIO()
    write_tar(root, buffer, dockerfile)
    return buffer.getvalue()


def tree(root: Path) -> dict[str, list]:
    """Every entry below `root`, described as the corpus describes /ctx."""
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        paths += [os.path.relpath(os.path.join(dirpath, n), root) for n in dirnames + filenames]
    return harness.tree_from_disk(root, paths)


def unpack(data: bytes, workspace: Path, dockerfile: str = "Dockerfile"):
    ctx = spool_context([data], workspace, dockerfile, 10**8)
    return ctx.unpack(workspace / "ctx", workspace / "aside")


def engine_view(workspace: Path, dockerfile: str) -> dict[str, list]:
    """What an engine is given (the spooled tar), less the Dockerfile and the folders above it,
    which an engine needs in the tar whatever the patterns say."""
    view = harness.tree_from_tar((workspace / "context.tar").read_bytes(), prefix="")
    return {p: v for p, v in view.items() if p != dockerfile and not dockerfile.startswith(p + "/")}


# -- the corpus: what a real `docker build` copied ----------------------------------------------------
def corpus_case(case: dict, root: Path) -> tuple[harness.Outcome, Path, str, dict[str, bytes], set[str]]:
    """A corpus case on disk under `root`: what Docker copied, the source folder, the Dockerfile's
    path (one added inside when the oracle's was outside the context, with its bytes in `extra`)
    and the links the runner refuses."""
    source = harness.materialise(case, root)
    dockerfile = case["dockerfile"]
    extra = {}
    if not dockerfile:  # the oracle's Dockerfile was outside the context; the spool needs one inside
        dockerfile = harness.OUTSIDE_DOCKERFILE
        extra = {dockerfile: DOCKERFILE.encode()}
    refused = {e["path"] for e in case["entries"] if refused_link(source, e["path"])}
    return harness.Outcome.from_json(case["expected"]), source, dockerfile, extra, refused


@pytest.mark.parametrize("case", CORPUS, ids=IDS)
def test_unpacked_raw_tar_is_what_docker_copied(case, tmp_path):
    expected, source, dockerfile, extra, refused = corpus_case(case, tmp_path)
    if expected.tree is not None and refused & set(expected.tree):
        # docker copies a symlink that points outside the context; the runner refuses the whole
        # context instead, naming the link (a documented difference: docs/dockerignore.md)
        with pytest.raises(InvalidJob) as refusal:
            unpack(raw_tar(source, seed=len(case["entries"]), extra=extra), tmp_path / "refused", dockerfile)
        assert any(repr(link) in refusal.value.message or link in refusal.value.message for link in refused), refusal.value.message
        return
    data = raw_tar(source, seed=len(case["entries"]), extra=extra, skip=refused)  # those left out are ignored ones
    try:
        unpacked = unpack(data, tmp_path / "ws", dockerfile)
    except DockerignoreError as exc:
        assert expected.tree is None, f"refused ({exc.message}) but docker built {expected.tree}"
        assert harness._error_class(exc.reason) == harness._error_class(expected.error)
        return
    assert expected.tree is not None, f"docker refused it ({expected.error}); we unpacked {tree(unpacked.context)}"
    got = tree(unpacked.context)
    if extra:
        # the added Dockerfile is visible only where the patterns keep it; Docker never saw it
        got.pop(dockerfile, None)
    assert got == expected.tree
    assert unpacked.dockerfile.read_text() == DOCKERFILE
    view = engine_view(tmp_path / "ws", dockerfile)
    assert view == {p: v for p, v in expected.tree.items() if p != dockerfile and not dockerfile.startswith(p + "/")}


# -- the ignore file, as the spool reads it --------------------------------------------------------
def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


def test_ignored_dockerfile_and_ignore_file_are_set_aside_not_copied(tmp_path):
    src = write(tmp_path / "src", {"Dockerfile": DOCKERFILE, ".dockerignore": "Dockerfile\n.dockerignore\n*.log\n",
                                   "app.txt": "a", "x.log": "x"})
    for data in (packed_tar(src, "Dockerfile"), raw_tar(src)):
        unpacked = unpack(data, tmp_path / f"ws{len(data)}")
        assert sorted(tree(unpacked.context)) == ["app.txt"]
        assert unpacked.dockerfile.read_text() == DOCKERFILE
        assert not unpacked.dockerfile.is_relative_to(unpacked.context)
        with tarfile.open(tmp_path / f"ws{len(data)}" / "context.tar") as engine_tar:  # an engine needs the Dockerfile
            assert sorted(engine_tar.getnames()) == ["Dockerfile", "app.txt"]


def test_a_visible_dockerfile_is_in_the_context_and_aside_as_one_file(tmp_path):
    src = write(tmp_path / "src", {"build/Dockerfile": DOCKERFILE, ".dockerignore": "*.log\n", "x.log": "x"})
    unpacked = unpack(packed_tar(src, "build/Dockerfile"), tmp_path / "ws", "build/Dockerfile")
    assert sorted(tree(unpacked.context)) == [".dockerignore", "build", "build/Dockerfile"]
    assert unpacked.dockerfile == tmp_path / "ws/aside/build/Dockerfile"
    assert os.stat(unpacked.dockerfile).st_ino == os.stat(unpacked.context / "build/Dockerfile").st_ino


def test_dockerfile_specific_ignore_file_wins(tmp_path):
    src = write(tmp_path / "src", {"app/Dockerfile": DOCKERFILE, "app/Dockerfile.dockerignore": "b.txt\n",
                                   ".dockerignore": "a.txt\n", "a.txt": "a", "b.txt": "b"})
    unpacked = unpack(raw_tar(src), tmp_path / "ws", "app/Dockerfile")
    assert "a.txt" in tree(unpacked.context) and "b.txt" not in tree(unpacked.context)


def test_excluded_folder_with_an_exception_keeps_its_own_mode(tmp_path):
    src = write(tmp_path / "src", {"Dockerfile": DOCKERFILE, ".dockerignore": "build\n!build/keep.txt\n",
                                   "build/keep.txt": "k", "build/drop.txt": "d", "other/x": "x"})
    (src / "build").chmod(0o750)
    (src / "other").chmod(0o711)
    unpacked = unpack(raw_tar(src, seed=3), tmp_path / "ws")
    got = tree(unpacked.context)
    assert sorted(got) == [".dockerignore", "Dockerfile", "build", "build/keep.txt", "other", "other/x"]
    assert got["build"][1] == "0o750" and got["other"][1] == "0o711"
    excluded_only = write(tmp_path / "src2", {"Dockerfile": DOCKERFILE, ".dockerignore": "build\n!other/keep\n",
                                              "build/drop.txt": "d"})
    assert "build" not in tree(unpack(raw_tar(excluded_only), tmp_path / "ws2").context)


def test_symlinked_ignore_file_is_followed_inside_the_context(tmp_path):
    src = write(tmp_path / "src", {"Dockerfile": DOCKERFILE, "conf/ignore": "secret.txt\n", "secret.txt": "s", "a": "a"})
    (src / "cfg").symlink_to("conf")
    (src / ".dockerignore").symlink_to("cfg/ignore")
    unpacked = unpack(raw_tar(src, seed=7), tmp_path / "ws")
    got = tree(unpacked.context)
    assert "secret.txt" not in got and "a" in got
    assert got[".dockerignore"] == harness.describe("symlink", 0o777, target="cfg/ignore")


def test_hard_link_to_an_excluded_file_is_a_copied_file(tmp_path):
    src = write(tmp_path / "src", {"Dockerfile": DOCKERFILE, ".dockerignore": "cache\n", "cache/blob": "shared bytes"})
    os.link(src / "cache/blob", src / "kept")
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:  # the excluded file first, then the link to it
        for rel in ("Dockerfile", ".dockerignore", "cache", "cache/blob", "kept"):
            tar.add(src / rel, arcname=rel, recursive=False)
    unpacked = unpack(data.getvalue(), tmp_path / "ws")
    assert (unpacked.context / "kept").read_text() == "shared bytes"
    assert not (unpacked.context / "cache").exists()
    with tarfile.open(tmp_path / "ws" / "context.tar") as engine_tar:
        assert sorted(engine_tar.getnames()) == [".dockerignore", "Dockerfile", "kept"]
        assert engine_tar.extractfile("kept").read() == b"shared bytes"


@pytest.mark.parametrize("ignore, line, words", [
    ("ok\n[\n", 2, "syntax error in pattern"),
    ("a\nb\n!\n", 3, 'illegal exclusion pattern: "!"'),
    ("x\\", 1, "syntax error in pattern"),
])
def test_malformed_ignore_file_in_a_raw_tar_is_refused_at_spool_time(tmp_path, ignore, line, words):
    src = write(tmp_path / "src", {"Dockerfile": DOCKERFILE, ".dockerignore": ignore})
    with pytest.raises(DockerignoreError) as refused:
        spool_context([raw_tar(src)], tmp_path / "ws", "Dockerfile", 10**8)
    assert isinstance(refused.value, InvalidJob) and refused.value.line == line
    assert f".dockerignore line {line}" in refused.value.message and words in refused.value.message
    assert str(tmp_path) not in refused.value.message
    assert not (tmp_path / "ws" / "context.tar").exists()


def test_oversized_ignore_file_is_refused_naming_the_cap(tmp_path):
    cap = LimitsConfig().max_ignore_file_bytes
    size = 6 * (cap // 6 + 1)
    src = write(tmp_path / "src", {"Dockerfile": DOCKERFILE, ".dockerignore": b"# pad\n" * (size // 6)})
    with pytest.raises(DockerignoreError) as refused:
        spool_context([raw_tar(src)], tmp_path / "ws", "Dockerfile", 10**8)
    assert refused.value.message == f".dockerignore: is {size:,} bytes, over the limit of {cap:,} bytes (limits.max_ignore_file_bytes)"


@pytest.mark.parametrize("linked", [False, True])
def test_ignore_file_with_too_many_patterns_is_refused_naming_the_cap(tmp_path, linked):
    """Counted as Docker reads them (comments and blank lines are no patterns), through a link too."""
    ignore = b"# a comment\n\n" + b"".join(b"dir%d/*.log\n" % n for n in range(5)) + b"!keep\n"
    files = {"Dockerfile": DOCKERFILE, ("real.ignore" if linked else ".dockerignore"): ignore}
    src = write(tmp_path / "src", files)
    if linked:
        os.symlink("real.ignore", src / ".dockerignore")
    limits = LimitsConfig(max_context_bytes=10**8, max_ignore_patterns=5)
    with pytest.raises(DockerignoreError) as refused:
        spool_context([raw_tar(src)], tmp_path / "ws", "Dockerfile", limits)
    assert refused.value.kind == "invalid"
    assert refused.value.message == ".dockerignore: holds 6 patterns, over the limit of 5 (limits.max_ignore_patterns)"
    assert not (tmp_path / "ws" / "context.tar").exists()
    spool_context([raw_tar(src)], tmp_path / "ws2", "Dockerfile", limits.model_copy(update={"max_ignore_patterns": 6}))


def test_modes_are_kept_and_extraction_folders_are_private(tmp_path):
    src = write(tmp_path / "src", {"Dockerfile": DOCKERFILE, "ro": "r", "suid": "s", "ro-dir/child": "c", "tmp/x": "x"})
    for name, mode in (("ro", 0o444), ("suid", 0o4755), ("ro-dir", 0o555), ("tmp", 0o1777)):
        (src / name).chmod(mode)
    unpacked = unpack(packed_tar(src, "Dockerfile"), tmp_path / "ws")
    got = tree(unpacked.context)
    assert [got[n][1] for n in ("ro", "suid", "ro-dir", "tmp")] == ["0o444", "0o4755", "0o555", "0o1777"]
    for folder in (unpacked.context, unpacked.dockerfile.parent, tmp_path / "ws"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700

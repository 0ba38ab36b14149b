"""Contexts: .dockerignore semantics as Docker has them, and hostile tars rejected."""

import io
import tarfile
from pathlib import Path

import pytest

from runner.context.dockerignore import context_paths, is_excluded
from runner.context.pack import write_tar
from runner.context.spool import spool_context
from runner.core.errors import InvalidJob


@pytest.mark.parametrize("patterns, path, ignored", [
    (["*.log"], "a.log", True),
    (["*.log"], "sub/a.log", False),
    (["**/*.log"], "sub/deep/a.log", True),
    (["*.log", "!keep.log"], "keep.log", False),
    (["build"], "build/out/x", True),
    (["build", "!build/keep"], "build/keep", False),
    (["sub/*/x"], "sub/a/x", True),
    (["sub/*/x"], "sub/a/b/x", False),
    (["?.txt"], "a.txt", True),
    (["[ab].txt"], "c.txt", False),
    (["*.tmp"], "src/cache.tmp", False),
])
def test_dockerignore_matching(patterns, path, ignored):
    assert is_excluded(path, patterns) is ignored


def make_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_context_walk_honours_dockerignore_but_keeps_dockerfile(tmp_path):
    make_tree(tmp_path, {"Dockerfile": "", ".dockerignore": "Dockerfile\nnode_modules\n**/*.tmp\n",
                         "node_modules/x/y.js": "", "src/app.py": "", "src/cache.tmp": ""})
    files = set(context_paths(tmp_path))
    assert {"Dockerfile", ".dockerignore", "src", "src/app.py"} <= files
    assert not {f for f in files if f.startswith("node_modules") or f.endswith(".tmp")}


def tar_bytes(members: list[tarfile.TarInfo]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member in members:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isreg() else None)
    return buffer.getvalue()


def member(name: str, kind=tarfile.REGTYPE, link: str = "", size: int = 1) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, size if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize("bad, words", [
    (member("/etc/cron.d/evil"), "absolute"),
    (member("../../evil"), "leaves"),
    (member("a/../../evil"), "leaves"),
    (member("link", tarfile.SYMTYPE, "/etc/shadow"), "outside"),
    (member("sub/link", tarfile.SYMTYPE, "../../x"), "outside"),
    (member("hard", tarfile.LNKTYPE, "../x"), "outside"),
    (member("dev", tarfile.CHRTYPE), "device"),
])
def test_hostile_tar_members_are_rejected(tmp_path, bad, words):
    with pytest.raises(InvalidJob) as info:
        spool_context([tar_bytes([member("Dockerfile"), bad])], tmp_path / "ws", "Dockerfile", 10**6)
    assert words in info.value.message and bad.name in info.value.message


def test_links_inside_the_context_are_fine(tmp_path):
    ctx = spool_context([tar_bytes([member("Dockerfile"), member("sub/l", tarfile.SYMTYPE, "../Dockerfile")])],
                        tmp_path / "ws", "Dockerfile", 10**6)
    assert ctx.size > 0 and (ctx.extract_to(tmp_path / "out") / "sub" / "l").is_symlink()


def test_size_cap_and_missing_dockerfile(tmp_path):
    data = tar_bytes([member("Dockerfile", size=5000)])
    with pytest.raises(InvalidJob, match="over the limit"):
        spool_context([data], tmp_path / "a", "Dockerfile", 1000)
    with pytest.raises(InvalidJob, match="not found"):
        spool_context([data], tmp_path / "b", "other/Dockerfile", 10**6)
    with pytest.raises(InvalidJob, match="no build context"):
        spool_context([], tmp_path / "c", "Dockerfile", 10**6)


def test_write_tar_roundtrip(tmp_path):
    src = make_tree(tmp_path / "src", {"Dockerfile": "FROM x", "a/b.txt": "hi", ".dockerignore": "*.md", "README.md": "no"})
    out = tmp_path / "ctx.tar"
    with out.open("wb") as sink:
        write_tar(src, sink)
    ctx = spool_context([out.read_bytes()], tmp_path / "ws", "Dockerfile", 10**6)
    with tarfile.open(ctx.tar_path) as tar:  # the canonical tar, read by the reference reader
        names = set(tar.getnames())
    assert {"Dockerfile", "a", "a/b.txt", ".dockerignore"} <= names and "README.md" not in names


def test_extraction_refuses_writes_through_links(tmp_path):
    """A chain of links that each look inside the context must not let a later member land
    outside it: the spool check refuses it, and so does the extractor on its own (the check is
    not what keeps the extractor safe), on any Python."""
    from runner.context.extract import extract_tar

    bad = tar_bytes([member("Dockerfile"), member("a", tarfile.SYMTYPE, "."), member("a/up", tarfile.SYMTYPE, ".."),
                     member("a/up/escaped")])
    with pytest.raises(InvalidJob, match="'a/up' is inside 'a', which the archive made a symlink"):
        spool_context([bad], tmp_path / "ws", "Dockerfile", 10**6)
    (tmp_path / "out").mkdir()
    with pytest.raises(InvalidJob, match="inside 'a', which is a symlink"):
        extract_tar([bad], tmp_path / "out")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "up").exists()
    good = spool_context([tar_bytes([member("Dockerfile"), member("sub/l", tarfile.SYMTYPE, "../Dockerfile")])],
                         tmp_path / "ws2", "Dockerfile", 10**6)
    out = good.extract_to(tmp_path / "ws2" / "ok")
    assert (out / "sub" / "l").is_symlink() and (out / "sub" / "l").read_text() == "x"

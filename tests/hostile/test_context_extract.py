"""The worker's side of a context, in process: the spool check and canonical tar
(runner/context/spool.py) and the extractor (runner/context/extract.py). Every hostile archive is refused
by both, each on its own: the extractor never relies on the check having run. The
CVE-2025-4517 chains are generated for a range of extraction path lengths."""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from runner.config.settings import LimitsConfig
from runner.context.build_context import BuildContext
from runner.context.extract import extract_tar
from runner.context.spool import spool_context
from runner.core.cancel import CancelToken
from runner.core.errors import Cancelled, InfrastructureError, InvalidJob
from tests.hostile.context_tars import (
    DOCKERFILE,
    cve_chain,
    entry,
    file,
    folder,
    hardlink,
    header,
    info,
    symlink,
    tar_of,
)


def tree(root: Path, skip: Path | None = None) -> dict[str, tuple]:
    """Every path below `root` with its kind, mode, size and mtime (links not followed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if skip is not None:
            dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            out[str(path.relative_to(root))] = (stat.S_IFMT(st.st_mode), st.st_mode & 0o7777, st.st_size, st.st_mtime_ns)
    return out


def extract(data: bytes, tmp_path: Path, name: str = "out") -> Path:
    root = tmp_path / name
    root.mkdir(mode=0o700)
    extract_tar([data], root)
    return root


def spool(data: bytes | list[bytes], tmp_path: Path, limits: LimitsConfig | int = 10**8, dockerfile: str = "Dockerfile",
          cancel=None) -> BuildContext:
    return spool_context([data] if isinstance(data, bytes) else data, tmp_path / "ws", dockerfile, limits, cancel)


# -- what a good context keeps -----------------------------------------------------------------
def test_modes_are_kept_exactly_and_folders_get_theirs_after_their_children(tmp_path):
    data = tar_of([
        file("Dockerfile", DOCKERFILE), file("ro", mode=0o444), file("exe", mode=0o755), file("suid", mode=0o4755),
        file("sgid", mode=0o2755), folder("shared", mode=0o1777), folder("locked", mode=0o555),
        file("locked/inside", b"made before the folder became 0555", mode=0o600), folder("locked/sub", mode=0o500),
        file("locked/sub/deeper", mode=0o640), folder("closed", mode=0o000), file("closed/still", mode=0o644),
    ])
    ctx = spool(data, tmp_path)
    root = ctx.extract_to(ctx.workspace / "buildah-context")
    modes = {name: mode for name, (_, mode, _, _) in tree(root).items()}
    assert modes == {"Dockerfile": 0o644, "ro": 0o444, "exe": 0o755, "suid": 0o4755, "sgid": 0o2755,
                     "shared": 0o1777, "locked": 0o555, "locked/inside": 0o600, "locked/sub": 0o500,
                     "locked/sub/deeper": 0o640, "closed": 0o000, "closed/still": 0o644}
    assert (root / "locked" / "inside").read_text() == "made before the folder became 0555"


def test_the_root_and_every_folder_from_the_workspace_down_are_private(tmp_path):
    """A setuid file is never reachable by a host user: the chain above it is 0700."""
    top = tmp_path / "workspaces"
    top.mkdir(mode=0o755)
    ctx = spool_context([tar_of([file("Dockerfile", DOCKERFILE), file("suid", mode=0o4755), folder(".", mode=0o777)])],
                        top / "job-1", "Dockerfile", 10**6)
    root = ctx.extract_to(top / "job-1" / "nested" / "buildah-context")
    for folder_path in (top, top / "job-1", top / "job-1" / "nested", root):
        assert stat.S_IMODE(folder_path.stat().st_mode) == 0o700, folder_path
    assert stat.S_IMODE((root / "suid").stat().st_mode) == 0o4755


def test_a_shared_sticky_workspace_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(InfrastructureError, match="not a shared sticky one"):
        spool_context([tar_of([file("Dockerfile")])], shared / "job", "Dockerfile", 10**6)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777


def test_mtimes_of_files_folders_and_symlinks(tmp_path):
    data = tar_of([folder("d", mtime=1_000_000_000), file("d/f", mtime=1_100_000_000),
                   info("d/s", tarfile.SYMTYPE, link="f", mtime=1_200_000_000), file("frac", mtime=1_300_000_000.5)])
    root = extract(data, tmp_path)
    assert (root / "d").stat().st_mtime == 1_000_000_000  # set after its children were made
    assert (root / "d" / "f").stat().st_mtime == 1_100_000_000
    assert (root / "d" / "s").lstat().st_mtime == 1_200_000_000
    assert (root / "frac").stat().st_mtime_ns == 1_300_000_000_500_000_000


def test_symlinks_hardlinks_and_unicode_names(tmp_path):
    raw = "caf\udce9-latin1"  # a non-UTF-8 byte, kept as it was
    data = tar_of([file("Dockerfile", DOCKERFILE), folder("é"), file("é/ñandú.txt", "¡hola!".encode()), file("日本語"),
                   file("🐳", b"whale"), file(raw, b"latin1"), symlink("é/up", "../日本語"), symlink("dot", "."),
                   hardlink("hard", "é/ñandú.txt"), symlink("lib64", "é")])
    ctx = spool(data, tmp_path)
    root = ctx.extract_to(ctx.workspace / "out")
    assert (root / "é" / "ñandú.txt").read_text() == "¡hola!" and (root / "🐳").read_bytes() == b"whale"
    assert os.path.exists(os.fsencode(root) + b"/caf\xe9-latin1")
    assert os.readlink(root / "é" / "up") == "../日本語" and os.readlink(root / "lib64") == "é"
    assert (root / "hard").stat().st_ino == (root / "é" / "ñandú.txt").stat().st_ino
    assert (root / "lib64" / "ñandú.txt").read_text() == "¡hola!"  # links inside work as links


def test_later_duplicates_override_earlier_members(tmp_path):
    data = tar_of([file("Dockerfile", DOCKERFILE), file("a", b"first"), file("a", b"second", mode=0o600),
                   file("b"), symlink("b", "a"), symlink("c", "a"), file("c", b"plain now"),
                   symlink("d", "a"), folder("d"), file("d/in", b"inside"), folder("e", mode=0o700), folder("e", mode=0o750),
                   file("f", b"x"), hardlink("f2", "f"), file("f", b"new f")])
    ctx = spool(data, tmp_path)
    root = ctx.extract_to(ctx.workspace / "out")
    assert (root / "a").read_bytes() == b"second" and stat.S_IMODE((root / "a").stat().st_mode) == 0o600
    assert (root / "b").is_symlink() and not (root / "c").is_symlink() and (root / "c").read_bytes() == b"plain now"
    assert (root / "d").is_dir() and not (root / "d").is_symlink() and (root / "d" / "in").read_bytes() == b"inside"
    assert stat.S_IMODE((root / "e").stat().st_mode) == 0o750
    assert (root / "f2").read_bytes() == b"x" and (root / "f").read_bytes() == b"new f"  # unlink, then create


def test_the_canonical_tar_is_normalised_and_plain(tmp_path):
    upload = gzip.compress(tar_of([folder("."), file("./Dockerfile", DOCKERFILE), file("a//b/./c", b"abc", mode=0o4711),
                                   folder("x/"), file("x/../y", b"y"), symlink("s", "./a//b/")]))
    ctx = spool(upload, tmp_path)
    with tarfile.open(ctx.tar_path, "r:") as tar:  # plain: not compressed any more
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {"Dockerfile", "a/b/c", "x", "y", "s"}  # no root entry, names folded
    assert members["a/b/c"].mode == 0o4711 and members["s"].linkname == "a/b"
    assert all(m.uid == 0 and m.gid == 0 and m.uname == "" for m in members.values())
    assert ctx.size == ctx.tar_path.stat().st_size


@pytest.mark.parametrize("kind, name, target, size, mode, mtime", [
    ("file", "a/b.txt", "", 5, 0o4755, 1_700_000_000), ("dir", "d", "", 0, 0o1777, 0),
    ("symlink", "s", "../t", 0, 0o777, 12), ("hardlink", "h", "a/b.txt", 0, 0o644, 8**11 - 1),
])
def test_fast_canonical_headers_are_what_tarfile_writes(kind, name, target, size, mode, mtime):
    from runner.context.spool import _TAR_TYPES, ustar_header
    from runner.context.tarstream import Member

    reference = tarfile.TarInfo(name)
    reference.type, reference.size, reference.mode, reference.mtime, reference.linkname = (
        _TAR_TYPES[kind], size, mode, mtime, target)
    member = Member(name=name, kind=kind, size=size, mode=mode, mtime=mtime)
    assert ustar_header(member, name, target) == reference.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    for odd in ({"name": "é"}, {"name": "n" * 101}, {"mtime": 1.5}, {"mtime": -1}, {"size": 8**11}):
        changed = Member(**{**member.__dict__, **{k: v for k, v in odd.items() if k != "name"}})
        assert ustar_header(changed, odd.get("name", name), target) is None  # tarfile makes those (PAX)


def test_the_dockerfile_must_be_a_regular_file(tmp_path):
    with pytest.raises(InvalidJob, match="Dockerfile 'Dockerfile' not found.*regular file"):
        spool(tar_of([file("real", DOCKERFILE), symlink("Dockerfile", "real")]), tmp_path)
    with pytest.raises(InvalidJob, match="not found"):
        spool(tar_of([file("Dockerfile", DOCKERFILE), symlink("Dockerfile", "elsewhere")]), tmp_path)
    with pytest.raises(InvalidJob, match="not found"):
        spool(tar_of([folder("Dockerfile")]), tmp_path)
    assert spool(tar_of([file("real", DOCKERFILE), hardlink("Dockerfile", "real")]), tmp_path).size > 0
    assert spool(tar_of([file("sub/Dockerfile.ci")]), tmp_path, dockerfile="sub/Dockerfile.ci").size > 0


# -- hostile archives: refused by the check AND by the extractor alone ----------------------------
HOSTILE = {
    "absolute": ([file("/etc/cron.d/evil")], "has an absolute path"),
    "sly-relative": ([file("../ws-moo")], "leaves the context"),
    "sly-relative-deeper": ([file("a/../../b/../../moo")], "leaves the context"),
    "parent-symlink": ([symlink("current", "."), symlink("current/parent", ".."), file("parent/evil")],
                       "inside 'current'"),
    "parent-symlink-2": ([symlink("current", "."), symlink("current/parent", ".."), file("current/parent/evil")],
                         "inside 'current'"),
    "absolute-symlink": ([symlink("parent", "/tmp"), file("parent/evil")], "absolute target '/tmp'"),
    "symlink-up": ([symlink("link", "..")], "pointing outside the context ('..')"),
    "deep-symlink-up": ([symlink("a/b/link", "../../../x")], "pointing outside"),
    "climb-after-name": ([folder("targetdir"), symlink("linkdir/symlink", "../targetdir"),
                          symlink("symlink2", "linkdir/symlink/../..")], "climbs ('..') after a name"),
    "write-through-inside-link": ([folder("sub"), symlink("a", "sub"), file("a/f")], "inside 'a'"),
    "hardlink-absolute": ([hardlink("h", "/etc/passwd")], "hard link pointing outside"),
    "hardlink-up": ([hardlink("h", "../x")], "hard link pointing outside"),
    "hardlink-through-symlink": ([folder("sub"), file("sub/f"), symlink("s", "sub"), hardlink("h", "s/f")],
                                 "through a symlink"),
    "hardlink-to-symlink": ([symlink("s", "Dockerfile"), hardlink("h", "s")], "hard link to a symlink"),
    "hardlink-to-folder": ([folder("d"), hardlink("h", "d")], "hard link to a folder"),
    "hardlink-to-itself": ([hardlink("h", "h")], "hard link to itself"),
    "file-replaces-folder": ([folder("d"), file("d/x"), file("d")], "would replace a folder"),
    "symlink-replaces-folder": ([folder("d"), symlink("d", ".")], "would replace a folder"),
    "root-replaced": ([symlink(".", "/")], "replace the context's root folder"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_members_are_refused_by_the_check(tmp_path, case):
    members, words = HOSTILE[case]
    before = tree(tmp_path)
    with pytest.raises(InvalidJob) as caught:
        spool(tar_of([file("Dockerfile", DOCKERFILE), *members]), tmp_path)
    assert words in caught.value.message and "context tar member" in caught.value.message
    assert str(tmp_path) not in caught.value.message
    assert tree(tmp_path, skip=tmp_path / "ws") == before  # nothing beside the workspace
    assert not (tmp_path / "ws" / "context.tar").exists()


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_members_are_refused_by_the_extractor_alone(tmp_path, case):
    members, words = HOSTILE[case]
    outer = tmp_path / "outer"
    outer.mkdir()
    (outer / "flag").write_text("untouched")
    root = outer / "a" / "out"
    root.mkdir(parents=True)
    before = tree(tmp_path, skip=root)
    with pytest.raises(InvalidJob) as caught:
        extract_tar([tar_of([file("Dockerfile", DOCKERFILE), *members])], root)
    message = caught.value.message
    assert "context tar member" in message and str(tmp_path) not in message
    assert tree(tmp_path, skip=root) == before and (outer / "flag").read_text() == "untouched"


def test_special_files_are_refused_naming_the_member(tmp_path):
    for kind, words in ((tarfile.CHRTYPE, "character device"), (tarfile.FIFOTYPE, "fifo"), (tarfile.BLKTYPE, "block")):
        with pytest.raises(InvalidJob, match=f"'dev/x' is a {words}"):
            spool(tar_of([file("Dockerfile"), info("dev/x", kind)]), tmp_path)


def test_a_member_below_a_file_is_refused_by_the_extractor(tmp_path):
    with pytest.raises(InvalidJob, match="'f/x' is inside 'f', which is not a folder"):
        extract(tar_of([file("f"), file("f/x")]), tmp_path)
    with pytest.raises(InvalidJob, match="hard link to nothing"):
        extract(tar_of([hardlink("h", "missing")]), tmp_path, "out2")
    with pytest.raises(InvalidJob, match="'h' is a hard link to 'no/such/file', which is not in the context"):
        extract(tar_of([hardlink("h", "no/such/file")]), tmp_path, "out3")


def test_content_errors_name_the_member_without_host_paths(tmp_path):
    with pytest.raises(InvalidJob) as caught:
        extract(tar_of([file("x" * 300)]), tmp_path)  # a name over NAME_MAX
    assert "'" + "x" * 59 in caught.value.message and "File name too long" in caught.value.message
    assert str(tmp_path) not in caught.value.message


# -- CVE-2025-4517 chains, for a range of extraction path lengths ---------------------------------
@pytest.fixture
def short_tmp():
    """A folder with a short path (tmp_path's is ~70 characters), so short lengths are testable."""
    path = Path(tempfile.mkdtemp(prefix="h", dir="/tmp"))
    yield path
    shutil.rmtree(path)


def dest_of_length(base: Path, length: int) -> Path:
    """A fresh folder base/canary/<padding>/a/b/dest whose path has exactly `length` chars."""
    head, tail = base / "canary", "/a/b/dest"
    left = length - len(str(head)) - len(tail) - 1  # characters for the padding
    segments = []
    while left > 201:
        segments.append("p" * 200)
        left -= 201
    if left == 201:
        segments.append("p" * 199)
        left = 1
    segments.append("q" * left)
    dest = Path(f"{head}/{'/'.join(segments)}{tail}")
    assert len(str(dest)) == length, (len(str(dest)), length)
    dest.mkdir(parents=True)
    return dest


@pytest.mark.parametrize("length", [80, 200, 1000, 2000, 3000, 3900])
@pytest.mark.parametrize("variant", ["file", "hardlink", "symlink"])
@pytest.mark.parametrize("through_links", [True, False], ids=["via-step-links", "via-real-folders"])
def test_cve_2025_4517_chains_are_refused(short_tmp, length, variant, through_links):
    tmp_path = short_tmp
    dest = dest_of_length(tmp_path, length)
    escape_to = dest.parent.parent.parent  # where `escape` (3 up from the root) would land
    (escape_to / "flag").write_text("the file an attacker wants to overwrite")
    before = tree(tmp_path / "canary", skip=dest)
    data = cve_chain(len(str(dest)), variant, "pwned", ups=3, through_links=through_links)
    first_bad = "inside 'a', which the archive made a symlink" if through_links else "'escape' is a symlink whose target"
    with pytest.raises(InvalidJob, match=first_bad) as caught:
        spool_context([data], dest / "ws", "Dockerfile", 10**7)
    assert str(tmp_path) not in caught.value.message
    with pytest.raises(InvalidJob) as caught:
        extract_tar([data], dest)
    assert "context tar member" in caught.value.message and str(tmp_path) not in caught.value.message
    assert tree(tmp_path / "canary", skip=dest) == before
    assert (escape_to / "flag").read_text() == "the file an attacker wants to overwrite"
    found = subprocess.run(["find", str(tmp_path), "-name", "pwned*"], capture_output=True, text=True).stdout
    assert found == ""


def test_the_cve_chain_without_its_escape_is_a_fine_context(tmp_path):
    """Sanity: the folder/symlink pairs alone (what the chain needs to look harmless) pass."""
    members = [file("Dockerfile", DOCKERFILE)]
    path = ""
    for step in "abcd":
        members += [folder(os.path.join(path, "ddd")), symlink(os.path.join(path, step), "ddd")]
        path = os.path.join(path, "ddd")
    ctx = spool(tar_of(members), tmp_path)
    root = ctx.extract_to(ctx.workspace / "out")
    assert os.readlink(root / "ddd" / "ddd" / "c") == "ddd"


# -- limits, errors of the host, cancel ------------------------------------------------------------
def test_limits_are_named_by_their_setting(tmp_path):
    many = tar_of([file("Dockerfile", DOCKERFILE)] + [file(f"f{i}") for i in range(20)])
    with pytest.raises(InvalidJob, match=r"more than 10 members \(limits.max_context_files\)"):
        spool(many, tmp_path, LimitsConfig(max_context_files=10))
    with pytest.raises(InvalidJob, match=r"path of 300 bytes, over the limit of 256 \(limits.max_context_path_bytes\)"):
        spool(tar_of([file("Dockerfile"), file("p" * 300)]), tmp_path, LimitsConfig(max_context_path_bytes=256))
    with pytest.raises(InvalidJob, match=r"over the limit of 4,096 \(limits.max_context_header_bytes\)"):
        spool(tar_of([file("Dockerfile"), file("é" * 3000)]), tmp_path, LimitsConfig(max_context_header_bytes=4096))
    bomb = gzip.compress(tar_of([file("Dockerfile"), file("zeros", bytes(5 * 1024 * 1024))]))
    with pytest.raises(InvalidJob, match=r"over the limit of 1,000,000 bytes uncompressed.*\(limits.max_context_bytes\)"):
        spool(bomb, tmp_path, 1_000_000)
    assert not (tmp_path / "ws" / "context.tar").exists()


def test_a_full_workspace_is_an_infrastructure_error_without_paths(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights)")
    try:
        big = tar_of([file("Dockerfile", DOCKERFILE), file("big", bytes(1024 * 1024))])
        with pytest.raises(InfrastructureError) as caught:
            spool_context([big], small / "ws", "Dockerfile", 10**7)
        assert caught.value.message == "the worker's workspace is full"
        ctx = spool_context([tar_of([file("Dockerfile", DOCKERFILE), file("half", bytes(150 * 1024))])],
                            small / "ws", "Dockerfile", 10**7)
        with pytest.raises(InfrastructureError) as caught:
            ctx.extract_to(small / "ws" / "out")
        assert caught.value.message == "the worker's workspace is full"
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_cancel_stops_the_spool(tmp_path):
    token = CancelToken()

    def chunks():
        yield entry("Dockerfile", b"FROM x\n")
        for i in range(100_000):
            if i == 500:
                token.set("cancelled")
            yield header(f"f{i}")

    with pytest.raises(Cancelled):
        spool_context(chunks(), tmp_path / "ws", "Dockerfile", 10**8, token)
    assert not (tmp_path / "ws" / "context.tar").exists()

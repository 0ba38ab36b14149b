"""runner/context/tarstream.py, the streaming reader for untrusted context tars: every format
feature it claims, malformed and truncated archives, each limit, and cancellation."""

from __future__ import annotations

import bz2
import gzip
import lzma
import random
import tarfile
import threading

import pytest

from runner.context.tarstream import PIECE, Member, TarError, TarLimitError, TarLimits, TarReader
from runner.core.cancel import CancelToken
from runner.core.errors import Cancelled
from tests.hostile.context_tars import END, entry, file, folder, gz, hardlink, header, pax, symlink, tar_of


def read(data: bytes | list[bytes], limits: TarLimits | None = None, cancel=None) -> list[tuple[Member, bytes]]:
    reader = TarReader([data] if isinstance(data, bytes) else data, limits, cancel)
    return [(m, b"".join(bytes(p) for p in reader.data())) for m in reader.members()]


def names(data, **kw) -> list[str]:
    return [m.name for m, _ in read(data, **kw)]


SAMPLE = tar_of([folder("src", mode=0o750), file("src/app.py", b"print('hi')\n" * 100, mode=0o755),
                 symlink("src/link", "app.py"), hardlink("src/hard", "src/app.py"), file("empty", b"")])


def test_reads_members_with_their_attributes():
    members = read(SAMPLE)
    assert [(m.name, m.kind) for m, _ in members] == [
        ("src/", "dir"), ("src/app.py", "file"), ("src/link", "symlink"), ("src/hard", "hardlink"), ("empty", "file")]
    (src, _), (app, body), (link, _), (hard, _), (empty, nothing) = members
    assert src.mode == 0o750 and app.mode == 0o755 and app.mtime == 1_700_000_000
    assert body == b"print('hi')\n" * 100 and app.size == len(body) and nothing == b""
    assert link.linkname == "app.py" and hard.linkname == "src/app.py"
    assert [m.index for m, _ in members] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("compress", [
    lambda d: d,
    lambda d: gzip.compress(d),
    lambda d: gzip.compress(d[:700]) + gzip.compress(d[700:3000]) + gzip.compress(d[3000:]),  # multi-member
    lambda d: gzip.compress(d) + bytes(100),  # zero padding after the stream, as gzip(1) tolerates
    lambda d: bz2.compress(d),
    lambda d: bz2.compress(d[:1000]) + bz2.compress(d[1000:]),
    lambda d: lzma.compress(d),
    lambda d: lzma.compress(d[:1500]) + lzma.compress(d[1500:]),
], ids=["plain", "gzip", "gzip-multi", "gzip-padded", "bzip2", "bzip2-multi", "xz", "xz-multi"])
def test_formats_and_any_chunking_give_the_same_members(compress):
    data = compress(SAMPLE)
    expected = read(SAMPLE)
    assert read(data) == expected
    assert read([data[i:i + 1] for i in range(len(data))]) == expected  # one byte at a time
    rng = random.Random(4)
    cuts = sorted(rng.sample(range(1, len(data)), min(20, len(data) - 1)))
    assert read([data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]) == expected


@pytest.mark.parametrize("compress", [lambda d: d, lambda d: gzip.compress(d, 1)], ids=["plain", "gzip"])
def test_one_huge_chunk_is_read_in_pieces(compress):
    """A raw queue element can be hundreds of MB: it is cut into PIECE-sized inputs."""
    body = random.Random(7).randbytes(5 * 1024 * 1024)
    got = read([compress(tar_of([file("big", body), file("after", b"x")]))])
    assert [(m.name, len(data)) for m, data in got] == [("big", len(body)), ("after", 1)] and got[0][1] == body


def test_a_bomb_is_decompressed_in_bounded_pieces():
    """gzip of 64 MiB of zeros: the decompressor never hands out more than PIECE at once."""
    bomb = gz(entry("Dockerfile", b"x") + header("big", size=64 * 1024 * 1024)) + gz(bytes(64 * 1024 * 1024), 9) + gz(END)
    reader = TarReader([bomb])
    sizes = []
    for _ in reader.members():
        sizes += [len(piece) for piece in reader.data()]
    assert sum(sizes) == 64 * 1024 * 1024 + 1 and max(sizes) <= PIECE


def test_ustar_prefix_gnu_long_names_and_long_links():
    deep = "/".join(["folder" * 10] * 5) + "/file.txt"  # > 100 bytes: prefix (ustar) or L (GNU)
    long_target = "t" * 300
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        members = [file(deep[-150:] if fmt == tarfile.USTAR_FORMAT else deep, b"data")]
        if fmt != tarfile.USTAR_FORMAT:
            members.append(symlink("s", long_target))
        got = read(tar_of(members, fmt))
        assert got[0][0].name == (deep[-150:] if fmt == tarfile.USTAR_FORMAT else deep) and got[0][1] == b"data"
        if fmt != tarfile.USTAR_FORMAT:
            assert got[1][0].linkname == long_target


def test_pax_path_linkpath_size_mtime_and_ignored_records():
    data = (pax({"path": "from-pax/é.txt", "mtime": "1700000000.25", "SCHILY.xattr.user.x": "y", "uname": "z"})
            + entry("short-name", b"abc")
            + pax({"linkpath": "target-from-pax"}) + header("l", b"2", link="ignored")
            + pax({"size": "5"}) + header("sized", size=999) + b"12345" + bytes(507)
            + pax({"path": "global-ignored"}, kind=b"g") + entry("after-global", b"")
            + END)
    got = read(data)
    assert [(m.name, m.kind) for m, _ in got] == [("from-pax/é.txt", "file"), ("l", "symlink"), ("sized", "file"),
                                                  ("after-global", "file")]
    assert got[0][0].mtime == 1700000000.25 and got[0][1] == b"abc"
    assert got[1][0].linkname == "target-from-pax"
    assert got[2][0].size == 5 and got[2][1] == b"12345"


def test_binary_pax_names_survive_as_surrogates():
    raw = b"caf\xe9-latin1"
    got = read(pax({"hdrcharset": "BINARY", "path": raw}) + entry("x", b"") + END)
    assert got[0][0].name.encode("utf-8", "surrogateescape") == raw


def test_v7_headers_contiguous_files_and_base256_numbers():
    base256_size = b"\x80" + (7).to_bytes(11, "big")
    negative_mtime = b"\xff" * 11 + b"\xfe"  # -2
    data = (entry("v7-file", b"v7", magic=b"")
            + header("v7-folder/", b"\0", magic=b"")
            + entry("contiguous", b"c", kind=b"7")
            + header("big256", size_field=base256_size, mtime_field=negative_mtime) + b"seven!!" + bytes(505)
            + END)
    got = read(data)
    assert [(m.name, m.kind) for m, _ in got] == [("v7-file", "file"), ("v7-folder/", "dir"), ("contiguous", "file"),
                                                  ("big256", "file")]
    assert got[3][0].size == 7 and got[3][1] == b"seven!!" and got[3][0].mtime == -2


def test_signed_checksums_are_accepted_and_bad_ones_refused():
    name = "héllo".encode()
    block = bytearray(header(name))
    signed = sum(b if b < 128 else b - 256 for b in block[:148] + b" " * 8 + block[156:])
    signed_block = header(name, checksum=signed)
    assert read(signed_block + END)[0][0].name == "héllo"
    bad = bytearray(SAMPLE)
    bad[3] ^= 1  # a name byte of the first header
    with pytest.raises(TarError, match="header checksum mismatch at byte 0"):
        read(bytes(bad))
    with pytest.raises(TarError, match="checksum mismatch at byte 0"):
        read(b"this is not a tar archive at all" * 40)


@pytest.mark.parametrize("kind, words", [
    (b"3", "is a character device"), (b"4", "is a block device"), (b"6", "is a fifo"),
    (b"S", "is a sparse file"), (b"V", "is a volume label"), (b"Z", "of unknown type b'Z'"),
])
def test_special_members_are_refused_by_name(kind, words):
    with pytest.raises(TarError) as caught:
        read(entry("Dockerfile", b"x") + header("dev/thing", kind) + END)
    assert "'dev/thing'" in caught.value.message and words in caught.value.message
    assert "only files, folders and links" in caught.value.message


def test_pax_sparse_files_and_data_on_non_files_are_refused():
    with pytest.raises(TarError, match="'sparse' is a sparse file"):
        read(pax({"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}) + entry("sparse", b"") + END)
    with pytest.raises(TarError, match="'d' is a dir but carries 3 bytes"):
        read(entry("d", b"abc", kind=b"5") + END)


@pytest.mark.parametrize("cut", [100, 512 + 10, 512 * 3 - 1], ids=["in-header", "in-data", "in-last-data-block"])
def test_truncated_archives_are_refused(cut):
    data = entry("Dockerfile", b"x") + entry("f", b"y" * 600) + END
    with pytest.raises(TarError, match="truncated"):
        read(data[:cut])


def test_truncated_compressed_streams_and_pax_headers():
    with pytest.raises(TarError, match="truncated"):
        read(gzip.compress(SAMPLE)[:-30])
    with pytest.raises(TarError, match="truncated"):
        read(pax({"path": "x" * 50})[:600])
    with pytest.raises(TarError, match="gzip data is corrupt"):
        read(gzip.compress(SAMPLE)[:10] + b"\x07" + bytes(200))  # a deflate block of the reserved type
    with pytest.raises(TarError, match="not gzip"):
        read(gzip.compress(SAMPLE[:1000]) + b"garbage" + gzip.compress(SAMPLE[1000:]))
    with pytest.raises(TarError, match="zstd"):
        read(b"\x28\xb5\x2f\xfd" + bytes(100))


def test_an_archive_without_end_marker_ends_at_a_header_boundary():
    assert names(entry("a", b"1") + entry("b", b"2")) == ["a", "b"]


def test_malformed_numbers_and_pax_records():
    with pytest.raises(TarError, match="bad size field"):
        read(header("x", size_field=b"12345678901x") + END)
    with pytest.raises(TarError, match="malformed PAX header"):
        read(entry("././@PaxHeader", b"99 path=x\n", kind=b"x") + entry("x", b"") + END)
    with pytest.raises(TarError, match="bad PAX mtime"):
        read(pax({"mtime": "1e999"}) + entry("x", b"") + END)
    with pytest.raises(TarError, match="bad PAX size"):
        read(pax({"size": "9" * 5000}) + entry("x", b"") + END)


def test_unread_and_half_read_data_is_skipped():
    data = tar_of([file("a", b"A" * 5000), file("b", b"B" * 3), file("c", b"C" * 700)])
    reader = TarReader([data])
    seen = []
    for member in reader.members():
        if member.name == "a":
            next(reader.data())  # read a piece, leave the rest
        elif member.name == "c":
            seen.append(b"".join(bytes(p) for p in reader.data()))
        seen.append(member.name)
    assert seen == ["a", "b", b"C" * 700, "c"]


# -- limits ------------------------------------------------------------------------------------
def refused(data, limit: str, **limits) -> str:
    with pytest.raises(TarLimitError) as caught:
        read(data, TarLimits(**limits))
    assert caught.value.limit == limit
    return caught.value.message


def test_uncompressed_bytes_are_capped_not_compressed_ones():
    bomb = gz(entry("Dockerfile", b"x") + entry("zeros", bytes(8 * 1024 * 1024)) + END, 9)
    assert len(bomb) < 20_000
    assert "over the limit of 1,000,000 bytes uncompressed" in refused(bomb, "bytes", max_bytes=1_000_000)
    # a declared size over the cap is refused from its header, before any of its data
    message = refused(entry("Dockerfile", b"x") + header("huge", size=10 * 1024**3), "bytes", max_bytes=10**6)
    assert "'huge' alone declares 10,737,418,240" in message
    # the upload itself is capped too (compressed or not)
    assert "upload is over the limit of 100 bytes" in refused([SAMPLE[:60], SAMPLE[60:200]], "upload", max_upload_bytes=100)


def test_member_count_path_link_and_header_limits():
    many = b"".join(entry(f"f{i}", b"") for i in range(50)) + END
    assert "more than 10 members" in refused(many, "members", max_members=10)
    assert names(many, limits=TarLimits(max_members=50))[-1] == "f49"
    long_path = tar_of([file("p" * 300)])
    assert "has a path of 300 bytes, over the limit of 200" in refused(long_path, "path", max_path_bytes=200)
    long_link = tar_of([symlink("s", "t" * 300)])
    assert "has a link target of 300 bytes" in refused(long_link, "link", max_link_bytes=200)
    assert "PAX header data of" in refused(pax({"comment": "c" * 3000}) + entry("x") + END, "header", max_header_bytes=2048)
    gnu = tar_of([file("n" * 3000)], tarfile.GNU_FORMAT)
    assert "GNU long-name header data of 3,001 bytes" in refused(gnu, "header", max_header_bytes=2048)
    assert "PAX header data" in refused(pax({"comment": "c" * 3000}, kind=b"g") + END, "header", max_header_bytes=2048)


def test_a_1_gib_pax_header_is_refused_from_its_header_alone():
    """Only the header block is given: refusing it must not need (or read) any of the 1 GiB."""
    data = entry("Dockerfile", b"x") + header("././@PaxHeader", b"x", size=1024**3)
    message = refused(data, "header", max_header_bytes=1024**2)
    assert "PAX header data of 1,073,741,824 bytes (before member #2), over the limit of 1,048,576" in message


@pytest.mark.slow  # a 200,000-member tar: the full suite only
def test_memory_does_not_grow_with_the_member_count():
    """Members are not kept: reading 40,000 members peaks at about what 1,000 take."""
    import tracemalloc

    def peak(count: int) -> int:
        chunks = [b"".join(entry(f"f{i:07d}", b"") for i in range(start, start + 1000)) for start in range(0, count, 1000)]
        tracemalloc.start()
        for _ in TarReader(chunks + [END]).members():
            pass
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    assert peak(40_000) < peak(1_000) + 64 * 1024


# -- cancellation ------------------------------------------------------------------------------
def test_cancel_between_members():
    token = CancelToken()
    reader = TarReader([b"".join(entry(f"f{i}", b"") for i in range(100)) + END], cancel=token)
    seen = 0
    with pytest.raises(Cancelled):
        for _ in reader.members():
            seen += 1
            if seen == 5:
                token.set("cancelled")
    assert seen == 5


def test_cancel_inside_a_long_member():
    """A 10 GiB member (as a multi-member gzip) is stopped within a few MiB of the cancel."""
    token = CancelToken()
    zeros = gz(bytes(64 * 1024 * 1024), 9)
    chunks = [gz(header("huge", size=10 * 1024**3))] + [zeros] * 160
    reader = TarReader(chunks, cancel=token)
    read_bytes = 0
    with pytest.raises(Cancelled):
        for _ in reader.members():
            for piece in reader.data():
                read_bytes += len(piece)
                if read_bytes >= 8 * 1024 * 1024 and not token.is_set():
                    threading.Thread(target=token.set, args=("timeout",)).start()
    assert read_bytes < 32 * 1024 * 1024

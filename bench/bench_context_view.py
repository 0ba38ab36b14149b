"""What the worker-side .dockerignore costs (runner/context/view.py): the spool writing the tar
as `COPY .` sees it, and unpacking that view.

Contexts (made in a temp folder, packed as `runner submit` packs them, so the only member the
patterns drop is the ignore file itself, the common case, and the ignore file leads the tar):
1 MB (200 files), 200 MB (200 x 1 MiB), 20,000 x 1 KiB files; each spooled with no ignore file,
then with one of 6 patterns that ignores itself. Also a RAW tar of the 20,000 files plus 20,000
more that the patterns drop (a tar made without the ignore file applied, e.g. `tar | redis-cli`;
tarfile sorts names, so its ignore file comes first too), and the same members with the ignore
file LAST, which the spool can only apply once the whole tar is read (a second write).
Medians of N rounds; times in ms. `--dir` picks where the workspaces go (default /var/tmp; a
tmpfs such as /dev/shm takes the disk out of the figures).

Run:  PYTHONPATH=. .venv/bin/python bench/bench_context_view.py [--rounds 5] [--dir /var/tmp]
Needs nothing running. Prints a table. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runner.context.pack import write_tar  # noqa: E402
from runner.context.spool import spool_context  # noqa: E402

IGNORE = ".dockerignore\n*.log\n!keep.log\nbuild\n!build/keep.txt\nnode_modules\n"


def make(root: Path, files: dict[str, int], ignore: bool) -> Path:
    root.mkdir(parents=True)
    (root / "Dockerfile").write_text("FROM scratch\nCOPY . /ctx\n")
    for name, size in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size) if size > 4096 else b"x" * size)
    if ignore:
        (root / ".dockerignore").write_text(IGNORE)
    return root


def packed(root: Path) -> bytes:
    buffer = io.BytesIO()
    write_tar(root, buffer)
    return buffer.getvalue()


def raw(root: Path, ignore_last: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        if not ignore_last:
            tar.add(root, arcname=".")
        else:
            tar.add(root, arcname=".", filter=lambda info: None if info.name == "./.dockerignore" else info)
            tar.add(root / ".dockerignore", arcname="./.dockerignore")
    return buffer.getvalue()


def timed(rounds: int, data: bytes, work: Path) -> tuple[float, float]:
    """Median ms of (spool, spool + unpack)."""
    spools, unpacks = [], []
    chunks = [data[i:i + 1024 * 1024] for i in range(0, len(data), 1024 * 1024)]
    for n in range(rounds):
        ws = work / f"ws{n}" / "job"
        started = time.perf_counter()
        context = spool_context(chunks, ws, "Dockerfile", 10**10)
        spooled = time.perf_counter()
        context.unpack(ws / "buildah-context", ws / "buildah-aside")
        done = time.perf_counter()
        spools.append((spooled - started) * 1000)
        unpacks.append((done - spooled) * 1000)
        shutil.rmtree(work / f"ws{n}")
    return statistics.median(spools), statistics.median(unpacks)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", default="/var/tmp", help="where the contexts and workspaces go")
    args = parser.parse_args()
    shapes = {
        "1 MB, 200 files": {f"src/f{n:03d}.txt": 5 * 1024 for n in range(200)},
        "200 MB, 200 files": {f"blobs/b{n:03d}.bin": 1024 * 1024 for n in range(200)},
        "20,000 x 1 KiB": {f"many/{n // 500:02d}/f{n:05d}.txt": 1024 for n in range(20000)},
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-view-", dir=args.dir) as tmp:
        base = Path(tmp)
        for label, files in shapes.items():
            plain = packed(make(base / f"{len(rows)}-plain", files, ignore=False))
            ignored = packed(make(base / f"{len(rows)}-ignored", files, ignore=True))
            a = timed(args.rounds, plain, base / "w")
            b = timed(args.rounds, ignored, base / "w")
            rows.append((label + " (packed)", len(plain), a, b))
        drop = {**shapes["20,000 x 1 KiB"], **{f"node_modules/{n // 500:02d}/m{n:05d}.js": 1024 for n in range(20000)}}
        tree = make(base / "raw", drop, ignore=True)
        for label, data in (("20,000 kept + 20,000 dropped (raw tar)", raw(tree)),
                            ("  the same, ignore file last", raw(tree, ignore_last=True))):
            rows.append((label, len(data), None, timed(args.rounds, data, base / "w")))
    print(f"{'context':42} {'tar MB':>7} | {'no ignore: spool':>16} {'unpack':>7} | {'ignore file: spool':>18} {'unpack':>7}")
    for label, size, a, b in rows:
        left = f"{a[0]:16.0f} {a[1]:7.0f}" if a else f"{'-':>16} {'-':>7}"
        print(f"{label:42} {size / 1e6:7.1f} | {left} | {b[0]:18.0f} {b[1]:7.0f}")


if __name__ == "__main__":
    main()

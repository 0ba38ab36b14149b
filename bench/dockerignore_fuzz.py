"""Randomized differential run of runner/context/dockerignore.py against `docker build` with BuildKit.

    .venv/bin/python bench/dockerignore_fuzz.py --cases 500 --seed 7
    .venv/bin/python bench/dockerignore_fuzz.py --replay /tmp/dockerignore-fuzz-7/mismatch-0003.json
    .venv/bin/python bench/dockerignore_fuzz.py --write-corpus --cases 320 --seed 20261130
    .venv/bin/python bench/dockerignore_fuzz.py --walk-files 100000

Hypothesis generates trees and ignore files (tests/fixtures/dockerignore/harness.py); each case is
built by Debian's docker 20.10 CLI with DOCKER_BUILDKIT=1 (two builds at a time) and the /ctx
tree compared with our walker's. Cases where Docker 20.10 and today's BuildKit differ by design
(docs/dockerignore.md) are compared with a model of 20.10 instead, which checks the model. Every
mismatch is saved as JSON for --replay. --write-corpus keeps only the cases where both versions
agree and records the oracle's answer as the suite's fixed corpus. --walk-files times the walk
of a large generated tree.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "fixtures" / "dockerignore")]

import harness  # noqa: E402

from runner.context.dockerignore import select_context  # noqa: E402


def table(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"| {key:<{width}} | {value:>14} |")


def fuzz(count: int, seed: int, parallel: int, save: Path) -> int:
    started = time.monotonic()
    cases = harness.generate(count, seed)
    generated = time.monotonic()
    kinds = [harness.classify(case) for case in cases]
    classified = time.monotonic()
    oracle = harness.run_oracles(cases, parallel)
    built = time.monotonic()
    mismatches = model_mismatches = 0
    walker_seconds = []
    for number, (case, kind, answer) in enumerate(zip(cases, kinds, oracle, strict=True)):
        ours = harness.run_walker(case)
        walker_seconds.append(ours.seconds)
        if kind == "agree" and not answer.same_as(ours):
            mismatches += 1
            save_case(save, f"mismatch-{number:04d}", case, answer, ours)
        elif kind == "version":
            legacy = harness.legacy_copied(case)
            if not answer.same_as(legacy):
                model_mismatches += 1
                save_case(save, f"model-{number:04d}", case, answer, ours, legacy)
    oracle_seconds = sorted(o.seconds for o in oracle)
    table([
        ("cases", str(len(cases))),
        ("both versions agree", str(kinds.count("agree"))),
        ("20.10 differs by design", str(kinds.count("version"))),
        ("not modelled", str(kinds.count("unmodelled"))),
        ("refused (error) cases", str(sum(o.tree is None for o in oracle))),
        ("MISMATCHES (ours vs oracle)", str(mismatches)),
        ("model mismatches (20.10)", str(model_mismatches)),
        ("oracle build median s", f"{statistics.median(oracle_seconds):.3f}"),
        ("oracle build p95 s", f"{oracle_seconds[int(len(oracle_seconds) * 0.95) - 1]:.3f}"),
        (f"oracle wall s ({parallel} at a time)", f"{built - classified:.1f}"),
        ("oracle wall s per case", f"{(built - classified) / len(cases):.3f}"),
        ("walker median ms", f"{statistics.median(walker_seconds) * 1000:.2f}"),
        ("generation s", f"{generated - started:.1f}"),
    ])
    if mismatches or model_mismatches:
        print(f"saved to {save}")
    return 1 if mismatches else 0


def save_case(save: Path, name: str, case: dict, oracle, ours, legacy=None) -> None:
    save.mkdir(parents=True, exist_ok=True)
    record = {"case": case, "oracle": oracle.as_json(), "ours": ours.as_json()}
    if legacy is not None:
        record["legacy_model"] = legacy.as_json()
    (save / f"{name}.json").write_text(json.dumps(record, ensure_ascii=False, indent=1))


def replay(path: Path) -> int:
    case = json.loads(path.read_text())["case"]
    answers = {"oracle": harness.run_oracle(case), "ours": harness.run_walker(case), "20.10 model": harness.legacy_copied(case)}
    paths = sorted({p for a in answers.values() if a.tree for p in a.tree})
    print("ignore file:", json.dumps(case["dockerignore"], ensure_ascii=False), "| Dockerfile:", case.get("dockerfile"))
    for name, answer in answers.items():
        if answer.tree is None:
            print(f"{name}: refused: {answer.error}")
    for p in paths:
        cells = [str(a.tree.get(p)) if a.tree else "-" for a in answers.values()]
        flag = "" if len(set(cells)) == 1 else "  <-- differs"
        print(f"{p!r}: " + " | ".join(f"{n}={c}" for n, c in zip(answers, cells, strict=True)) + flag)
    return 0


def write_corpus(count: int, seed: int, parallel: int) -> int:
    started = time.monotonic()
    cases = harness.generate(count, seed, keep=lambda case: harness.classify(case) == "agree")
    generated = time.monotonic()
    oracle = harness.run_oracles(cases, parallel)
    built = time.monotonic()
    bad = [(case, answer) for case, answer in zip(cases, oracle, strict=True) if not answer.same_as(harness.run_walker(case))]
    for case, answer in bad:
        print("oracle and walker differ:", json.dumps(case["dockerignore"], ensure_ascii=False), answer.error)
    if bad:
        return 1
    for case, answer in zip(cases, oracle, strict=True):
        case["expected"] = answer.as_json()
    harness.write_corpus(cases, seed)
    table([("cases written", str(len(cases))), ("generation s", f"{generated - started:.1f}"),
           (f"oracle wall s ({parallel} at a time)", f"{built - generated:.1f}"),
           ("oracle wall s per case", f"{(built - generated) / len(cases):.3f}")])
    return 0


def walk_bench(files: int) -> int:
    """A tree of `files` files in nested directories, walked under a few ignore files."""
    root = Path(tempfile.mkdtemp(prefix="dockerignore-walk-"))
    try:
        per_dir = 50
        for n in range(files):
            directory = root / f"d{n // (per_dir * 40)}" / f"s{(n // per_dir) % 40}"
            if n % per_dir == 0:
                directory.mkdir(parents=True, exist_ok=True)
            (directory / f"f{n}.{'log' if n % 7 == 0 else 'txt'}").touch()
        (root / "Dockerfile").write_text("FROM scratch\n")
        rows = []
        for label, ignore in [
            ("no .dockerignore", None),
            ("**/*.log, d1, !d1/s3", "**/*.log\nd1\n!d1/s3\n"),
            ("*.tmp, build, .git", "*.tmp\nbuild\n.git\n"),
            ("d*, !**/f8.txt (no pruning)", "d*\n!**/f8.txt\n"),
            ("everything excluded: *", "*\n"),
        ]:
            if ignore is None:
                (root / ".dockerignore").unlink(missing_ok=True)
            else:
                (root / ".dockerignore").write_text(ignore)
            timings = []
            for _ in range(3):
                start = time.monotonic()
                selection = select_context(root, "Dockerfile")
                timings.append(time.monotonic() - start)
            rows.append((f"{label}", f"{min(timings):.3f} s / {len(selection.paths)}"))
        print(f"walk of {files} files (best of 3; seconds / entries sent)")
        table(rows)
    finally:
        shutil.rmtree(root)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--save", type=Path, default=None, help="where mismatches go (default /tmp/dockerignore-fuzz-SEED)")
    parser.add_argument("--replay", type=Path, help="re-run one saved case and show the three answers side by side")
    parser.add_argument("--write-corpus", action="store_true", help="rewrite tests/fixtures/dockerignore/corpus.json")
    parser.add_argument("--walk-files", type=int, help="time the walk of a tree with this many files instead")
    args = parser.parse_args()
    if args.walk_files:
        return walk_bench(args.walk_files)
    reason = harness.docker_available()
    if reason:
        print(f"cannot run the oracle: {reason}")
        return 2
    if args.replay:
        return replay(args.replay)
    if args.write_corpus:
        return write_corpus(args.cases, args.seed, args.parallel)
    save = args.save or Path(tempfile.gettempdir()) / f"dockerignore-fuzz-{args.seed}"
    return fuzz(args.cases, args.seed, args.parallel, save)


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())

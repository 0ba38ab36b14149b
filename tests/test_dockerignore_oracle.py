"""The .dockerignore walker against a real `docker build` with BuildKit (the oracle).

The fixed corpus (tests/fixtures/dockerignore/corpus.json: 320 generated cases, seed and
generator recorded in it, expected trees recorded from the oracle) runs twice: our walker
always, against the recorded trees; and, where Debian's docker CLI can build (it can in CI),
the oracle again, two builds at a time, against our walker: every fourth case and every refused
one (ORACLE_SAMPLE, about 90 builds; all 320 took three minutes of the suite). Regenerate or
extend the corpus with bench/dockerignore_fuzz.py, which also runs longer randomized
comparisons against the oracle.

The oracle is Docker 20.10; the table at the end pins the places where today's BuildKit (which
the walker follows) differs from it, with both answers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "dockerignore"))

import harness  # noqa: E402

from runner.context.dockerignore import DockerignoreError, select_context

CORPUS = harness.load_corpus()
IDS = [f"case{n:03d}" for n in range(len(CORPUS))]
#: the cases the oracle builds again in the suite: every fourth, and every one Docker refuses
ORACLE_SAMPLE = [n for n, case in enumerate(CORPUS) if n % 4 == 0 or "error" in case["expected"]]


def test_corpus_is_big_and_varied():
    assert len(CORPUS) >= 300
    refused = [c for c in CORPUS if "error" in c["expected"]]
    with_exceptions = [c for c in CORPUS if "\n!" in "\n" + c["dockerignore"].replace("\r", "")]
    assert len(refused) >= 10 and len(with_exceptions) >= 100
    assert sum(bool(c["dockerfile"]) for c in CORPUS) >= 30
    kinds = {e["type"] for c in CORPUS for e in c["entries"]}
    assert kinds == {"dir", "file", "symlink"}


@pytest.mark.parametrize("case", CORPUS, ids=IDS)
def test_walker_gives_the_recorded_oracle_tree(case):
    ours, expected = harness.run_walker(case), harness.Outcome.from_json(case["expected"])
    assert ours.same_as(expected), f"recorded: {expected.error or expected.tree}\nours: {ours.error or ours.tree}"


@pytest.fixture(scope="session")
def oracle_answers() -> dict[int, harness.Outcome]:
    reason = harness.docker_available()
    if reason:
        pytest.skip(reason)
    return dict(zip(ORACLE_SAMPLE, harness.run_oracles([CORPUS[n] for n in ORACLE_SAMPLE], parallel=2), strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("index", ORACLE_SAMPLE, ids=[IDS[n] for n in ORACLE_SAMPLE])
def test_oracle_builds_what_the_walker_selects(oracle_answers, index):
    case, answer = CORPUS[index], oracle_answers[index]
    ours = harness.run_walker(case)
    assert answer.same_as(ours), f"oracle: {answer.error or sorted(answer.tree)}\nours: {ours.error or sorted(ours.tree)}"
    assert answer.same_as(harness.Outcome.from_json(case["expected"]))


# -- malformed patterns: Docker refuses the build, we refuse the job ------------------------------
MALFORMED = ["[", "[^", "[^bc", "a[", "foo\\", "[a-b-c]", "[-]", "[x-]", "[-x]", "!", "[]a]", "[Local-Only]/"]


def malformed_case(line: str) -> dict:
    return {"entries": [{"path": "x", "type": "file", "mode": 0o644, "data": "x"}],
            "dockerignore": f"# first\nsrc\n{line}\n", "dockerfile": None}


@pytest.mark.parametrize("line", MALFORMED)
def test_malformed_pattern_is_refused_by_us_naming_the_line(line):
    with harness.materialised(malformed_case(line)) as ctx, pytest.raises(DockerignoreError) as caught:
        select_context(ctx, harness.OUTSIDE_DOCKERFILE)
    words = 'illegal exclusion pattern: "!"' if line == "!" else "syntax error in pattern"
    assert (caught.value.line, caught.value.reason) == (3, words)


@pytest.mark.slow
@pytest.mark.parametrize("line", MALFORMED)
def test_malformed_pattern_is_refused_by_docker(line):
    reason = harness.docker_available()
    if reason:
        pytest.skip(reason)
    answer = harness.run_oracle(malformed_case(line))
    assert answer.tree is None
    assert ('illegal exclusion pattern: "!"' if line == "!" else "syntax error in pattern") in answer.error


@pytest.mark.parametrize("content, refused", [
    (b"a" * 65534 + b"\r\n", False),
    (b"a" * 65535 + b"\r\n", True),  # the CR counts
    (b"a" * 65535, False),
    (b"a" * 65536, True),
    (b"\xef\xbb\xbf" + b"a" * 65532, False),
    (b"\xef\xbb\xbf" + b"a" * 65533, True),  # so does the BOM
], ids=["65534+crlf", "65535+crlf", "65535", "65536", "bom+65532", "bom+65533"])
def test_line_length_limit_is_docker_s(content, refused):
    case = {"entries": [{"path": "a", "type": "file", "mode": 0o644, "data": ""}], "dockerignore": "", "dockerfile": None}
    with harness.materialised(case) as ctx:
        (ctx / ".dockerignore").write_bytes(content)
        if refused:
            with pytest.raises(DockerignoreError, match="token too long"):
                select_context(ctx, harness.OUTSIDE_DOCKERFILE)
        else:
            select_context(ctx, harness.OUTSIDE_DOCKERFILE)
    if harness.docker_available() is None:
        case["dockerignore"] = content.decode()
        assert (harness.run_oracle(case).tree is None) is refused


# -- the corners issue 12 names, each checked against the oracle ---------------------------------
CORNERS = [
    # (files, ignore file, what both Docker and the walker copy)
    pytest.param(["!", "a", "b"], "[!a]\n", [".dockerignore", "b"], id="bang-class-is-not-negation"),
    pytest.param(["]", "a", "b"], "[\\]a]\n", [".dockerignore", "b"], id="escaped-bracket-in-class"),
    pytest.param(["-", "x", "y"], "[\\-x]\n", [".dockerignore", "y"], id="escaped-dash-in-class"),
    pytest.param(["foobar", "foo/bar", "foo/x/bar", "fooxbar"], "foo**bar\n", [".dockerignore", "foo", "foo/x", "fooxbar"],
                 id="doublestar-without-slash"),
    pytest.param(["# x", "y"], "  # x\n", [".dockerignore", "y"], id="spaces-then-hash-is-a-pattern"),
    pytest.param(["a", "b"], "\ufeffa\n", [".dockerignore", "b"], id="bom-dropped"),
    pytest.param(["é", "1", "a_"], "\\pL\n", [".dockerignore", "1", "a_"], id="unicode-letter-class"),
    pytest.param(["é", "1", "a"], "[[:alpha:]]\n", [".dockerignore", "1", "é"], id="posix-class-is-ascii"),
    pytest.param(["5", "d"], "\\d\n", [".dockerignore", "d"], id="escaped-letter-is-regexp"),
    pytest.param(["aa", "ab"], "a\\x61\n", [".dockerignore", "ab"], id="hex-escape"),
    pytest.param(["x/y", "z"], "x\n!x/y\n", [".dockerignore", "x", "x/y", "z"], id="exception-sends-parent"),
]


@pytest.mark.parametrize("files, ignore, copied", CORNERS)
def test_corner_cases_agree_with_docker(files, ignore, copied):
    case = version_case(files, ignore)
    assert sorted(harness.run_walker(case).tree) == sorted(copied)
    if harness.docker_available() is None:
        assert sorted(harness.run_oracle(case).tree) == sorted(copied)


# -- where Docker 20.10 (the oracle) and today's BuildKit differ ---------------------------------
def version_case(files: list[str], ignore: str) -> dict:
    return {"entries": [{"path": p, "type": "file", "mode": 0o644, "data": p} for p in files],
            "dockerignore": ignore, "dockerfile": None}


VERSION_DIFFERENCES = [
    # (files, ignore file, what Docker 20.10 copies, what today's BuildKit and the walker copy)
    pytest.param(["build/keep.txt", "build/other", "build/sub/keep.txt"], "build\n!**/keep.txt\n",
                 [".dockerignore"], [".dockerignore", "build", "build/keep.txt", "build/sub", "build/sub/keep.txt"],
                 id="glob-exception-reaches-into-excluded-directory"),
    pytest.param(["build/x", "y"], "build\n!build/nothere\n",
                 [".dockerignore", "build", "y"], [".dockerignore", "y"],
                 id="excluded-directory-sent-only-with-content"),
    pytest.param(["a+b", "aab"], "a+b\n", [".dockerignore", "a+b"], [".dockerignore", "aab"],
                 id="plus-is-literal"),
    pytest.param(["(p)", "p"], "(p)\n", [".dockerignore", "(p)"], [".dockerignore", "p"],
                 id="parentheses-are-literal"),
    pytest.param(["foo", "xfoo", "a/xfoo"], "**foo\n", [".dockerignore", "a", "a/xfoo", "xfoo"], [".dockerignore", "a"],
                 id="leading-doublestar-is-a-suffix"),
    pytest.param(["a^b"], "a^b\n", [".dockerignore", "a^b"], [".dockerignore"],
                 id="caret-is-literal-in-plain-pattern"),
    pytest.param(["a/x", "a/y"], "a\n!a/x\na\n", [".dockerignore", "a"], [".dockerignore", "a", "a/x"],
                 id="pattern-skipped-for-directory"),
    pytest.param([".env/x"], ".env/**\n!.*\n", [".dockerignore", ".env", ".env/x"], [".dockerignore", ".env"],
                 id="exception-through-parent-directory"),
]


@pytest.mark.parametrize("files, ignore, docker_20_10, buildkit", VERSION_DIFFERENCES)
def test_walker_follows_todays_buildkit_where_docker_20_10_differs(files, ignore, docker_20_10, buildkit):
    case = version_case(files, ignore)
    assert sorted(harness.run_walker(case).tree) == sorted(buildkit)
    assert sorted(harness.legacy_copied(case).tree) == sorted(docker_20_10)  # the model used to filter the corpus


@pytest.mark.slow
@pytest.mark.parametrize("files, ignore, docker_20_10, buildkit", VERSION_DIFFERENCES)
def test_oracle_is_docker_20_10_where_versions_differ(files, ignore, docker_20_10, buildkit):
    reason = harness.docker_available()
    if reason:
        pytest.skip(reason)
    assert sorted(harness.run_oracle(version_case(files, ignore)).tree) == sorted(docker_20_10)

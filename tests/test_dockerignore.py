""".dockerignore rules (runner/context/dockerignore.py, runner/context/gocompat.py) against the case tables of the
code Docker runs: Go's filepath.Match, moby/patternmatcher and its ignorefile reader, plus the
walk BuildKit's file sync (tonistiigi/fsutil) does. The differential test against a real
`docker build` is tests/test_dockerignore_oracle.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.context.dockerignore import (
    DockerignoreError,
    PatternMatcher,
    context_paths,
    is_excluded,
    read_ignore_lines,
    select_context,
)
from runner.context.gocompat import BadPattern, compile_go_regexp, go_clean, go_match, go_trim_space
from runner.context.pattern_index import compile_pattern
from runner.core.errors import InvalidJob

BAD = "bad"  # the row expects ErrBadPattern

# -- Go's path/filepath Match (match_test.go) ----------------------------------------------------
GO_MATCH_TESTS = [
    ("abc", "abc", True),
    ("*", "abc", True),
    ("*c", "abc", True),
    ("a*", "a", True),
    ("a*", "abc", True),
    ("a*", "ab/c", False),
    ("a*/b", "abc/b", True),
    ("a*/b", "a/c/b", False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True),
    ("a*b?c*x", "abxbbxdbxebxczzy", False),
    ("ab[c]", "abc", True),
    ("ab[b-d]", "abc", True),
    ("ab[e-g]", "abc", False),
    ("ab[^c]", "abc", False),
    ("ab[^b-d]", "abc", False),
    ("ab[^e-g]", "abc", True),
    ("a\\*b", "a*b", True),
    ("a\\*b", "ab", False),
    ("a?b", "a☺b", True),
    ("a[^a]b", "a☺b", True),
    ("a???b", "a☺b", False),
    ("a[^a][^a][^a]b", "a☺b", False),
    ("[a-ζ]*", "α", True),
    ("*[a-ζ]", "A", False),
    ("a?b", "a/b", False),
    ("a*b", "a/b", False),
    ("[\\]a]", "]", True),
    ("[\\-]", "-", True),
    ("[x\\-]", "x", True),
    ("[x\\-]", "-", True),
    ("[x\\-]", "z", False),
    ("[\\-x]", "x", True),
    ("[\\-x]", "-", True),
    ("[\\-x]", "a", False),
    ("[]a]", "]", BAD),
    ("[-]", "-", BAD),
    ("[x-]", "x", BAD),
    ("[x-]", "-", BAD),
    ("[x-]", "z", BAD),
    ("[-x]", "x", BAD),
    ("[-x]", "-", BAD),
    ("[-x]", "a", BAD),
    ("\\", "a", BAD),
    ("[a-b-c]", "a", BAD),
    ("[", "a", BAD),
    ("[^", "a", BAD),
    ("[^bc", "a", BAD),
    ("a[", "a", BAD),
    ("a[", "ab", BAD),
    ("a[", "x", BAD),
    ("a/b[", "x", BAD),
    ("*x", "xxx", True),
]


@pytest.mark.parametrize("pattern, name, want", GO_MATCH_TESTS)
def test_go_filepath_match(pattern, name, want):
    if want == BAD:
        with pytest.raises(BadPattern, match="syntax error in pattern"):
            go_match(pattern, name)
    else:
        assert go_match(pattern, name) is want


@pytest.mark.parametrize("pattern, name, want", [
    ("*??", "☺", True),  # Go's * skips bytes: the two ? then read the rest of the character
    ("x*[", ".", False),  # filepath.Match stops at the first chunk that cannot match
    ("x[", ".", BAD),
])
def test_go_filepath_match_works_on_bytes(pattern, name, want):
    if want == BAD:
        with pytest.raises(BadPattern):
            go_match(pattern, name)
    else:
        assert go_match(pattern, name) is want


# -- moby/patternmatcher (patternmatcher_test.go) -----------------------------------------------
PM_MATCH_TESTS = [
    ("abc", "abc", True),
    ("*", "abc", True),
    ("*c", "abc", True),
    ("a*", "a", True),
    ("a*", "abc", True),
    ("a*", "ab/c", True),
    ("a*/b", "abc/b", True),
    ("a*/b", "a/c/b", False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True),
    ("a*b?c*x", "abxbbxdbxebxczzy", False),
    ("ab[c]", "abc", True),
    ("ab[b-d]", "abc", True),
    ("ab[e-g]", "abc", False),
    ("ab[^c]", "abc", False),
    ("ab[^b-d]", "abc", False),
    ("ab[^e-g]", "abc", True),
    ("a\\*b", "a*b", True),
    ("a\\*b", "ab", False),
    ("a?b", "a☺b", True),
    ("a[^a]b", "a☺b", True),
    ("a???b", "a☺b", False),
    ("a[^a][^a][^a]b", "a☺b", False),
    ("[a-ζ]*", "α", True),
    ("*[a-ζ]", "A", False),
    ("a?b", "a/b", False),
    ("a*b", "a/b", False),
    ("[\\]a]", "]", True),
    ("[\\-]", "-", True),
    ("[x\\-]", "x", True),
    ("[x\\-]", "-", True),
    ("[x\\-]", "z", False),
    ("[\\-x]", "x", True),
    ("[\\-x]", "-", True),
    ("[\\-x]", "a", False),
    ("[]a]", "]", BAD),
    ("[-]", "-", BAD),
    ("[x-]", "x", BAD),
    ("[x-]", "-", BAD),
    ("[x-]", "z", BAD),
    ("[-x]", "x", BAD),
    ("[-x]", "-", BAD),
    ("[-x]", "a", BAD),
    ("\\", "a", BAD),
    ("[a-b-c]", "a", BAD),
    ("[", "a", BAD),
    ("[^", "a", BAD),
    ("[^bc", "a", BAD),
    ("a[", "a", BAD),
    ("a[", "ab", BAD),
    ("*x", "xxx", True),
]


@pytest.mark.parametrize("pattern, path, want", PM_MATCH_TESTS)
def test_patternmatcher_match_table(pattern, path, want):
    if want == BAD:
        with pytest.raises(DockerignoreError, match="syntax error in pattern"):
            PatternMatcher([pattern])
    else:
        assert PatternMatcher([pattern]).matches_or_parent_matches(go_clean(path)) is want


PM_MATCHES_TESTS = [
    ("**", "file", True),
    ("**", "file/", True),
    ("**/", "file", True),
    ("**/", "file/", True),
    ("**", "/", True),
    ("**/", "/", True),
    ("**", "dir/file", True),
    ("**/", "dir/file", True),
    ("**", "dir/file/", True),
    ("**/", "dir/file/", True),
    ("**/**", "dir/file", True),
    ("**/**", "dir/file/", True),
    ("dir/**", "dir/file", True),
    ("dir/**", "dir/file/", True),
    ("dir/**", "dir/dir2/file", True),
    ("dir/**", "dir/dir2/file/", True),
    ("**/dir", "dir", True),
    ("**/dir", "dir/file", True),
    ("**/dir2/*", "dir/dir2/file", True),
    ("**/dir2/*", "dir/dir2/file/", True),
    ("**/dir2/**", "dir/dir2/dir3/file", True),
    ("**/dir2/**", "dir/dir2/dir3/file/", True),
    ("**file", "file", True),
    ("**file", "dir/file", True),
    ("**/file", "dir/file", True),
    ("**file", "dir/dir/file", True),
    ("**/file", "dir/dir/file", True),
    ("**/file*", "dir/dir/file", True),
    ("**/file*", "dir/dir/file.txt", True),
    ("**/file*txt", "dir/dir/file.txt", True),
    ("**/file*.txt", "dir/dir/file.txt", True),
    ("**/file*.txt*", "dir/dir/file.txt", True),
    ("**/**/*.txt", "dir/dir/file.txt", True),
    ("**/**/*.txt2", "dir/dir/file.txt", False),
    ("**/*.txt", "file.txt", True),
    ("**/**/*.txt", "file.txt", True),
    ("a**/*.txt", "a/file.txt", True),
    ("a**/*.txt", "a/dir/file.txt", True),
    ("a**/*.txt", "a/dir/dir/file.txt", True),
    ("a/*.txt", "a/dir/file.txt", False),
    ("a/*.txt", "a/file.txt", True),
    ("a/*.txt**", "a/file.txt", True),
    ("a[b-d]e", "ae", False),
    ("a[b-d]e", "ace", True),
    ("a[b-d]e", "aae", False),
    ("a[^b-d]e", "aze", True),
    (".*", ".foo", True),
    (".*", "foo", False),
    ("abc.def", "abcdef", False),
    ("abc.def", "abc.def", True),
    ("abc.def", "abcZdef", False),
    ("abc?def", "abcZdef", True),
    ("abc?def", "abcdef", False),
    ("a\\\\", "a\\", True),
    ("**/foo/bar", "foo/bar", True),
    ("**/foo/bar", "dir/foo/bar", True),
    ("**/foo/bar", "dir/dir2/foo/bar", True),
    ("abc/**", "abc", False),
    ("abc/**", "abc/def", True),
    ("abc/**", "abc/def/ghi", True),
    ("**/.foo", ".foo", True),
    ("**/.foo", "bar.foo", False),
    ("a(b)c/def", "a(b)c/def", True),
    ("a(b)c/def", "a(b)c/xyz", False),
    ("a.|)$(}+{bc", "a.|)$(}+{bc", True),
    ("dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
    ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
    ("a\\*b", "a*b", True),
]
PM_MULTI_TESTS = [
    (["**", "!util/docker/web"], "util/docker/web/foo", False),
    (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
    (["**", "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
    (["**", "!dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
]
ALL_MATCHES = [([p], t, want) for p, t, want in PM_MATCHES_TESTS] + PM_MULTI_TESTS


def with_parent_results(matcher: PatternMatcher, text: str) -> bool:
    """The walk's way: each parent directory in turn, passing its match info down."""
    parent = go_clean(text[:text.rfind("/") + 1])  # filepath.Dir
    info: tuple[bool, ...] = ()
    if parent != ".":
        parts = parent.split("/")
        for k in range(len(parts)):
            _, info = matcher.matches_using_parent_results("/".join(parts[:k + 1]), info)
    return matcher.matches_using_parent_results(text, info)[0]


@pytest.mark.parametrize("patterns, text, want", ALL_MATCHES)
def test_patternmatcher_matches_or_parent_matches(patterns, text, want):
    assert PatternMatcher(patterns).matches_or_parent_matches(text) is want


@pytest.mark.parametrize("patterns, text, want", ALL_MATCHES)
def test_patternmatcher_matches_using_parent_results(patterns, text, want):
    assert with_parent_results(PatternMatcher(patterns), text) is want


@pytest.mark.parametrize("patterns, text, want", ALL_MATCHES)
def test_patternmatcher_matches_using_parent_results_without_context(patterns, text, want):
    assert PatternMatcher(patterns).matches_using_parent_results(text)[0] is want


@pytest.mark.parametrize("pattern, kind, regex", [
    ("*", "regexp", "^[^/]*$"),
    ("file*", "regexp", "^file[^/]*$"),
    ("*file", "regexp", "^[^/]*file$"),
    ("a*/b", "regexp", "^a[^/]*/b$"),
    ("**", "suffix", ""),
    ("**/**", "regexp", "^(.*/)?.*$"),
    ("dir/**", "prefix", ""),
    ("**/dir", "suffix", ""),
    ("**/dir2/*", "regexp", "^(.*/)?dir2/[^/]*$"),
    ("**/dir2/**", "regexp", "^(.*/)?dir2/.*$"),
    ("**file", "suffix", ""),
    ("**/file*txt", "regexp", "^(.*/)?file[^/]*txt$"),
    ("**/**/*.txt", "regexp", "^(.*/)?(.*/)?[^/]*\\.txt$"),
    ("a[b-d]e", "regexp", "^a[b-d]e$"),
    (".*", "regexp", "^\\.[^/]*$"),
    ("abc.def", "exact", ""),
    ("abc?def", "regexp", "^abc[^/]def$"),
    ("**/foo/bar", "suffix", ""),
    ("a(b)c/def", "exact", ""),
    ("a.|)$(}+{bc", "exact", ""),
    ("dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", "exact", ""),
])
def test_patternmatcher_compile(pattern, kind, regex):
    assert compile_pattern(go_clean(pattern)) == (kind, regex)


@pytest.mark.parametrize("patterns, path, want", [
    (["*"], "fileutils.go", True),
    (["*.go"], "fileutils.go", True),
    (["!fileutils.go", "*.go"], "fileutils.go", True),
    (["docs", "!docs/README.md"], "docs/README.md", False),
    (["docs/", "!docs/README.md"], "docs/README.md", False),
    (["docs/*", "!docs/README.md"], "docs/README.md", False),
    (["*.go", "!fileutils.go"], "fileutils.go", False),
    ([], "any/path/there", False),
])
def test_patternmatcher_simple_cases(patterns, path, want):
    assert PatternMatcher(patterns).matches_or_parent_matches(path) is want
    assert is_excluded(path, patterns) is want


def test_patternmatcher_cleans_and_flags_patterns():
    assert [p.cleaned for p in PatternMatcher(["docs", "config", ""]).patterns] == ["docs", "config"]
    for exception in ["!docs/README.md", "  !docs/README.md", "!docs/README.md  "]:
        assert PatternMatcher(["docs", exception]).exclusions is True
    with pytest.raises(DockerignoreError, match='illegal exclusion pattern: "!"'):
        PatternMatcher(["!"])
    with pytest.raises(DockerignoreError, match="syntax error in pattern"):
        PatternMatcher(["["])


def test_pattern_that_only_go_regexp_refuses_fails_when_used_every_time():
    matcher = PatternMatcher(["[Local-Only]/"])  # filepath.Match accepts it; the range l-O is reversed
    for _ in range(2):
        with pytest.raises(DockerignoreError, match="syntax error in pattern"):
            matcher.matches_or_parent_matches("x")


# -- ignorefile ReadAll (ignorefile_test.go) ----------------------------------------------------
def test_ignorefile_read_all():
    content = b"test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n! /inverted/abs/path\n!\n! "
    lines = read_ignore_lines(content)
    assert [line.pattern for line in lines] == ["test1", "test2", "a/file/here", "lastfile", "!inverted/abs/path", "!", "!"]
    assert [line.line for line in lines] == [1, 2, 3, 5, 7, 8, 9]
    assert read_ignore_lines(b"") == []


@pytest.mark.parametrize("content, patterns", [
    (b"\xef\xbb\xbf*.log\n", ["*.log"]),  # a BOM at the start is dropped
    (b"a\n\xef\xbb\xbfb\n", ["a", "\ufeffb"]),  # only on the first line
    (b"  # not a comment\n", ["# not a comment"]),  # # counts only as the first character
    (b"#comment\n", []),
    (b"a\r\nb\r\n", ["a", "b"]),
    (b"./a/../b/\n", ["b"]),
    (b"//x//y/\n", ["x/y"]),
    (b"/\n", ["/"]),
    (b"!/\n", ["!/"]),
    (b"! ./keep \n", ["!keep"]),
    (b"\t a b \t\n", ["a b"]),
    (b"\x1fa\n", ["\x1fa"]),  # Go does not trim what Python's str.strip would
    ("\u3000x\u00a0\n".encode(), ["x"]),
    (b"..\n../a\n", ["..", "../a"]),
])
def test_ignorefile_reader_cases(content, patterns):
    assert [line.pattern for line in read_ignore_lines(content)] == patterns


def test_ignorefile_line_too_long_is_docker_s_error():
    assert read_ignore_lines(b"a" * 65535)[0].pattern == "a" * 65535
    with pytest.raises(DockerignoreError, match=r"line 2: .*token too long"):
        read_ignore_lines(b"x\n" + b"a" * 65536 + b"\n")


def test_go_trim_space_and_clean():
    assert go_trim_space("\u2003 a \u2028") == "a"
    assert go_trim_space("\x1ca\x1c") == "\x1ca\x1c"
    assert [go_clean(p) for p in ["", "//a", "a/../..", "/../a", "a//b/./c/", "/"]] == [".", "/a", "..", "/a", "a/b/c", "/"]


# -- malformed files: the line, the pattern and Docker's words ---------------------------------
@pytest.mark.parametrize("line, words", [
    ("[", "syntax error in pattern"),
    ("[^", "syntax error in pattern"),
    ("[^bc", "syntax error in pattern"),
    ("a[", "syntax error in pattern"),
    ("foo\\", "syntax error in pattern"),
    ("[a-b-c]", "syntax error in pattern"),
    ("[-]", "syntax error in pattern"),
    ("[x-]", "syntax error in pattern"),
    ("[-x]", "syntax error in pattern"),
    ("!", 'illegal exclusion pattern: "!"'),
    ("  !  ", 'illegal exclusion pattern: "!"'),
    ("!/", 'illegal exclusion pattern: "!"'),
])
def test_malformed_line_is_refused_naming_line_and_pattern(tmp_path, line, words):
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / ".dockerignore").write_text(f"# ok\nsrc\n{line}\n")
    with pytest.raises(DockerignoreError) as caught:
        context_paths(tmp_path)
    error = caught.value
    assert isinstance(error, InvalidJob) and error.kind == "invalid"
    assert (error.line, error.reason) == (3, words)
    assert str(error) == f".dockerignore line 3: {line.strip()!r}: {words}"
    assert str(tmp_path) not in str(error)


def test_pattern_go_regexp_refuses_is_reported_when_docker_would_use_it(tmp_path):
    (tmp_path / "a").write_text("")
    (tmp_path / ".dockerignore").write_text("a\n*\n[z-a]x\n")
    context_paths(tmp_path)  # after `*` matched, Docker never evaluates the third pattern
    (tmp_path / ".dockerignore").write_text("[z-a]x\n")
    with pytest.raises(DockerignoreError, match=r"line 1: '\[z-a\]x': syntax error in pattern"):
        context_paths(tmp_path)


# -- the pattern language, corner by corner ------------------------------------------------------
@pytest.mark.parametrize("pattern, path, want", [
    ("[\\]a]", "]", True),  # escapes inside a class
    ("[\\-x]", "-", True),
    ("[!a]", "!", True),  # ! is an ordinary member; Go negates only with ^
    ("[!a]", "b", False),
    ("[^a]", "b", True),
    ("foo**bar", "foobar", True),
    ("foo**bar", "foo/bar", True),
    ("foo**bar", "foo/x/y/bar", True),
    ("foo**bar", "fooxbar", False),  # ** not followed by / still only spans whole directories
    ("**foo", "xfoo", True),  # at the start it is a plain suffix test
    ("**foo", "a/b/xfoo", True),
    ("a^b", "a^b", True),  # ^ is literal in a pattern Docker compares as a string
    ("*^b", "a^b", False),  # ... but an anchor once the pattern is a regexp
    ("\\d", "5", True),  # an escaped letter means what it means to Go's regexp
    ("\\d", "d", False),
    ("[[:digit:]]x", "7x", True),
    ("a\\Q*", "a[^/]*$", True),  # \Q quotes the rest of the translated regexp, closing $ included
    ("a\\Q*", "a*", False),
    ("a+b", "a+b", True),
    ("a+b", "aab", False),
    ("*.txt", "a\nb.txt", True),
    ("**/x", "a\nb/x", True),
    ("a**", "ab\nc", True),
    ("x/**/y", "x/a\nb/y", False),  # .* in the regexp does not cross a newline
    ("\\pL?", "éa", True),
])
def test_pattern_language_corners(pattern, path, want):
    assert PatternMatcher([pattern]).matches_or_parent_matches(path) is want


@pytest.mark.parametrize("source, subject, want", [
    ("^a\\x41$", "aA", True),
    ("^\\101$", "A", True),
    ("^\\x{1F600}$", "\U0001F600", True),
    ("^[\\d_]$", "_", True),
    ("^\\w$", "é", False),  # Perl classes are ASCII in Go
    ("^\\s$", "\v", False),
    ("^[[:space:]]$", "\v", True),
    ("^[^a]$", "\n", True),
    ("^.$", "\n", False),
    ("^a\\b$", "a", True),
    ("^\\pN$", "٣", True),
    ("^\\PN$", "3", False),
    ("^[[:^alpha:]]$", "1", True),
    ("^\\QA.\\E.$", "A.x", True),
    ("^\\z", "", True),
    ("^\\Ax*$", "xx", True),
    ("^\ufffd$", "\udcff", True),  # a byte that is not UTF-8 reads as U+FFFD
])
def test_go_regexp_translation(source, subject, want):
    assert compile_go_regexp(source).matches(subject) is want


@pytest.mark.parametrize("source", [
    "^[z-a]$", "^\\1$", "^\\8$", "^\\C$", "^\\é$", "^\\pX$", "^[[:foo:]]$", "^[a$", "^a**$", "*a",
    "^(a$", "^a)$", "^\\x4$", "^\\x{}$", "^\\q$", "^[a-\\d]$", "^\\",
])
def test_go_regexp_refusals(source):
    from runner.context.gocompat import GoRegexpError

    with pytest.raises(GoRegexpError):
        compile_go_regexp(source)


# -- the walk ------------------------------------------------------------------------------------
def tree(root: Path, spec: dict[str, str | None], ignore: str | None = None) -> Path:
    """spec: path -> file text, None for a directory, "->target" for a symbolic link."""
    for rel, value in spec.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if value is None:
            path.mkdir(exist_ok=True)
        elif value.startswith("->"):
            path.symlink_to(value[2:])
        else:
            path.write_text(value)
    if ignore is not None:
        (root / ".dockerignore").write_text(ignore)
    return root


def test_walk_order_is_fsutil_s_and_links_are_not_followed(tmp_path):
    tree(tmp_path, {"a/b": "", "a.txt": "", "B": "", "link": "->a", "a/c/d": ""}, ignore="")
    assert context_paths(tmp_path) == [".dockerignore", "B", "a", "a/b", "a/c", "a/c/d", "a.txt", "link"]


def test_exception_reincludes_file_and_sends_its_parent_directories(tmp_path):
    tree(tmp_path, {"build/sub/keep.txt": "", "build/sub/other": "", "build/x": "", "src/a": ""},
         ignore="build\n!build/sub/keep.txt\n")
    assert context_paths(tmp_path) == [".dockerignore", "build", "build/sub", "build/sub/keep.txt", "src", "src/a"]


def test_excluded_directory_with_nothing_reincluded_is_not_sent(tmp_path):
    tree(tmp_path, {"build/x": "", "keep": ""}, ignore="build\n!build/nothere\n")
    assert context_paths(tmp_path) == [".dockerignore", "keep"]


def test_glob_exception_reaches_into_excluded_directories(tmp_path):
    """BuildKit (not classic docker) walks into `build` because the exception has a glob."""
    tree(tmp_path, {"build/keep.txt": "", "build/sub/keep.txt": "", "build/other": "", "x/keep.txt": ""},
         ignore="build\n!**/keep.txt\n")
    assert context_paths(tmp_path) == [".dockerignore", "build", "build/keep.txt", "build/sub", "build/sub/keep.txt", "x", "x/keep.txt"]


def test_prefix_exception_is_the_only_way_into_a_pruned_directory(tmp_path):
    tree(tmp_path, {"build/keep.txt": "", "build/sub/keep.txt": ""}, ignore="build\n!build/sub\n")
    assert context_paths(tmp_path) == [".dockerignore", "build", "build/sub", "build/sub/keep.txt"]


def test_pattern_skipped_for_a_directory_does_not_match_inside_it(tmp_path):
    """fsutil passes down only the patterns it evaluated: the second `a` is skipped for the
    directory `a` (it already matched), so it does not exclude `a/x` again after `!a/x`."""
    tree(tmp_path, {"a/x": "", "a/y": ""}, ignore="a\n!a/x\na\n")
    assert context_paths(tmp_path) == [".dockerignore", "a", "a/x"]
    assert PatternMatcher(["a", "!a/x", "a"]).matches_or_parent_matches("a/x") is True  # the non-walk answer


def test_dockerfile_and_ignore_file_are_always_sent_but_marked(tmp_path):
    tree(tmp_path, {"build/Dockerfile": "FROM scratch\n", "build/other": "", "src/a": ""}, ignore="build\n.dockerignore\n")
    selection = select_context(tmp_path, "./build/../build/Dockerfile")
    assert selection.paths == [".dockerignore", "build", "build/Dockerfile", "src", "src/a"]
    assert selection.forced == {".dockerignore", "build", "build/Dockerfile"}
    assert selection.copied == ["src", "src/a"]


def test_forced_parent_becomes_copied_when_an_exception_sends_it_too(tmp_path):
    tree(tmp_path, {"build/Dockerfile": "", "build/keep": "", "build/zz": ""}, ignore="build\n!build/keep\n")
    selection = select_context(tmp_path, "build/Dockerfile")
    assert selection.paths == [".dockerignore", "build", "build/Dockerfile", "build/keep"]
    assert selection.forced == {"build/Dockerfile"}


def test_dockerfile_at_root_given_as_dot_slash_is_kept(tmp_path):
    tree(tmp_path, {"Dockerfile": "FROM scratch\n", "a": ""}, ignore="Dockerfile\n")
    selection = select_context(tmp_path, "./Dockerfile")
    assert selection.paths == [".dockerignore", "Dockerfile", "a"]
    assert selection.forced == {"Dockerfile"}


@pytest.mark.parametrize("dockerfile", ["../Dockerfile", "/", ".", "a/../../x"])
def test_dockerfile_outside_the_context_is_refused(tmp_path, dockerfile):
    with pytest.raises(InvalidJob, match="not a file inside the build context"):
        context_paths(tmp_path, dockerfile)


def test_dockerfile_reached_through_a_link_is_sent_with_the_link(tmp_path):
    tree(tmp_path, {"build/Dockerfile": "", "build/x": "", "current": "->build"}, ignore="build\ncurrent\n")
    selection = select_context(tmp_path, "current/Dockerfile")
    assert selection.paths == [".dockerignore", "build", "build/Dockerfile", "current"]
    assert selection.copied == [".dockerignore"]


def test_dockerfile_specific_ignore_file_wins(tmp_path):
    tree(tmp_path, {"app/Dockerfile": "", "app/Dockerfile.dockerignore": "b\n", "a": "", "b": ""}, ignore="a\n")
    selection = select_context(tmp_path, "app/Dockerfile")
    assert selection.ignore_file == "app/Dockerfile.dockerignore"
    assert selection.paths == [".dockerignore", "a", "app", "app/Dockerfile", "app/Dockerfile.dockerignore"]


def test_ignore_file_link_is_followed_inside_the_context_only(tmp_path):
    tree(tmp_path, {"rules/ignore": "secret\n", "secret": "", ".dockerignore": "->/rules/ignore"})
    assert context_paths(tmp_path) == [".dockerignore", "rules", "rules/ignore"]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "ignore").write_text("leak\n")
    ctx = tmp_path / "ctx"
    tree(ctx, {"leak": "", ".dockerignore": f"->{outside / 'ignore'}"})
    assert "leak" in context_paths(ctx)  # the absolute target is looked up inside ctx, where it is absent


def test_malformed_dockerfile_specific_ignore_file_is_named(tmp_path):
    tree(tmp_path, {"Dockerfile": "", "Dockerfile.dockerignore": "ok\n[\n"})
    with pytest.raises(DockerignoreError, match=r"^Dockerfile\.dockerignore line 2: '\[': syntax error in pattern$"):
        context_paths(tmp_path)


WALK_AS_NOBODY = """
import json, sys
from runner.context.dockerignore import context_paths
from executors.base import InvalidJob
try:
    print(json.dumps(context_paths(sys.argv[1], "Dockerfile")))
except InvalidJob as exc:
    print(json.dumps(str(exc)))
"""


@pytest.mark.parametrize("ignore, want", [
    (None, "cannot read 'foo/bar' in the build context: permission denied"),
    ("**/bar\n", [".dockerignore", "foo"]),
    ("**/bar\n!foo/bar/baz\n", [".dockerignore", "foo"]),
    ("**/bar\n!foo/bar\n", "cannot read 'foo/bar' in the build context: permission denied"),
])
def test_unreadable_directory_is_an_error_unless_excluded(ignore, want):
    """fsutil's permission cases, walked by an unprivileged user (root reads everything)."""
    import json
    import subprocess
    import sys
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="dockerignore-perm-"))
    try:
        base.chmod(0o755)
        tree(base, {"foo/bar/baz": ""}, ignore=ignore)
        (base / "foo" / "bar").chmod(0)
        command = [sys.executable, "-c", WALK_AS_NOBODY, str(base)]
        if os.geteuid() == 0:
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60,
                                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == want
    finally:
        (base / "foo" / "bar").chmod(0o755)
        import shutil

        shutil.rmtree(base)


def test_special_files_are_left_out(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "f").write_text("")
    assert context_paths(tmp_path) == ["f"]


def test_non_utf8_names_sort_as_bytes(tmp_path):
    for name in [b"\xff", b"a", "é".encode(), b"\xc3"]:
        (tmp_path / os.fsdecode(name)).write_text("")
    assert [os.fsencode(p) for p in context_paths(tmp_path)] == [b"a", b"\xc3", "é".encode(), b"\xff"]


# -- the walk against a line-by-line port of fsutil's filtered walk --------------------------------
def fsutil_reference_walk(root: Path, matcher: PatternMatcher | None) -> list[str]:
    """filter.go's Walk as written (parentDirs, calledFn, SkipDir), without the runner's shortcuts."""
    exceptions = [p.cleaned.removesuffix("/**").removesuffix("/*") for p in matcher.patterns if p.exclusion] if matcher else []
    only_prefix = not any(ch in "*[]?^\\" for text in exceptions for ch in text)
    out: list[str] = []
    parent_dirs: list[dict] = []

    def visit(path: str, is_dir: bool) -> bool:  # False: SkipDir
        while parent_dirs and not path.startswith(parent_dirs[-1]["sep"]):
            parent_dirs.pop()
        node = {"path": path, "sep": path + "/", "info": (), "called": False}
        skip = False
        if matcher is not None:
            m, info = matcher.matches_using_parent_results(path, parent_dirs[-1]["info"] if parent_dirs else ())
            node["info"] = info
            if m:
                if is_dir and only_prefix:
                    if not matcher.exclusions or not any((text + "/").startswith(path + "/") for text in exceptions):
                        return False
                skip = True
        if not skip:
            node["called"] = True
            for parent in parent_dirs:
                if not parent["called"]:
                    parent["called"] = True
                    out.append(parent["path"])
            out.append(path)
        if is_dir:
            parent_dirs.append(node)
        return True

    def walk(rel_dir: str) -> None:
        for name in sorted(os.listdir(root / rel_dir if rel_dir else root), key=os.fsencode):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            is_dir = (root / rel).is_dir() and not (root / rel).is_symlink()
            if visit(rel, is_dir) and is_dir:
                walk(rel)

    walk("")
    return out


def _corpus_harness():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "dockerignore"))
    import harness

    return harness


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_walk_equals_fsutil_reference(data):
    """The runner's walk (pruning, parents sent late, always-sent files kept apart) against the
    reference, on generated trees; here also where Docker 20.10 differs, which the oracle cannot check."""
    harness = _corpus_harness()
    case = data.draw(harness.cases())
    with harness.materialised(case) as ctx:
        dockerfile = harness.walker_dockerfile(case)
        try:
            selection = select_context(ctx, dockerfile)
        except DockerignoreError:
            return
        from runner.context.dockerignore import matcher_for

        matcher = matcher_for(ctx, dockerfile)
        assert selection.copied == fsutil_reference_walk(ctx, matcher if matcher.patterns else None)


# -- many patterns: the matcher's index against Docker's loop, pattern by pattern -----------------
def one_pattern(cleaned: str, path: str) -> bool:
    """patternmatcher's Pattern.match: the shortcut's text comparison, or its Go regexp."""
    kind, source = compile_pattern(cleaned)
    if kind == "regexp":
        return compile_go_regexp(source).matches(path)
    if kind == "exact":
        return path == cleaned
    if kind == "prefix":
        return path.startswith(cleaned[:-2])
    suffix = cleaned[2:]
    return path.endswith(suffix) or (suffix[:1] == "/" and path == suffix[1:])


def docker_loop(patterns: list[str], path: str, parent: list[bool] | None) -> tuple[bool, list[bool]]:
    """MatchesUsingParentResults as moby/patternmatcher writes it: every pattern, in order
    (`parent` None: no parent results, so the path's parent directories are matched too)."""
    matched, info = False, []
    for text in patterns:
        exclusion = text.startswith("!")
        cleaned = text[1:] if exclusion else text
        match = bool(parent) and parent[len(info)]  # type: ignore[index]
        if not match:
            if exclusion != matched:
                info.append(False)
                continue
            match = one_pattern(cleaned, path)
            if not match and parent is None and "/" in path:
                dirs = path.rsplit("/", 1)[0].split("/")
                match = any(one_pattern(cleaned, "/".join(dirs[:k + 1])) for k in range(len(dirs)))
        info.append(match)
        if match:
            matched = not exclusion
    return matched, info


_NAMES = ["a", "b", "f1", "f2", "f12", "x.log", "f1.log", "aa"]
_PIECES = ["a", "b", "f1", "f2", "f12", "*", "?", "**", "f*", "*1", "*.log", "[ab]", "[^a]", "f?", "*f1*", "x.log", "a*b*"]


@st.composite
def pattern_files(draw) -> list[str]:
    """Up to 150 clean patterns, often the same shape many times over (so that many regexps
    share one index key, or none, and are tried in chunks)."""
    count = draw(st.integers(1, 150))
    out = []
    for _ in range(count):
        pieces = draw(st.lists(st.sampled_from(_PIECES), min_size=1, max_size=4))
        number = draw(st.integers(0, 40))
        if draw(st.booleans()):
            pieces[-1] = pieces[-1].replace("1", str(number), 1) if "1" in pieces[-1] else f"*{number}*"
        text = go_clean("/".join(pieces))
        out.append(("!" if draw(st.integers(0, 3)) == 0 else "") + text)
    return out


@pytest.mark.slow  # 300 generated files, ~20 s: the full suite only (the fast tier stays under a minute)
@settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(patterns=pattern_files(), paths=st.lists(st.lists(st.sampled_from(_NAMES + ["f7", "f33", "a7b"]), min_size=1, max_size=4),
                                                 min_size=1, max_size=6))
def test_indexed_matcher_gives_docker_s_answers(patterns, paths):
    """The index (shortcuts by text, regexps by literal prefix / suffix, chunks of alternatives)
    and the walk over matching patterns only decide every path as Docker's loop does, with
    parent results passed down and without them."""
    matcher = PatternMatcher(patterns)
    for parts in paths:
        info: tuple[bool, ...] | int = ()
        reference: list[bool] | None = None
        for k in range(1, len(parts) + 1):
            path = "/".join(parts[:k])
            want, reference = docker_loop(patterns, path, reference)
            got, info = matcher.matches_using_parent_results(path, info)
            assert got is want, (patterns, path)
            assert info == sum(1 << n for n, hit in enumerate(reference) if hit), (patterns, path)
        path = "/".join(parts)
        assert matcher.matches_or_parent_matches(path) is docker_loop(patterns, path, None)[0], (patterns, path)


def test_index_gives_the_same_hits_when_its_compiled_programs_are_dropped():
    """Past its memory budget the index drops compiled programs and compiles them again."""
    from runner.context.pattern_index import PatternIndex

    patterns = [f"*f{n}*" for n in range(100)] + [f"src/*{n}.c" for n in range(100)] + ["**/x*", "*.log"]
    roomy, tight = PatternIndex(patterns), PatternIndex(patterns, budget=1)
    for path in ["f3", "f42x", "src/a7.c", "src/x/a7.c", "d/x.log", "d/xy", "nothing"]:
        assert sorted(tight.hits(path)) == sorted(roomy.hits(path)) == sorted(
            n for n, p in enumerate(patterns) if one_pattern(p, path))


# -- hostile patterns: RE2 matches in time linear in the path -------------------------------------
DEEP = "/".join(["a", *(f"d{n}" for n in range(18)), "file"])  # 20 levels


@pytest.mark.parametrize("pattern, path, want", [
    ("a/" + "**/" * 17 + "z", DEEP, False),  # the shape: a backtracking regexp never finished
    ("a/" + "**/" * 17 + "z", DEEP.removesuffix("file") + "z", True),
    ("a/" + "**/" * 17 + "z", "a/z", True),
    ("*a" * 40 + "*b", "a" * 400, False),  # many stars
    ("*a" * 40 + "*b", "a" * 400 + "b", True),
    ("*a" * 2000 + "*b", "a" * 10000, False),
    ("[a-z]*" * 40 + "0", "q" * 400, False),  # classes under stars
    ("[a-z]*" * 40 + "0", "q" * 400 + "0", True),
    ("?*" * 40 + "/x", "q" * 400 + "/y", False),
    ("**/" * 40 + "[0-9]*" * 20 + ".txt", "/".join(["1"] * 60) + "/1", False),
    ("**/" * 40 + "[0-9]*" * 20 + ".txt", "/".join(["1"] * 60) + "/" + "1" * 20 + ".txt", True),
])
def test_hostile_patterns_are_answered(pattern, path, want):
    """Shapes that take a backtracking matcher exponential (or high-degree polynomial) time;
    RE2 answers at once. Timings are in bench/bench_hostile.py."""
    matcher = PatternMatcher([pattern])
    assert matcher.matches_or_parent_matches(path) is want
    info: tuple[()] | int = ()
    parts = path.split("/")
    for k in range(1, len(parts) + 1):
        got, info = matcher.matches_using_parent_results("/".join(parts[:k]), info)
    assert got is want


def test_walk_with_the_nested_doublestar_file_sends_the_deep_file(tmp_path):
    deep = tmp_path / DEEP
    deep.parent.mkdir(parents=True)
    deep.write_text("x")
    (tmp_path / "a" / "z").write_text("gone")
    (tmp_path / "a" / "d0" / "z").write_text("gone")
    (tmp_path / ".dockerignore").write_text("a/" + "**/" * 17 + "z\n!a/keep\n*.tmp\n")
    sent = context_paths(tmp_path)
    assert DEEP in sent and "a/z" not in sent and "a/d0/z" not in sent


def test_too_complex_pattern_fails_only_when_docker_would_use_it(tmp_path):
    """Valid Go, but more than the runner compiles (here 200 Unicode classes): refused, naming
    it, when the walk first tries it, like a pattern Go's regexp rejects."""
    heavy = "\\pL" * 200
    (tmp_path / "a").write_text("")
    (tmp_path / ".dockerignore").write_text(f"*\n{heavy}\n")
    context_paths(tmp_path)  # after `*` matched, Docker never tries the second pattern
    (tmp_path / ".dockerignore").write_text(f"{heavy}\n")
    with pytest.raises(DockerignoreError, match=r"line 1: .*too complex for the runner to match"):
        context_paths(tmp_path)


# -- the ignore file's caps (limits) and cancel -----------------------------------------------------
def test_ignore_file_over_the_byte_cap_is_refused_before_it_is_read(tmp_path):
    from runner.config.settings import LimitsConfig

    (tmp_path / ".dockerignore").write_bytes(b"x\n" * 600)
    with pytest.raises(DockerignoreError) as refused:
        context_paths(tmp_path, limits=LimitsConfig(max_ignore_file_bytes=1000))
    assert isinstance(refused.value, InvalidJob)
    assert str(refused.value) == ".dockerignore: is 1,200 bytes, over the limit of 1,000 bytes (limits.max_ignore_file_bytes)"
    assert context_paths(tmp_path, limits=LimitsConfig(max_ignore_file_bytes=1200))


def test_ignore_file_over_the_pattern_cap_is_refused_naming_the_count(tmp_path):
    from runner.config.settings import LimitsConfig

    (tmp_path / "app.Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "app.Dockerfile.dockerignore").write_text("# not a pattern\n\n" + "".join(f"f{n}\n" for n in range(12)))
    with pytest.raises(DockerignoreError) as refused:
        context_paths(tmp_path, "app.Dockerfile", limits=LimitsConfig(max_ignore_patterns=10))
    assert str(refused.value) == "app.Dockerfile.dockerignore: holds 12 patterns, over the limit of 10 (limits.max_ignore_patterns)"
    assert len(context_paths(tmp_path, "app.Dockerfile", limits=LimitsConfig(max_ignore_patterns=12))) == 2


def test_cancel_stops_the_walk_and_the_compile(tmp_path):
    from runner.core.cancel import CancelToken
    from runner.core.errors import Cancelled

    (tmp_path / "f").write_text("")
    cancel = CancelToken()
    cancel.set("timeout")
    with pytest.raises(Cancelled) as stopped:
        context_paths(tmp_path, cancel=cancel)  # no ignore file: stopped in the walk
    assert stopped.value.kind == "timeout"
    with pytest.raises(Cancelled):
        PatternMatcher([f"*f{n}*" for n in range(5000)], cancel)

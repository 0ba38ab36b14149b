"""Reading a Dockerfile's base images as the build will: BuildKit's shell lexer (the tables of
moby/buildkit frontend/dockerfile/shell/lex_test.go, ported), image names normalised as
distribution/reference does (its normalize_test.go tables), and which FROM / COPY --from
images a build of a target pulls; the frontend image a `# syntax=` line names (FRONTEND_CASES,
which tests/test_dockerfile_frontend.py also runs through the real engine). That the digests recorded are the ones the registry holds
for the tags a real build pulled is checked end to end in tests/contract/test_signing.py."""

from __future__ import annotations

import pytest

from runner.context.dockerfile_bases import BaseRef, DockerfileError, base_images, frontend_image, instructions
from runner.context.dockerfile_lex import SubstitutionError, process_word, reverse_pattern, shell_pattern
from runner.core.image_names import InvalidReference, parse_image, parse_normalized
from runner.core.platforms import Platform

# -- the lexer: lex_test.go's TestProcessWithMatches (input, env, expected or None for an error) --
PROCESS_WITH_MATCHES = [
    ("x", {"DUMMY": "dummy"}, "x"),
    ("x ${UNUSED}", {"DUMMY": "dummy"}, "x "),
    ("x ${FOO}", {"FOO": "y"}, "x y"),
    ("${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}", {"FOO": "xxx", "BAR": ""}, "xxx  ccc"),
    ("${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}", {"FOO": "xxx", "BAR": ""}, "xxx bbb ccc"),
    ("${FOO:-}", {"FOO": "xxx", "BAR": ""}, "xxx"),
    ("${FOO:-}", {}, ""),
    ("${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}", {"FOO": "xxx", "BAR": ""}, "aaa bbb "),
    ("${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}", {"FOO": "xxx", "BAR": ""}, "aaa  "),
    ("${FOO?aaa}", {"FOO": "xxx", "BAR": ""}, "xxx"),
    ("${BAR?bbb}", {"FOO": "xxx", "BAR": ""}, ""),
    ("${BAZ?ccc}", {"FOO": "xxx", "BAR": ""}, None),
    ("${FOO:?aaa}", {"FOO": "xxx", "BAR": ""}, "xxx"),
    ("${BAR:?bbb}", {"FOO": "xxx", "BAR": ""}, None),
    ("${BAZ:?ccc}", {"FOO": "xxx", "BAR": ""}, None),
    ("${BAZ:?}", {"FOO": "xxx", "BAR": ""}, None),
    ("${FOO=aaa}", {"FOO": "xxx", "BAR": ""}, None),
    ("${FOO=:aaa}", {"FOO": "xxx", "BAR": ""}, None),
    ("${FOO=}", {}, None),
    ("${FOO#()[]{\\}^$.\\*\\?|\\\\}", {"FOO": "()[]{}^$.*?|\\x"}, "x"),
    ("${FOO%%\\**}", {"FOO": "xx**"}, "xx"),
    ("${FOO#*x*y}", {"FOO": "xxyy"}, "y"),
    ("${FOO#*}", {"FOO": "xxyy"}, "xxyy"),
    ("${FOO#$BAR}", {"FOO": "xxyy", "BAR": "x"}, "xyy"),
    ("${FOO#$BAR}", {"FOO": "xxyy", "BAR": ""}, "xxyy"),
    ("${FOO#}", {"FOO": "xxyy"}, "xxyy"),
    ("${FOO##*x}", {"FOO": "xxyy"}, "yy"),
    ("${FOO##}", {"FOO": "xxyy"}, "xxyy"),
    ("${FOO#?\\?}", {"FOO": "???y"}, "?y"),
    ("${ABC:-.}${FOO%x}${ABC:-.}", {"FOO": "xxyy"}, ".xxyy."),
    ("${FOO%%\\**\\*}", {"FOO": "a***yy*"}, "a"),
    ("${FOO%}", {"FOO": "xxyy"}, "xxyy"),
    ("${FOO%%$BAR}", {"FOO": "xxyy", "BAR": ""}, "xxyy"),
    ("${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}", {"FOO": "/foo*/*/*.txt", "NEEDLE": "\\*/"}, "/foo.*/*.txt - /foo..*.txt"),
    ("${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}", {"FOO": "/tmp/tmp/bar.txt", "NEEDLE": "/tmp"}, "/tmp/bar.txt - /bar.txt"),
    ("${FOO/$NEEDLE/$REPLACEMENT} - ${FOO//$NEEDLE/$REPLACEMENT}",
     {"FOO": "/a/foo/b/c.txt", "NEEDLE": "/?/", "REPLACEMENT": "/"}, "/foo/b/c.txt - /foo/c.txt"),
    ("${FOO/$NEEDLE/$REPLACEMENT}", {"FOO": "http://google.de", "NEEDLE": "http://", "REPLACEMENT": "https://"},
     "https://google.de"),
    ("${FOO//\\//\\/}", {"FOO": "/tmp/foo.txt"}, "\\/tmp\\/foo.txt"),
    ("${FOO/$BAR/ww}", {"FOO": "xxyy", "BAR": ""}, "wwxxyy"),
    ("${FOO//ww}", {"FOO": "xxyy"}, None),
    ("${FOO//}", {"FOO": "xxyy"}, None),
    ("${FOO///}", {"FOO": "xxyy"}, "xxyy"),
    ("${FOO///}", {}, ""),
]


@pytest.mark.parametrize(("word", "env", "expected"), PROCESS_WITH_MATCHES, ids=[c[0] for c in PROCESS_WITH_MATCHES])
def test_buildkit_lexer_table(word, env, expected):
    if expected is None:
        with pytest.raises(SubstitutionError):
            process_word(word, env)
    else:
        assert process_word(word, env) == expected


def test_mandatory_variables_name_the_message():
    """lex_test.go's TestShellParserMandatoryEnvVars."""
    set_envs, empty_envs, unset_envs = {"VAR": "plain", "ARG": "x"}, {"VAR": "", "ARG": "x"}, {"ARG": "x"}
    no_empty, no_unset = "${VAR:?message here$ARG}", "${VAR?message here$ARG}"
    assert process_word(no_empty, set_envs) == "plain"
    for envs in (empty_envs, unset_envs):
        with pytest.raises(SubstitutionError, match="message herex"):
            process_word(no_empty, envs)
    assert process_word(no_unset, set_envs) == "plain"
    assert process_word(no_unset, empty_envs) == ""
    with pytest.raises(SubstitutionError, match="message herex"):
        process_word(no_unset, unset_envs)


def test_shell_patterns_and_their_reversal():
    """lex_test.go's TestConvertShellPatternToRegex and TestReversePattern."""
    for pattern, expected in {"*": "^.*", "?": "^.", "\\*": "^\\*",
                              "(()[]{\\}^$.\\*\\?|\\\\": "^\\(\\(\\)\\[\\]\\{\\}\\^\\$\\.\\*\\?\\|\\\\"}.items():
        assert shell_pattern(pattern, greedy=True, anchored=True).pattern == expected
    for invalid in ("\\", "\\x", "\\\\\\"):
        with pytest.raises(SubstitutionError):
            shell_pattern(invalid, greedy=True, anchored=True)
    for pattern, expected in {"a\\*c": "c\\*a", "\\\\\\ab": "b\\a\\\\", "ab\\": "\\ba", "👽\\🚀🖖": "🖖\\🚀👽",
                              "\\\\b": "b\\\\"}.items():
        assert reverse_pattern(pattern) == expected


def test_quotes_and_escapes():
    env = {"A": "1"}
    assert process_word("'$A'", env) == "$A"
    assert process_word('"$A b"', env) == "1 b"
    assert process_word("\\$A", env) == "$A"
    assert process_word("x`$A", env, escape="`") == "x$A"


# -- image names: distribution/reference's normalize_test.go ------------------------------------------
VALID_NAMES = ["docker/docker", "library/debian", "debian", "docker.io/docker/docker", "docker.io/library/debian",
               "docker.io/debian", "index.docker.io/docker/docker", "index.docker.io/library/debian", "index.docker.io/debian",
               "127.0.0.1:5000/docker/docker", "127.0.0.1:5000/library/debian", "127.0.0.1:5000/debian", "192.168.0.1",
               "192.168.0.1:80", "192.168.0.1:8/debian", "192.168.0.2:25000/debian",
               "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev", "[fc00::1]:5000/docker",
               "[fc00::1]:5000/docker/docker", "[fc00:1:2:3:4:5:6:7]:5000/library/debian",
               "docker.io/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a", "Docker/docker", "DOCKER/docker",
               "docker-rules/docker", "docker---rules/docker", "doc/docker", "d/docker", "jess/t", "dock__er/docker"]
INVALID_NAMES = ["https://github.com/docker/docker", "docker/Docker", "-docker", "-docker/docker", "-docker.io/docker/docker",
                 "docker///docker", "docker.io/docker/Docker", "docker.io/docker///docker", "[fc00::1]", "[fc00::1]:5000",
                 "fc00::1:5000/debian", "[fe80::1%eth0]:5000/debian", "[2001:db8:3:4::192.0.2.33]:5000/debian",
                 "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a", "docker-/docker", "-docker-/docker",
                 "____/____", "_docker/_docker", "dock..er/docker", "dock_.er/docker", "dock-.er/docker", "docker/",
                 "this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_" * 4 + "/docker"]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_reference_names(name):
    parse_normalized(name)


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_reference_names(name):
    with pytest.raises(InvalidReference):
        parse_normalized(name)


@pytest.mark.parametrize(("given", "domain", "path"), [
    ("fooo/bar", "docker.io", "fooo/bar"), ("library/ubuntu", "docker.io", "library/ubuntu"),
    ("ubuntu", "docker.io", "library/ubuntu"), ("index.docker.io/library/ubuntu-12.04-base", "docker.io", "library/ubuntu-12.04-base"),
    ("docker.io/foo", "docker.io", "library/foo"), ("127.0.0.1:8000/privatebase", "127.0.0.1:8000", "privatebase"),
    ("example.com:8000/private/moonbase", "example.com:8000", "private/moonbase"), ("library/foo/bar", "docker.io", "library/foo/bar"),
    ("Foo/bar", "Foo", "bar"), ("test_com/foo", "docker.io", "test_com/foo"), ("test-com:8080/foo", "test-com:8080", "foo"),
    ("xn--n3h.com:18080/foo", "xn--n3h.com:18080", "foo"), ("docker.io/library/foo/bar", "docker.io", "library/foo/bar"),
])
def test_domains_and_paths(given, domain, path):
    """normalize_test.go's TestParseRepositoryInfo and TestNormalizedSplitHostname."""
    named = parse_normalized(given)
    assert (named.domain, named.path) == (domain, path)


def test_tags_and_digests_as_docker_pulls_them():
    digest = "sha256:dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c"
    assert str(parse_image("redis")) == "docker.io/library/redis:latest"
    assert str(parse_image(f"redis@{digest}")) == f"docker.io/library/redis@{digest}"
    both = parse_image(f"busybox:latest@{digest}")
    assert (both.tag, both.digest, both.name) == ("latest", digest, "docker.io/library/busybox")
    assert parse_image("docker.io/library/redis").api_host == "registry-1.docker.io"
    assert parse_image("127.0.0.1:5000/a/b:1").api_host == "127.0.0.1:5000"


# -- which images a build pulls -----------------------------------------------------------------------
AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64")


def bases(dockerfile: str, build_args: dict | None = None, target: str | None = None, platform: Platform = AMD64) -> list[BaseRef]:
    return base_images(dockerfile, build_args or {}, target, platform, AMD64)


def test_arg_defaults_and_build_args_reach_from_only_when_declared():
    dockerfile = "ARG BASE=reg:5000/base:1\nARG TAG\nFROM ${BASE}\nFROM other:${TAG:-dev}\nFROM ${UNDECLARED:-x}:1\n"
    assert [b.ref for b in bases(dockerfile, target=None)] == ["x:1"]  # the last stage alone needs nothing else
    every = dockerfile + "COPY --from=0 /a /a\nCOPY --from=1 /b /b\n"
    assert [b.ref for b in bases(every)] == ["reg:5000/base:1", "other:dev", "x:1"]
    assert [b.ref for b in bases(every, {"BASE": "mine:2", "TAG": "9", "UNDECLARED": "no"})] == ["mine:2", "other:9", "x:1"]


def test_stage_names_scratch_and_the_target_closure():
    dockerfile = ("FROM golang:1.22 AS Build\nRUN make\n"
                  "FROM build AS test\nRUN make test\n"
                  "FROM alpine:3.20 AS unused\n"
                  "FROM scratch AS final\nCOPY --from=BUILD /out /out\nCOPY --from=tools:1 /bin/t /t\n")
    assert bases(dockerfile) == [BaseRef("golang:1.22"), BaseRef("tools:1")]
    assert bases(dockerfile, target="test") == [BaseRef("golang:1.22")]
    assert bases(dockerfile, target="UNUSED") == [BaseRef("alpine:3.20")]
    with pytest.raises(DockerfileError, match="target stage 'nope' could not be found"):
        bases(dockerfile, target="nope")


def test_platform_args_and_from_platform():
    dockerfile = ("FROM --platform=$BUILDPLATFORM tool:${TARGETARCH} AS cross\n"
                  "FROM base-${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-$TARGETVARIANT}\nCOPY --from=cross /t /t\n")
    assert bases(dockerfile, platform=ARM64) == [BaseRef("tool:arm64", "linux/amd64"), BaseRef("base-linux-arm64")]
    assert bases(dockerfile, platform=Platform("linux", "arm", "v7"))[1] == BaseRef("base-linux-arm-v7")


def test_directives_continuations_comments_heredocs_and_mounts():
    dockerfile = ("# syntax=docker/dockerfile:1\n# escape=`\n"
                  "ARG V=1\n"
                  "from `\n  # a comment inside the continuation\n\n  img:${V} as one\n"
                  "FROM one\n"
                  "RUN --mount=type=cache,target=/c,from=cachesrc:2 --mount=type=bind,from=one,target=/o true\n"
                  "COPY <<EOF /etc/x\nFROM not-an-instruction\nEOF\n"
                  "RUN <<-END\n\tFROM neither\n\tEND\n")
    found = instructions(dockerfile)
    assert [i.keyword for i in found] == ["ARG", "FROM", "FROM", "RUN", "COPY", "RUN"]
    assert bases(dockerfile) == [BaseRef("img:1"), BaseRef("cachesrc:2")]


def test_a_stage_arg_takes_the_global_value_when_declared_bare():
    dockerfile = "ARG IMG=from-global:1\nFROM base:1\nARG IMG\nCOPY --from=${IMG} /x /x\n"
    assert bases(dockerfile) == [BaseRef("base:1"), BaseRef("from-global:1")]


@pytest.mark.parametrize(("dockerfile", "message"), [
    ("RUN x\n", "no FROM"),
    ("FROM a b\n", "FROM takes an image"),
    ("ARG E\nFROM ${E:?needs-E}\n", "needs-E"),
    ("FROM ${X}\n", "names no image"),
    ("# escape=x\nFROM a\n", "invalid escape token"),
])
def test_what_cannot_be_read_says_why(dockerfile, message):
    with pytest.raises(DockerfileError, match=message):
        bases(dockerfile)


# -- the frontend: which image a BuildKit build hands the Dockerfile to ---------------------------
OTHER = "127.0.0.1:5000/no-such/frontend:1"
#: (Dockerfile, build args, the frontend read ({F}: the image), whether Docker 20.10's BuildKit
#: uses it): moby/buildkit v0.8.3 directives_test.go's TestDirectives and TestSyntaxDirective,
#: then each placement checked against the engine
FRONTEND_CASES = [
    ("# syntax = {F} // opts\nFROM {B}\n", {}, "{F}", True),
    ("FROM {B}\nRUN ls\n", {}, None, False),
    ("#escape=\\\n# syntax = {F} bar\n\n# smth\nFROM {B}\n", {}, "{F}", True),
    ("# EScape=\\\n# SYNTAX = {F}\nFROM {B}\n", {}, "{F}", True),  # keys in any case
    ("#syntax={F}\nFROM {B}\n", {}, "{F}", True),
    ("# syntax ={F}\nFROM {B}\n", {}, "{F}", True),
    ("# syntax={F}\n# escape=`\nFROM {B}\n", {}, "{F}", True),
    ("# foo=bar\n# syntax={F}\nFROM {B}\n", {}, "{F}", True),  # 20.10: an unknown key goes on
    (f"# syntax={OTHER}\n# syntax={{F}}\nFROM {{B}}\n", {}, "{F}", True),  # the later one wins
    ("# syntax={F}\r\nFROM {B}\r\n", {}, "{F}", True),  # CRLF lines
    ("# hello\n# syntax={F}\nFROM {B}\n", {}, None, False),  # a comment ends the directives
    ("\n# syntax={F}\nFROM {B}\n", {}, None, False),  # so does a blank line
    ("  # syntax={F}\nFROM {B}\n", {}, None, False),  # and a line not starting with #
    ("FROM {B}\n# syntax={F}\n", {}, None, False),
    ("# syntax=\nFROM {B}\n", {}, None, False),  # no value: not a directive
    ("FROM {B}\n", {"BUILDKIT_SYNTAX": "{F}"}, "{F}", True),  # the build arg
    (f"# syntax={OTHER}\nFROM {{B}}\n", {"BUILDKIT_SYNTAX": " {F} x"}, "{F}", True),  # wins over the line
    ("FROM {B}\n", {"BUILDKIT_SYNTAX": ""}, None, False),
    # read wider than 20.10 (later BuildKits use these): the safe side for a reuse's key
    ("\ufeff# syntax={F}\nFROM {B}\n", {}, "{F}", False),
    ("#!/usr/bin/env build\n# syntax={F}\nFROM {B}\n", {}, "{F}", False),
    ("// syntax={F}\nFROM {B}\n", {}, "{F}", False),
]


def frontend_case(case: tuple, frontend: str, base: str) -> tuple[str, dict[str, str], str | None, bool]:
    dockerfile, args, expected, used = case
    fill = {"F": frontend, "B": base}
    return (dockerfile.format(**fill), {k: v.format(**fill) for k, v in args.items()},
            expected.format(**fill) if expected else None, used)


@pytest.mark.parametrize("case", FRONTEND_CASES, ids=[repr(c[0][:32]) + (" +arg" if c[1] else "") for c in FRONTEND_CASES])
def test_the_frontend_a_dockerfile_names(case):
    dockerfile, args, expected, _ = frontend_case(case, "docker/dockerfile:1.4", "busybox")
    assert frontend_image(dockerfile, args) == expected

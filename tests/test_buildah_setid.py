"""buildah drops the setuid/setgid bits of what a plain COPY takes from the build context;
executors/daemonless/setid.py rewrites those COPYs to read the same folder as a named build
context, which buildah copies with the bits kept. The rewrite is pinned here case by case;
tests/contract/test_fidelity.py checks the built image against `docker build`."""

from __future__ import annotations

import pytest

from executors.daemonless.setid import CONTEXT_NAME, MAX_DOCKERFILE_BYTES, copy_from_context

N = CONTEXT_NAME


@pytest.mark.parametrize("before, after", [
    ("FROM b\nCOPY . /ctx\n", f"FROM b\nCOPY --from={N} . /ctx\n"),
    ("FROM b\n  copy --chown=1:2 a b\n", f"FROM b\n  copy --from={N} --chown=1:2 a b\n"),
    ('FROM b\nCOPY ["a b", "/c"]\r\n', f'FROM b\nCOPY --from={N} ["a b", "/c"]\r\n'),
    ("FROM b\nCOPY \\\n  a \\\n  # a comment inside\n\n  /c\n", f"FROM b\nCOPY --from={N} \\\n  a \\\n  # a comment inside\n\n  /c\n"),
    ("# escape=`\nFROM b\nCOPY `\n  a /c\n", f"# escape=`\nFROM b\nCOPY --from={N} `\n  a /c\n"),
    ("FROM b AS build\nRUN make\nFROM b\nCOPY --from=build /out /out\nCOPY app /app\n",
     f"FROM b AS build\nRUN make\nFROM b\nCOPY --from=build /out /out\nCOPY --from={N} app /app\n"),
    ("FROM b\nCOPY \\\n  --from=build /out /out\n", None),  # a --from on the next line: not from the context
    ("FROM b\nADD a /a\nRUN echo COPY\nONBUILD COPY . /x\n", None),  # no COPY from the context
    ("FROM b\nCOPY <<EOF /x\nhello\nEOF\n", None),  # heredocs: left as they are
    ("# escape=x\nFROM b\nCOPY . /c\n", None),  # an escape buildah would refuse: left alone
])
def test_copy_from_context_rewrite(before, after):
    result = copy_from_context(before)
    assert (result[0] if result else None) == after
    if result:
        assert result[1] == N


def test_a_stage_named_like_the_context_gets_another_name():
    text, name = copy_from_context(f"FROM b AS {N}\nRUN x\nFROM b\nCOPY . /c\n")
    assert name == f"{N}-1" and text.endswith(f"COPY --from={N}-1 . /c\n")


def test_a_huge_dockerfile_is_left_alone():
    assert copy_from_context("FROM b\nCOPY . /c\n" + "#" * MAX_DOCKERFILE_BYTES) is None

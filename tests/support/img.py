"""img in the contract suite: listed so the skip says why. img is not packaged for Debian
(upstream unmaintained), and it cannot pull base images from the plain-HTTP test registry."""

import shutil

from tests.support import ExecutorSupport


def skip_reason() -> str | None:
    if not shutil.which("img"):
        return "img is not installed: no `img` on PATH (not packaged for Debian; upstream unmaintained)"
    return "img cannot pull base images from the plain-HTTP test registry (it needs a TLS registry)"


SUPPORT = ExecutorSupport(name="img", config=lambda env: {"enabled": True}, skip_reason=skip_reason)

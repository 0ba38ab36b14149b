"""What a build is handed: a checked context on disk (a canonical tar and the job's scratch
directory), and the seam the sources make it through."""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from runner.core.cancel import CancelToken
from runner.core.jobs import BuildRequest
from runner.core.log_sink import LogSink

if TYPE_CHECKING:  # the readers and extraction are imported when a context is unpacked, not by
    # what only names BuildContext (executors.base, which loading the settings imports)
    from runner.context.extract import MemberFilter, Placement


@dataclass(frozen=True)
class Unpacked:
    """A context unpacked for a tool that reads a folder (buildah, img)."""

    context: Path  # exactly what `COPY .` sees in `docker build`
    dockerfile: Path  # the Dockerfile, outside `context`
    setid: bool = False  # whether something in `context` has a setuid or setgid bit


@dataclass
class BuildContext:
    """A build context checked by the spool (runner.context.spool): a tar on disk plus a scratch directory."""

    tar_path: Path
    workspace: Path
    dockerfile: str = "Dockerfile"
    size: int = 0
    #: where each member goes when unpacked for a build: the spool's view (runner.context.view.
    #: view_placement: the tar is what `COPY .` sees, but for the Dockerfile and the folders above
    #: it). None: every member is in the context, the Dockerfile also aside.
    place: MemberFilter | None = None
    #: sha256:<hex> of the tar at tar_path (the spool hashes what it writes); None: not known
    digest: str | None = None
    #: sha256:<hex> of its members without their mtimes (runner.context.spool.CanonicalTar): what
    #: a build's reuse key compares; None: not known
    files_digest: str | None = None
    #: the full commit id a git context was checked out at (runner.sources.git)
    commit: str | None = None
    #: the Dockerfile's bytes when the spool kept them (runner.context.spool.MAX_KEPT_DOCKERFILE)
    dockerfile_content: bytes | None = None

    def open(self):
        return self.tar_path.open("rb")

    def extract_to(self, target: Path, cancel: CancelToken | None = None) -> Path:
        """Unpack into `target`, never writing outside it (runner.context.extract: no link the tar
        made is ever followed). `target` and the folders from the workspace root down to it are 0700."""
        from runner.context.extract import extract_tar, make_private
        from runner.context.tarstream import file_chunks

        make_private(self.workspace.parent, target)
        with closing(file_chunks(self.tar_path)) as chunks:
            extract_tar(chunks, target, cancel)
        return target

    def unpack(self, context_dir: Path, aside_dir: Path, cancel: CancelToken | None = None) -> Unpacked:
        """Unpack for a tool that reads a folder: `context_dir` gets exactly what `COPY .` sees in
        `docker build` (the ignore file's patterns applied, so the Dockerfile and ignore file
        Docker always sends are there only if the patterns keep them); `aside_dir` gets what
        the patterns leave out, and always the Dockerfile. Both are private (0700 down from
        the workspace), as in extract_to."""
        from runner.context.extract import Placement, extract_tar, make_private
        from runner.context.tarpolicy import member_parts
        from runner.context.tarstream import file_chunks

        dockerfile = "/".join(member_parts(self.dockerfile))
        place = self.place or _all_in_context(dockerfile, Placement)
        make_private(self.workspace.parent, context_dir)
        make_private(self.workspace.parent, aside_dir)
        with closing(file_chunks(self.tar_path)) as chunks:
            setid = extract_tar(chunks, context_dir, cancel, place, aside_dir)
        return Unpacked(context=context_dir, dockerfile=aside_dir / dockerfile, setid=setid > 0)


def _all_in_context(dockerfile: str, placement: type[Placement]) -> MemberFilter:
    """No ignore file: every member in the context, the Dockerfile also aside."""
    return lambda path, kind: placement.BOTH if path == dockerfile else placement.CONTEXT


class ContextSource(Protocol):
    """Where a job's context comes from (an upload, a git repository): makes the checked
    BuildContext in the job's workspace."""

    def prepare(self, request: BuildRequest, workspace: Path, log: LogSink, cancel: CancelToken) -> BuildContext:
        """The context for `request`, or raise a typed error naming what is wrong with it."""

"""buildah executor: daemonless builds with the buildah binary, driven through `sh`
(seed: "don't run Docker in Docker"). No engine, no socket, no privileged sidecar.

Per job: unpack the context, `buildah build` into the worker's persistent storage
(`--layers` cache), `buildah push --digestfile` the image (by id) to every tag, and confirm
each digest at the registry. The build carries the job id and the runner's namespace as
unused build args (IO_RUNNER_JOB, IO_RUNNER_NAMESPACE), which buildah records in each working
container, so `cleanup(job_id)` finds the job's containers even after the worker was killed
mid-build, and `sweep` finds those of dead jobs without touching another namespace's.

The mode (version, storage driver, isolation) is probed once per executor object, that is
once per worker process.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from executors.base import CheckResult, Executor, ExecutorEnv, IsLive
from executors.daemonless.common import (
    JobFiles,
    auth_failed,
    check_push_logins,
    common_build_flags,
    private_root,
    registries_conf,
    registry_auths,
    secret_arg_env,
    unpack,
    write_build_secrets,
    write_cert_dir,
)
from executors.daemonless.config import BuildahConfig
from executors.daemonless.setid import MAX_DOCKERFILE_BYTES, copy_from_context
from executors.image_index import platform_of, pushed
from executors.push_retry import push_with_retries
from executors.registry_cache import cache_repository, path_component
from executors.tags import push_tags
from runner.context.build_context import BuildContext
from runner.core.cancel import CancelToken
from runner.core.errors import BuildFailed, ExecutorError, InfrastructureError, is_auth_error
from runner.core.executor_metrics import PhaseClock
from runner.core.host_platforms import HostPlatforms, host_platforms
from runner.core.jobs import BuildRequest, ImageRef, PlatformImage, PushedImage
from runner.core.log_sink import LogSink
from runner.core.process import Tool, ToolFailed, ToolOutput, tool_env

RISK = ("builds run as root in buildah's isolation on this host (oci: runc namespaces; chroot: weaker); "
        "no daemon and no socket are exposed to jobs")
INSTALL_HINT = ": install it (apt-get install buildah) or set executors.buildah.binary"
JOB_ARG = "IO_RUNNER_JOB"
NAMESPACE_ARG = "IO_RUNNER_NAMESPACE"
#: the build args we add to mark a build's working containers (never consumed by a Dockerfile)
MARKER_ARGS = (JOB_ARG, NAMESPACE_ARG)
CAP_SYS_ADMIN = 21
MANIFEST_REPO = "localhost/runner-manifest"
#: "STEP 2/3: RUN make", "[2/3] STEP …" in a multi-stage build, "[linux/arm64] STEP …" for one of several platforms
STEP_LINE = re.compile(r"^(?:\[[\w./-]+\] )*STEP (\d+/\d+): (.*)$")
_CACHE_PUSH_FAILED = "failed pushing cache to "
_AT_STEP = re.compile(r'^building at STEP "(.*?)": (.*)$')
_UNUSED_ARGS = re.compile(r"^\[Warning\] one or more build args were not consumed: \[(.*)\]$")
_VERSION = re.compile(r"version (\S+)")
_SOURCE = re.compile(r"docker://(\S+?):? ")
_MARKED = ("[", "STEP ", "Error: ")  # every line BuildOutput looks at starts with one of these


# -- storage and isolation -------------------------------------------------------------------
@dataclass(frozen=True)
class Mode:
    """What this worker's buildah will use, resolved once per executor (probing costs a process)."""

    binary: str
    version: str
    storage_driver: str
    isolation: str
    why: str

    def global_args(self, config: BuildahConfig) -> list[str]:
        return ["--root", str(config.storage_root), "--runroot", str(config.run_root),
                "--storage-driver", self.storage_driver]

    def describe(self) -> str:
        return f"buildah {self.version}, storage {self.storage_driver}, isolation {self.isolation} ({self.why})"

    def isolation_args(self) -> list[str]:
        """--isolation, unless it is what buildah picks itself (oci as root, rootless as non-root;
        BUILDAH_ISOLATION never reaches it: runner.core.process.tool_env)."""
        own = "oci" if os.geteuid() == 0 else "rootless"
        return [] if self.isolation == own else ["--isolation", self.isolation]


def has_cap_sys_admin() -> bool:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def auto_isolation() -> tuple[str, str]:
    """oci as root on a host; chroot where runc cannot make namespaces; rootless as non-root."""
    if os.geteuid() != 0:
        return "rootless", "not running as root"
    if not has_cap_sys_admin():
        return "chroot", "no CAP_SYS_ADMIN, as in an unprivileged container"
    if not (shutil.which("runc") or shutil.which("crun")):
        return "chroot", "no OCI runtime (runc or crun) installed"
    return "oci", "root with CAP_SYS_ADMIN"


def resolve_mode(config: BuildahConfig) -> Mode:
    """Probe buildah: its version, the storage driver and isolation it will use here."""
    tool = Tool(config.binary, install_hint=INSTALL_HINT)
    try:
        match = _VERSION.search(tool.output(["--version"], timeout=30))
    except ToolFailed as exc:
        raise InfrastructureError(f"{config.binary} --version failed: {exc.message}") from None
    version = match[1] if match else "?"
    driver, why_driver = config.storage_driver, "configured"
    if driver in ("auto", "overlay"):
        problem = _overlay_problem(config)
        if problem and driver == "overlay":
            raise InfrastructureError(f"overlay storage is not usable here ({problem}); set executors.buildah.storage_driver "
                                      "to vfs or auto")
        driver, why_driver = ("vfs", f"overlay unusable: {problem}") if problem else ("overlay", "overlay works")
    isolation: str = config.isolation
    why_isolation = "configured"
    if isolation == "auto":
        isolation, why_isolation = auto_isolation()
    return Mode(tool.binary, version, driver, isolation, f"storage: {why_driver}; isolation: {why_isolation}")


def _overlay_problem(config: BuildahConfig) -> str | None:
    """None if buildah can initialise overlay storage at the configured root, else why not."""
    tool = Tool(config.binary, ["--root", str(config.storage_root), "--runroot", str(config.run_root),
                                "--storage-driver", "overlay"])
    try:
        tool.output(["info"], timeout=60)
    except ToolFailed as exc:
        return exc.message.removeprefix("Error: ")
    return None


# -- the argv we run -------------------------------------------------------------------------
@dataclass
class JobPaths:
    context: Path
    dockerfile: Path  # outside `context`
    authfile: Path
    iidfile: Path
    ignorefile: Path  # empty: `context` already holds exactly what `COPY .` sees
    cert_dir: Path | None = None
    secrets: tuple[tuple[str, Path], ...] = ()
    build_context: tuple[str, Path] | None = None  # a named build context (see executors.daemonless.setid)
    manifest: str | None = None  # a multi-platform job's manifest list in the store (--manifest), instead of --iidfile


def build_args(config: BuildahConfig, mode: Mode, job: BuildRequest, paths: JobPaths, namespace: str,
               export_cache: bool = True) -> list[str]:
    """`buildah build` arguments (after the global ones); buildah's defaults are not repeated
    (oci format, its own isolation). No secret appears here: secret build args are named only
    (their values travel in the environment)."""
    args = ["build", "--layers" if config.layers else "--layers=false", "--force-rm", *mode.isolation_args(),
            *(["--format", "docker"] if config.format == "docker" else []),
            "--authfile", str(paths.authfile),
            *(["--manifest", paths.manifest] if paths.manifest else ["--iidfile", str(paths.iidfile)]),
            "-f", str(paths.dockerfile), "--ignorefile", str(paths.ignorefile)]
    if paths.cert_dir:
        args += ["--cert-dir", str(paths.cert_dir)]
    if paths.build_context:
        args += ["--build-context", f"{paths.build_context[0]}={paths.build_context[1]}"]
    if config.keep_images and not paths.manifest:  # a name left in the shared store would serve a later job's FROM
        for ref in job.tags:
            args += ["-t", ref]
    args += common_build_flags(job, paths.secrets, cache_repository(config.cache_repo, job), export_cache)
    args += ["--build-arg", f"{JOB_ARG}={job.id}", "--build-arg", f"{NAMESPACE_ARG}={namespace}"]
    args.append(str(paths.context))
    return args


def push_args(config: BuildahConfig, image_id: str, ref: ImageRef, paths: JobPaths, digestfile: Path) -> list[str]:
    """`buildah push` arguments; the format is the image's own (oci) unless docker is asked for.
    `--retry 0`: retries are ours (executors.push_retry), with backoff, not buildah's 3 × 2 s."""
    args = ["push", "--retry", "0", "--authfile", str(paths.authfile),
            *(["--format", "v2s2"] if config.format == "docker" else []), "--digestfile", str(digestfile)]
    if paths.cert_dir:
        args += ["--cert-dir", str(paths.cert_dir)]
    return [*args, image_id, f"docker://{ref}"]


def manifest_push_args(config: BuildahConfig, manifest: str, ref: ImageRef, paths: JobPaths, digestfile: Path,
                       plain_http: bool) -> list[str]:
    """`buildah manifest push --all`: the list and every platform's image it names, the
    index's digest written to `digestfile` (1.28 has no --retry here: retries are ours anyway).
    Its --tls-verify overrides registries.conf (true unless given), so a plain-HTTP registry
    needs --tls-verify=false here; and a push that fails still exits 0 in 1.28, saying nothing:
    only the digest file tells (BuildahExecutor._pushed)."""
    args = ["manifest", "push", "--all", "--format", "v2s2" if config.format == "docker" else "oci",
            *(["--tls-verify=false"] if plain_http else []),
            "--authfile", str(paths.authfile), "--digestfile", str(digestfile)]
    if paths.cert_dir:
        args += ["--cert-dir", str(paths.cert_dir)]
    return [*args, manifest, f"docker://{ref}"]


def build_then_push(tool_argv: list[str], build: list[str], push: list[str], iidfile: Path | None, marker: str) -> list[str]:
    """`sh -c` arguments running the build and then, if it succeeded, the push of the image it
    built: one process start from Python for both. `marker` (printed between them) tells the
    push's output from the build's; the push's image is read from the build's --iidfile (a
    manifest push, `iidfile` None, names its list itself). Only paths and names are quoted
    into the script; argv never holds a secret."""
    if iidfile is None:
        script = f'"$@" || exit; echo {shlex.quote(marker)}; exec {shlex.join([*tool_argv, *push])}'
    else:
        script = (f'"$@" || exit; echo {shlex.quote(marker)}; iid=$(cat {shlex.quote(str(iidfile))}) || exit; '
                  f'exec {shlex.join([*tool_argv, *push[:-2]])} "${{iid#sha256:}}" {shlex.quote(push[-1])}')
    return ["-c", script, "buildah-job", *tool_argv, *build]


def manifest_name(namespace: str, job_id: str, attempt: str = "build") -> str:
    """A multi-platform job's manifest list in buildah's store: named by the job (and the
    runner's namespace), so the sweep finds it; its tag names the attempt, so an attempt
    never adds its images to a list a crashed one left."""
    return f"{MANIFEST_REPO}/{path_component(namespace)}/{job_id}:{attempt}"


def keep_setid_bits(paths: JobPaths, files: JobFiles, log: LogSink) -> None:
    """The context has setuid/setgid files, whose bits buildah drops on a plain COPY: build from
    a private copy of the Dockerfile whose COPYs read the context as a named build context."""
    try:
        if paths.dockerfile.stat().st_size > MAX_DOCKERFILE_BYTES:
            return
        text = paths.dockerfile.read_bytes().decode("utf-8", "surrogateescape")
    except OSError:
        return  # buildah reports the Dockerfile's problem itself
    rewritten = copy_from_context(text)
    if rewritten is None:
        log.line("[runner] note: buildah drops setuid/setgid bits of files ADDed or COPYed from the build context")
        return
    paths.dockerfile = files.write("Dockerfile", rewritten[0].encode("utf-8", "surrogateescape"))
    paths.build_context = (rewritten[1], paths.context)
    log.line(f"[runner] the context has setuid/setgid files: COPY reads it as build context {rewritten[1]!r}, "
             "so buildah keeps those bits as docker build does")


# -- output ------------------------------------------------------------------------------------
class BuildOutput(ToolOutput):
    """buildah build's output: remembers the current step and the error line, and drops our
    marker build args (MARKER_ARGS) from buildah's "build args were not consumed" warning."""

    MARKED = _MARKED

    def __init__(self, log: LogSink):
        super().__init__(log)
        self.step: tuple[str, str] | None = None
        self.error: str | None = None

    def handle(self, text: str) -> str | None:
        if not text.startswith(_MARKED):
            return text
        if match := _UNUSED_ARGS.match(text):
            names = [n for n in match[1].split() if n not in MARKER_ARGS]
            if not names:
                return None
            text = f"[Warning] one or more build args were not consumed: [{' '.join(names)}]"
        if match := STEP_LINE.match(text):
            self.step = (match[1], match[2])
        elif text.startswith("Error: "):
            self.error = text.removeprefix("Error: ")
        return text

    @property
    def cache_not_written(self) -> bool:
        """buildah (1.28) ends the whole build when a step's --cache-to push fails."""
        return bool(self.error and self.error.startswith(_CACHE_PUSH_FAILED))

    def failure(self, code: int) -> ExecutorError:
        error = self.error or f"buildah build exited with code {code}"
        at_step = _AT_STEP.match(error)
        if is_auth_error(error) and not (at_step and at_step[1].startswith("RUN")):
            source = _SOURCE.search(error)
            return auth_failed(f"while pulling {source[1] if source else 'a base image'}", error)
        if at_step:
            number = f" {self.step[0]}" if self.step and self.step[1] == at_step[1] else ""
            return BuildFailed(f"build failed at step{number} ({at_step[1]}): {at_step[2]}")
        return BuildFailed(f"build failed: {error}")


class BuildThenPush:
    """The output of build_then_push: the build's lines to `build` up to the marker line (which
    only a finished build prints), the push's after it."""

    def __init__(self, build: BuildOutput, push: ToolOutput, marker: str, on_built: Callable[[], None] = lambda: None):
        self.build, self.push, self.marker, self.on_built = build, push, marker, on_built
        self.built = False

    def __call__(self, batch: list[str]) -> None:
        if self.built:
            self.push(batch)
            return
        try:
            cut = batch.index(self.marker)
        except ValueError:
            self.build(batch)
            return
        if cut:
            self.build(batch[:cut])
        self.built = True
        self.on_built()
        if cut + 1 < len(batch):
            self.push(batch[cut + 1:])


class _CacheNotWritten(Exception):
    """The build stopped only because the registry cache refused a step's image."""


def push_failed(ref: ImageRef, output: ToolOutput, code: int) -> ExecutorError:
    error = output.last_error("Error: ") or f"buildah push exited with code {code}"
    if is_auth_error(error):
        return auth_failed(f"pushing {ref}", error)
    return InfrastructureError(f"push of {ref} failed: {error}")


# -- the executor ------------------------------------------------------------------------------
class BuildahExecutor(Executor):
    name = "buildah"
    risk = RISK
    Config = BuildahConfig
    config: BuildahConfig

    def __init__(self, config: BuildahConfig, env: ExecutorEnv):
        super().__init__(config, env)
        self._mode: Mode | None = None
        self._mode_lock = threading.Lock()
        #: jobs whose build exited on its own with success (buildah --force-rm removed its
        #: containers), so cleanup can skip the container scan
        self._clean_exit: set[str] = set()
        #: job id -> its image, not wanted in the store (layers and keep_images off): cleanup removes it
        self._unneeded: dict[str, str] = {}
        #: multi-platform jobs' manifest lists, which cleanup removes (a crashed worker's: the sweep)
        self._lists: dict[str, str] = {}

    def mode(self) -> Mode:
        """What buildah uses on this worker, probed once (a probe costs a process or two)."""
        with self._mode_lock:
            if self._mode is None:
                self._mode = resolve_mode(self.config)
            return self._mode

    def check(self) -> CheckResult:
        try:
            mode = self.mode()
        except InfrastructureError as exc:
            return CheckResult(False, exc.message)
        return CheckResult(True, f"{mode.describe()}; storage root {self.config.storage_root}",
                           {"version": mode.version, "storage_driver": mode.storage_driver, "isolation": mode.isolation,
                            "storage_root": str(self.config.storage_root), "run_root": str(self.config.run_root)})

    def platforms(self) -> HostPlatforms:
        """buildah runs RUN steps on this host: what its binfmt handlers let it run."""
        return host_platforms()

    def tool(self, mode: Mode, env: dict[str, str] | None = None) -> Tool:
        return Tool(mode.binary, mode.global_args(self.config), env, INSTALL_HINT)

    def run(self, job: BuildRequest, context: BuildContext, log: LogSink, cancel: CancelToken) -> list[PushedImage]:
        self.refuse_unbuildable(job)
        mode = self.mode()
        log.line(f"[runner] {mode.describe()}")
        refs = job.image_refs()
        if job.push:
            check_push_logins(self.env.registries, refs, log)
        files = JobFiles(private_root(self.env, self.name, job.id)).create()
        phases = PhaseClock(self.env.metrics, self.name)
        try:
            paths, env = self._prepare(job, context, files, log, cancel)
            tool = self.tool(mode, env)
            if paths.manifest:
                self._lists[job.id] = paths.manifest
            first = refs[0] if job.push else None
            image_id, first_failed = self._build(tool, mode, job, paths, files, first, log, cancel, phases)
            if not self.config.layers and not self.config.keep_images:
                self._unneeded[job.id] = image_id  # removed by cleanup, after the job's record
            if paths.manifest and self.config.keep_images:
                self._name_list(tool, paths.manifest, refs)
            if first is None:
                return self._not_pushed(tool, image_id, paths, refs, log)
            platforms: dict[str, list[PlatformImage]] = {}  # registry -> each platform's manifest there

            def push(ref: ImageRef) -> str:
                failed = first_failed if ref is first else None
                if ref is first and failed is None:  # pushed by the build's own process
                    try:
                        pushed = self._pushed(ref, files.root / "digest", log, bool(paths.manifest))
                        platforms[ref.registry] = pushed.platforms
                        return pushed.digest
                    except InfrastructureError as exc:
                        failed = exc
                pushed = push_with_retries(ref, lambda: self._push(tool, image_id, ref, paths, files, log, cancel),
                                           self.env.registries.config(ref.registry), log, cancel,
                                           lambda: self.env.metrics.push_retried(self.name), failed)
                platforms[ref.registry] = pushed.platforms
                return pushed.digest

            pushed = push_tags(refs, push, self.env.registries, log, cancel, phases)
            return [image.model_copy(update={"platforms": platforms.get(ref.registry, [])})
                    for ref, image in zip(refs, pushed, strict=True)]
        except ToolFailed as exc:
            raise InfrastructureError(f"buildah failed: {exc.message}") from None
        finally:
            files.remove()  # auth file and secrets go at once, whatever happened
            phases.report()

    def _not_pushed(self, tool: Tool, image_id: str, paths: JobPaths, refs: list[ImageRef], log: LogSink) -> list[PushedImage]:
        kept = f"kept as {', '.join(map(str, refs))}" if self.config.keep_images else "not named (keep_images is off)"
        if not paths.manifest:
            log.line(f"[runner] built {image_id[:12]}; push disabled, {kept}")
            return [PushedImage(ref=str(ref), digest=f"sha256:{image_id}") for ref in refs]
        listed = json.loads(tool.output(["manifest", "inspect", paths.manifest]) or "{}").get("manifests") or []
        platforms = [PlatformImage(platform=str(platform), digest=str(entry["digest"]))
                     for entry in listed if isinstance(entry, dict) and (platform := platform_of(entry)) and "digest" in entry]
        log.line(f"[runner] built {len(platforms)} platforms; push disabled (no index without a registry), {kept}")
        return [PushedImage(ref=str(ref), digest="", platforms=platforms) for ref in refs]

    def _prepare(self, job: BuildRequest, context: BuildContext, files: JobFiles, log: LogSink,
                 cancel: CancelToken) -> tuple[JobPaths, dict]:
        unpacked = unpack(context, self.name, cancel)
        paths = JobPaths(
            context=unpacked.context,
            dockerfile=unpacked.dockerfile,
            authfile=files.write("auth.json", json.dumps(registry_auths(self.env.registries, log))),
            iidfile=files.root / "iid",
            ignorefile=files.write("ignorefile", ""),  # buildah would otherwise apply .containerignore/.dockerignore its way
            cert_dir=write_cert_dir(self.env.registries, files),
            secrets=tuple(write_build_secrets(self.job_secrets(job), files, log)),
            manifest=manifest_name(self.env.namespace, job.id, secrets.token_hex(6)) if job.multi_platform else None,
        )
        if unpacked.setid:
            keep_setid_bits(paths, files, log)
        # DOCKER_CONFIG: an empty folder of the job's, or buildah falls back from --authfile to the
        # worker user's own ~/.docker/config.json (containers/image does)
        env = {"TMPDIR": str(files.directory("tmp")), "DOCKER_CONFIG": str(files.directory("docker-config")),
               **secret_arg_env(job)}
        if conf := registries_conf(self.env.registries):
            env["CONTAINERS_REGISTRIES_CONF"] = str(files.write("registries.conf", conf))
        return paths, tool_env(env)

    def _build(self, tool: Tool, mode: Mode, job: BuildRequest, paths: JobPaths, files: JobFiles, first: ImageRef | None,
               log: LogSink, cancel: CancelToken, phases: PhaseClock) -> tuple[str, InfrastructureError | None]:
        """Build; with `first`, push it there from the same process start (build_then_push): the
        marker line ends the build phase and starts the push. Returns the image id and, if that
        push failed in a way a retry may mend, why. A registry cache that cannot be written
        fails no job: the build runs again without writing it (its steps are cached locally by
        then), as BuildKit's executors carry on past a failed cache export."""
        try:
            return self._build_once(tool, mode, job, paths, files, first, log, cancel, phases, export_cache=True)
        except _CacheNotWritten as exc:
            log.line(f"[runner] warning: the registry cache could not be written ({exc}); building again "
                     "without writing it")
            return self._build_once(tool, mode, job, paths, files, first, log, cancel, phases, export_cache=False)

    def _build_once(self, tool: Tool, mode: Mode, job: BuildRequest, paths: JobPaths, files: JobFiles,
                    first: ImageRef | None, log: LogSink, cancel: CancelToken, phases: PhaseClock,
                    export_cache: bool) -> tuple[str, InfrastructureError | None]:
        build = build_args(self.config, mode, job, paths, self.env.namespace, export_cache)
        output = BuildOutput(log)
        phases.switch("build")
        if first is None:
            code = tool.stream(build, output, cancel)
            built = code == 0
        else:
            both = BuildThenPush(output, ToolOutput(log), f"[runner] built {secrets.token_hex(8)}", lambda: phases.switch("push"))
            if paths.manifest:
                push = manifest_push_args(self.config, paths.manifest, first, paths, files.root / "digest",
                                          self.env.registries.config(first.registry).plain_http)
            else:
                push = push_args(self.config, "", first, paths, files.root / "digest")
            script = build_then_push([mode.binary, *mode.global_args(self.config)], build, push,
                                     None if paths.manifest else paths.iidfile, both.marker)
            code = Tool("sh", env=tool.env).stream(script, both, cancel)
            built = both.built
        phases.stop()
        if not built and export_cache and output.cache_not_written and not cancel.is_set():
            raise _CacheNotWritten(output.error)
        if not built:
            raise output.failure(code)
        self._clean_exit.add(job.id)
        try:  # a manifest list is named: its name stands for the image
            image_id = paths.manifest or paths.iidfile.read_text().strip().removeprefix("sha256:")
        except OSError:
            raise InfrastructureError("buildah build succeeded but wrote no image id") from None
        if first is not None and code != 0:
            failed = push_failed(first, both.push, code)
            if not isinstance(failed, InfrastructureError):
                raise failed
            return image_id, failed
        return image_id, None

    def _push(self, tool: Tool, image_id: str, ref: ImageRef, paths: JobPaths, files: JobFiles,
              log: LogSink, cancel: CancelToken) -> PushedImage:
        digestfile = files.root / "digest"
        digestfile.unlink(missing_ok=True)
        output = ToolOutput(log)
        args = (manifest_push_args(self.config, paths.manifest, ref, paths, digestfile,
                                   self.env.registries.config(ref.registry).plain_http) if paths.manifest
                else push_args(self.config, image_id, ref, paths, digestfile))
        code = tool.stream(args, output, cancel)
        if code != 0:
            raise push_failed(ref, output, code)
        return self._pushed(ref, digestfile, log, bool(paths.manifest))

    def _pushed(self, ref: ImageRef, digestfile: Path, log: LogSink, index: bool = False) -> PushedImage:
        """A finished push: the digest buildah wrote, confirmed at the registry (an index: with
        each platform's manifest digest, as the registry lists them)."""
        try:
            digest = digestfile.read_text().strip()
        except OSError:
            digest = ""
        if not digest:
            raise InfrastructureError(f"buildah pushed {ref} but wrote no digest" + (
                " (buildah 1.28's manifest push exits 0 when it fails, without a word: the registry may be unreachable "
                "or refuse the push)" if index else ""))
        self.env.registries.confirm_digest(ref, digest)
        return pushed(self.env.registries, ref, digest, index, log)

    def _name_list(self, tool: Tool, manifest: str, refs: list[ImageRef]) -> None:
        """keep_images: the job's tags name its manifest list in the store."""
        for ref in refs:
            tool.output(["tag", manifest, str(ref)])

    @staticmethod
    def _remove_list(tool: Tool, manifest: str) -> None:
        try:
            tool.output(["manifest", "rm", manifest])
        except ToolFailed:
            pass  # not there

    @staticmethod
    def _list_images(tool: Tool, manifest: str) -> list[str]:
        """The ids of the images a manifest list in the store names."""
        try:
            listed = json.loads(tool.output(["manifest", "inspect", manifest]) or "{}").get("manifests") or []
            images = json.loads(tool.output(["images", "--json"]) or "[]") or []
        except (ToolFailed, ValueError, AttributeError):
            return []
        digests = {entry.get("digest") for entry in listed if isinstance(entry, dict)}
        return [image["id"] for image in images if isinstance(image, dict) and image.get("digest") in digests]

    @staticmethod
    def _remove_image(tool: Tool, image_id: str) -> None:
        try:
            tool.output(["rmi", image_id])
        except ToolFailed:
            pass  # still used (another job's tag, a container): it stays

    # -- cleanup ---------------------------------------------------------------------------------
    def cleanup(self, job_id: str) -> None:
        """Remove the job's working containers (found by their IO_RUNNER_JOB build arg), its
        image when the store should not keep it (layers and keep_images off), and its private
        files. Its image is never named locally, unless keep_images."""
        try:
            if image_id := self._unneeded.pop(job_id, None):
                tool = self.tool(self.mode())
                for image in self._list_images(tool, image_id) if image_id.startswith(MANIFEST_REPO) else [image_id]:
                    self._remove_image(tool, image)
            if manifest := self._lists.pop(job_id, None):  # its name only: with keep_images the job's tags still name it
                self._remove_list(self.tool(self.mode()), manifest)
            if job_id in self._clean_exit:
                self._clean_exit.discard(job_id)
            else:
                self.kill_orphaned_runs(job_id)
                mode = self.mode()
                tool = self.tool(mode)
                self._remove(tool, self.containers_by_job(tool, mode).get(job_id, []))
        except (InfrastructureError, ToolFailed, ValueError):
            pass
        finally:
            JobFiles(private_root(self.env, self.name, job_id)).remove()

    def sweep(self, is_live: IsLive) -> list[str]:
        """What jobs of this namespace that are not live left (their worker died mid-build):
        RUN steps still running, working containers, private files. Containers another
        namespace made in the same storage are not ours to judge, and stay."""
        try:
            mode = self.mode()
            tool = self.tool(mode)
            found = self.containers_by_job(tool, mode, namespace=self.env.namespace)
            lists = self.lists_by_job(tool)
        except (InfrastructureError, ToolFailed, ValueError):
            return []
        dead = sorted(job_id for job_id in {*found, *lists} if not is_live(job_id))
        for job_id in dead:
            self.kill_orphaned_runs(job_id)
            self._remove(tool, found.get(job_id, []))
            for manifest in lists.get(job_id, []):
                self._remove_list(tool, manifest)
            JobFiles(private_root(self.env, self.name, job_id)).remove()
        return dead

    def lists_by_job(self, tool: Tool) -> dict[str, list[str]]:
        """The manifest lists of this namespace's multi-platform jobs in the store, by job."""
        prefix = manifest_name(self.env.namespace, "").rsplit("/", 1)[0] + "/"
        found: dict[str, list[str]] = {}
        for image in json.loads(tool.output(["images", "--json"]) or "[]") or []:
            for name in image.get("names") or [] if isinstance(image, dict) else []:
                if name.startswith(prefix):
                    found.setdefault(name[len(prefix):].rsplit(":", 1)[0], []).append(name)
        return found

    @staticmethod
    def _remove(tool: Tool, containers: list[str]) -> None:
        for container in containers:
            try:
                tool.output(["rm", container])
            except ToolFailed:
                pass

    def kill_orphaned_runs(self, job_id: str) -> None:
        """Kill RUN steps that outlived a SIGKILLed buildah: with oci isolation runc keeps the
        step running on its own; its bundle lies in the job's TMPDIR, which names the job."""
        try:
            runc = Tool("runc")
            listed = json.loads(runc.output(["list", "--format", "json"]) or "null") or []
        except (InfrastructureError, ToolFailed, ValueError):
            return
        private = f"{private_root(self.env, self.name, job_id)}/"
        for container in listed:
            if str(container.get("bundle", "")).startswith(private):
                for args in (["kill", container["id"], "KILL"], ["delete", "--force", container["id"]]):
                    try:
                        runc.output(args)
                    except ToolFailed:
                        pass

    def containers_by_job(self, tool: Tool, mode: Mode, namespace: str | None = None) -> dict[str, list[str]]:
        """Working containers buildah holds, by the job that made them (read from the state
        buildah keeps per container: <root>/<driver>-containers/<id>/userdata/buildah.json);
        with `namespace`, only those a build of that namespace made."""
        found: dict[str, list[str]] = {}
        for entry in json.loads(tool.output(["containers", "--json"]) or "[]") or []:
            state = self.config.storage_root / f"{mode.storage_driver}-containers" / entry["id"] / "userdata" / "buildah.json"
            try:
                args = json.loads(state.read_text()).get("Args") or {}
            except (OSError, ValueError):
                continue
            job = args.get(JOB_ARG)
            if job and (namespace is None or args.get(NAMESPACE_ARG) == namespace):
                found.setdefault(job, []).append(entry["id"])
        return found



"""What signing and provenance add to a job, against the push they follow (same run, same
registry): the loopback htpasswd registry of scripts/services.sh, a real P-256 key.

Each round copies an image into a repository of its own with `skopeo copy` (the baseline: a
push of that image, registry to registry, its layers mounted or sent) and then runs what a job
runs after its push: `Attester.attest` (per pushed digest: the SLSA statement, its DSSE
envelope signed, the `.att` tag; the simple-signing payload signed, the `.sig` tag; each tag's
layers and manifest PUT, read back first to add to what is there), and before its build
`compute_inputs` (the Dockerfile's FROM resolved to the digest the registry holds). Rows:

- one image (one digest), signed and unsigned (no key: the `.att` only);
- a two-platform image (`skopeo copy --all` of the index scripts/services.sh made): three digests,
  the index and each platform's manifest.

The registry checks htpasswd basic auth (bcrypt) on every request, so a tag's 8 requests
dominate; the line under the table gives one request's time. A fresh repository each round,
so every tag is written, never found already there. The fleet-wide turn a worker takes per
digest (a Redis lock) is left out; it is one Redis round trip.

    .venv/bin/python bench/bench_signing.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import SecretStr  # noqa: E402

from bench.common import BASE, PASSWORD, REGISTRY, USER, load_line  # noqa: E402
from runner.context.build_context import BuildContext  # noqa: E402
from runner.core.jobs import BuildRequest, PlatformImage, PushedImage  # noqa: E402
from runner.core.registry_client import Registries  # noqa: E402
from runner.core.registry_config import RegistryConfig  # noqa: E402
from runner.supply.attester import Attester  # noqa: E402
from runner.supply.inputs import compute_inputs  # noqa: E402
from runner.supply.keys import KeyHolder, generate  # noqa: E402
from runner.supply.provenance import RunDetails  # noqa: E402
from tests.support import ListLog  # noqa: E402

MULTI = BASE.replace("/base/busybox:1", "/base/busybox-multi:1")
CREDS = f"{USER}:{PASSWORD}"


def skopeo_copy(source: str, target: str, every: bool) -> None:
    subprocess.run(["skopeo", "copy", "-q", *(["--all"] if every else []), "--src-creds", CREDS, "--dest-creds", CREDS,
                    "--src-tls-verify=false", "--dest-tls-verify=false", f"docker://{source}", f"docker://{target}"],
                   check=True, capture_output=True, timeout=300)


def raw_manifest(image: str) -> bytes:
    return subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", CREDS, f"docker://{image}"],
                          check=True, capture_output=True, timeout=60).stdout


def pushed(image: str) -> PushedImage:
    """The record's view of what `image` holds now: its digest, and an index's platforms."""
    raw = raw_manifest(image)
    document = json.loads(raw)
    platforms = [PlatformImage(platform=f"{m['platform']['os']}/{m['platform']['architecture']}", digest=m["digest"])
                 for m in document.get("manifests", [])]
    return PushedImage(ref=image, digest="sha256:" + hashlib.sha256(raw).hexdigest(), platforms=platforms)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    registries = Registries([RegistryConfig(host=REGISTRY, username=USER, password=SecretStr(PASSWORD))])
    work = Path(tempfile.mkdtemp(prefix="bench-signing-"))
    try:
        measure(args.rounds, registries, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(rounds: int, registries: Registries, work: Path) -> None:
    generate(work / "cosign", None)
    signed = Attester(registries, KeyHolder(work / "cosign.key"), True, "urn:ci-build-runner:builder")
    unsigned = Attester(registries, None, False, "urn:ci-build-runner:builder")
    run = RunDetails("urn:ci-build-runner:builder", "bench", "bench", "bench", datetime.now(UTC), datetime.now(UTC))
    times: dict[str, list[float]] = {}
    digests: dict[str, int] = {}
    cases = [("one image, signed", BASE, False, signed), ("one image, unsigned", BASE, False, unsigned),
             ("two platforms, signed", MULTI, True, signed)]
    run_id = uuid.uuid4().hex[:8]
    for round_ in range(rounds):
        for name, source, every, attester in cases:
            target = f"{REGISTRY}/bench-signing/{run_id}-{round_}-{len(times.get(name, []))}-{name[:3]}:1".replace(" ", "")
            copy = timed(lambda source=source, target=target, every=every: skopeo_copy(source, target, every))
            image = pushed(target)
            request = BuildRequest(tags=[target], platforms=[p.platform for p in image.platforms])
            context = BuildContext(tar_path=work / "unused.tar", workspace=work, dockerfile="Dockerfile",
                                   dockerfile_content=f"FROM {source}\nRUN true\n".encode(), digest="sha256:" + "0" * 64)
            log = ListLog()
            inputs_took = timed(lambda request=request, log=log, context=context: compute_inputs(request, context, "buildah", "auto",
                                                                                registries, log))
            inputs = compute_inputs(request, context, "buildah", "auto", registries, log)
            attestation = None

            def attest(attester=attester, image=image, inputs=inputs, log=log) -> None:
                nonlocal attestation
                attestation = attester.attest([image], inputs, run, log)

            attest_took = timed(attest)
            assert attestation is not None and len(attestation.images) == 1 + len(image.platforms)
            assert attestation.signed == (attester is signed), attestation.unsigned_reason
            digests[name] = len(attestation.images)
            times.setdefault(name, []).append(copy)
            times.setdefault(f"{name}: inputs", []).append(inputs_took)
            times.setdefault(f"{name}: attest", []).append(attest_took)

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:7.1f} ms ({min(values) * 1000:.0f}–{max(values) * 1000:.0f})"

    print(f"signing and provenance vs the push, {rounds} rounds each, median (min–max)\n")
    print(f"| {'case':<24} | digests | {'skopeo copy (baseline)':<26} | {'inputs (FROM lookup)':<26} | "
          f"{'attest + sign, whole':<26} | {'per digest':<10} | vs copy |")
    print(f"|{'-' * 26}|---------|{'-' * 28}|{'-' * 28}|{'-' * 28}|{'-' * 12}|---------|")
    for name, *_ in cases:
        copy, inputs_, attest_ = times[name], times[f"{name}: inputs"], times[f"{name}: attest"]
        per = statistics.median(attest_) / digests[name]
        ratio = statistics.median(attest_) / statistics.median(copy)
        print(f"| {name:<24} | {digests[name]:>7} | {ms(copy):<26} | {ms(inputs_):<26} | {ms(attest_):<26} | "
              f"{per * 1000:7.1f} ms | {ratio:6.2f}× |")
    client = registries.client(REGISTRY)
    trips = [timed(lambda: client.head_manifest("base/busybox", "1")) for _ in range(20)]
    print(f"\none registry request (HEAD of a manifest, basic auth checked by the registry's htpasswd each time): "
          f"median {statistics.median(trips) * 1000:.1f} ms; writing one .sig or .att tag takes 8 (read the tag, "
          "each blob checked and uploaded, the manifest put, read back)")
    print(load_line())


if __name__ == "__main__":
    main()

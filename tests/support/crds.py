"""Custom resources checked offline against their real CustomResourceDefinitions.

tests/fixtures/crds holds the CRDs of KEDA (ScaledObject, ScaledJob, TriggerAuthentication), of the
Prometheus Operator (PodMonitor, ServiceMonitor, PrometheusRule), of Sigstore's
policy-controller (ClusterImagePolicy) and Kyverno (ClusterPolicy, v1), each trimmed by `trim`
(its header names the upstream file, tag, commit and sha256). `validate` checks a manifest
against its kind's openAPIV3Schema the way an API server with strict field validation does
(`kubectl apply` since Kubernetes 1.27): the schema's types, enums, bounds and required
fields, and no field the schema does not know (unless it preserves unknown fields).

Regenerate a fixture from an upstream CRD file (VERSIONS, e.g. v1: keep only those, and no
status schema, for a CRD too big to keep whole):
    python -m tests.support.crds UPSTREAM.yaml "github.com/OWNER/REPO at TAG (commit SHA), file PATH" [VERSIONS] > FIXTURE
"""

from __future__ import annotations

import copy
import hashlib
import sys
from functools import cache
from pathlib import Path

import jsonschema
import yaml

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "crds"


def trim(crd: dict, versions: list[str] | None = None, without_status: bool = False) -> dict:
    """The CRD without what never validates anything: descriptions, annotations, printer columns;
    and, for a CRD too big to keep whole (Kyverno's ClusterPolicy: 1.4 MB), only the `versions`
    named and, `without_status`, no schema of `status` (what an applied manifest's status says
    is ignored by the API server when the CRD has a status subresource)."""

    def strip(node, field_names: bool = False):
        if isinstance(node, dict):
            if field_names:  # keys are field names: a field may well be called "description"
                return {name: strip(sub) for name, sub in node.items()}
            return {key: strip(value, key in ("properties", "patternProperties", "definitions")) for key, value in node.items()
                    if not (key == "description" and isinstance(value, str))}
        if isinstance(node, list):
            return [strip(item) for item in node]
        return node

    crd = copy.deepcopy(crd)
    crd.get("metadata", {}).pop("annotations", None)
    if versions is not None:
        crd["spec"]["versions"] = [v for v in crd["spec"]["versions"] if v["name"] in versions]
    for version in crd["spec"]["versions"]:
        version.pop("additionalPrinterColumns", None)
        if without_status and "status" in version.get("subresources", {}):
            version["schema"]["openAPIV3Schema"].get("properties", {}).pop("status", None)
    return strip(crd)


def strict(schema: dict) -> dict:
    """The schema with unknown fields refused wherever it lists its fields (Kubernetes prunes
    or, with strict field validation, refuses them: either way a misspelt field does nothing)."""
    if isinstance(schema, dict):
        schema = {key: strict(value) if key not in ("enum", "required", "default", "example") else value
                  for key, value in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@cache
def crds() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> the strict openAPIV3Schema of every fixture CRD's served versions."""
    schemas = {}
    for path in sorted(FIXTURES.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            if version.get("served", True):
                api_version = f"{crd['spec']['group']}/{version['name']}"
                root = copy.deepcopy(version["schema"]["openAPIV3Schema"])
                # the API server takes these at the root whether the schema lists them or not
                # (policy-controller's does not)
                root["properties"] = {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                      "metadata": {"type": "object"}, **root.get("properties", {})}
                schemas[(api_version, crd["spec"]["names"]["kind"])] = strict(root)
    return schemas


def known(doc: dict) -> bool:
    return (doc.get("apiVersion"), doc.get("kind")) in crds()


def validate(doc: dict) -> list[str]:
    """What the kind's CRD refuses in `doc`, one line per error ([] when it is valid)."""
    schema = crds().get((doc.get("apiVersion"), doc.get("kind")))
    if schema is None:
        return [f"no CRD in {FIXTURES} for {doc.get('apiVersion')} {doc.get('kind')}"]
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'.'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
            for error in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


if __name__ == "__main__":
    upstream, source = Path(sys.argv[1]), sys.argv[2]
    versions = sys.argv[3].split(",") if len(sys.argv) > 3 else None  # e.g. "v1": only these versions
    raw = upstream.read_bytes()
    also = (f"; only version(s) {', '.join(versions)}, without the status schema" if versions else "")
    sys.stdout.write(f"# {upstream.name}: the CustomResourceDefinition from {source},\n# sha256 {hashlib.sha256(raw).hexdigest()}. "
                     f"Trimmed by tests/support/crds.py trim(): descriptions, annotations and\n# printer columns removed{also}; "
                     "the schema's validation keywords are untouched.\n")
    sys.stdout.write(yaml.safe_dump(trim(yaml.safe_load(raw), versions, versions is not None), sort_keys=False, width=120))

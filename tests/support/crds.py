"""Custom resources checked offline against their real CustomResourceDefinitions.

tests/fixtures/crds holds the CRDs of KEDA (ScaledObject, ScaledJob, TriggerAuthentication) and of the
Prometheus Operator (PodMonitor, ServiceMonitor, PrometheusRule), each trimmed by `trim`
(its header names the upstream file, tag, commit and sha256). `validate` checks a manifest
against its kind's openAPIV3Schema the way an API server with strict field validation does
(`kubectl apply` since Kubernetes 1.27): the schema's types, enums, bounds and required
fields, and no field the schema does not know (unless it preserves unknown fields).

Regenerate a fixture from an upstream CRD file:
    python -m tests.support.crds UPSTREAM.yaml "github.com/OWNER/REPO at TAG (commit SHA), file PATH" > FIXTURE
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


def trim(crd: dict) -> dict:
    """The CRD without what never validates anything: descriptions, annotations, printer columns."""

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
    for version in crd["spec"]["versions"]:
        version.pop("additionalPrinterColumns", None)
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
                schemas[(api_version, crd["spec"]["names"]["kind"])] = strict(version["schema"]["openAPIV3Schema"])
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
    raw = upstream.read_bytes()
    sys.stdout.write(f"# {upstream.name}: the CustomResourceDefinition from {source},\n# sha256 {hashlib.sha256(raw).hexdigest()}. "
                     "Trimmed by tests/support/crds.py trim(): descriptions, annotations and\n# printer columns removed; "
                     "the schema's validation keywords are untouched.\n")
    sys.stdout.write(yaml.safe_dump(trim(yaml.safe_load(raw)), sort_keys=False, width=120))

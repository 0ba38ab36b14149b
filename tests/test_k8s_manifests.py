"""deploy/k8s, checked offline (no cluster can run here).

Every rendered manifest (the base and each overlay) passes kubernetes-validate's strict
schemas for the oldest Kubernetes the manifests need and the newest it bundles. KEDA's
kinds have no bundled schema, so their fields are asserted here, against the settings the
pods really get: the ConfigMap's runner.yml plus the container's RUNNER_* env, loaded by
the project's own Settings. A queue renamed in runner.yml, a port or grace period changed
on one side only, a secret file nobody mounts: each fails here, not in production.

Overlays are kustomize patches, rendered here by the small subset of kustomize that
deploy/k8s uses (resources, namespace, images, configMapGenerator, patches by kind and
name); where kubectl is installed its own `kubectl kustomize` is compared with it.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from runner.config.settings import Settings, load_settings
from runner.store.jobstore import JobStore
from tests.support import crds

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
MONITORING = ROOT / "deploy" / "monitoring"
RENDERINGS = ["base", *sorted(f"overlays/{p.name}" for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())]
#: appArmorProfile (1.30) and native sidecars (1.29) are the newest fields used
OLDEST_KUBERNETES = "1.30.0"
KUBERNETES_VERSIONS = [OLDEST_KUBERNETES, kubernetes_validate.latest_version()]
KEDA_KINDS = {"ScaledObject", "ScaledJob", "TriggerAuthentication"}
#: the base is namespace-agnostic but its KEDA Redis address has to name one
BASE_NAMESPACE = "runner"
#: seconds a worker needs after its drain grace (Settings.shutdown_grace) to requeue what still runs and exit
REQUEUE_MARGIN = 10
WORKER = {"app.kubernetes.io/name": "ci-build-runner", "app.kubernetes.io/component": "worker"}


# -- a kustomize subset ----------------------------------------------------------------------
BUILTIN_API_VERSIONS = {"v1", "apps/v1", "policy/v1", "networking.k8s.io/v1"}
#: strategic-merge keys of the pod-spec lists our patches touch; other lists are replaced
MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name", "env": "name", "volumeMounts": "mountPath"}
CLUSTER_SCOPED = {"Namespace"}


def load_docs(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def merge(target: dict, patch: dict, strategic: bool) -> None:
    """Strategic merge (built-in kinds: pod-spec lists merged by key) or JSON merge patch
    (custom resources: lists replaced); null deletes, as in kustomize."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value, strategic)
        elif strategic and key in MERGE_KEYS and isinstance(value, list) and isinstance(target.get(key), list):
            by_key = MERGE_KEYS[key]
            patched = []  # kustomize's order: the patch's items first, then the others
            for item in value:
                match = next((t for t in target[key] if t.get(by_key) == item.get(by_key)), None)
                if match is None:
                    patched.append(copy.deepcopy(item))
                else:
                    merge(match, item, strategic)
                    patched.append(match)
            target[key] = patched + [t for t in target[key] if all(t is not p for p in patched)]
        else:
            target[key] = copy.deepcopy(value)


def pod_specs(docs: list[dict]) -> Iterator[dict]:
    """Every pod template: of Deployments and StatefulSets, and of KEDA's ScaledJob (whose
    image and ConfigMap names kustomize rewrites only where the overlay's `configurations`
    tell it to: the comparison with `kubectl kustomize` below checks that they do)."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            yield doc["spec"]["template"]["spec"]
        elif doc["kind"] == "ScaledJob":
            yield doc["spec"]["jobTargetRef"]["template"]["spec"]


def all_containers(pod: dict) -> list[dict]:
    return pod.get("initContainers", []) + pod["containers"]


def split_image(image: str) -> tuple[str, str | None]:
    name, _, tag = image.rpartition(":")
    return (name, tag) if name and "/" not in tag else (image, None)


def build(directory: Path) -> tuple[list[dict], set[str]]:
    """One kustomization: its resources, then generators, patches, namespace, images (the
    order kustomize applies them in). Returns the docs and the generated ConfigMaps' names."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[dict] = []
    generated: set[str] = set()
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            sub_docs, sub_generated = build(path)
            docs += sub_docs
            generated |= sub_generated
        else:
            docs += load_docs(path.read_text())
    for generator in kustomization.get("configMapGenerator", []):
        data = {}
        for item in generator["files"]:
            key, _, file = item.rpartition("=")
            data[key or Path(file).name] = (directory / file).read_text()
        existing = next((d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == generator["name"]), None)
        behavior = generator.get("behavior", "create")
        if behavior == "create":
            assert existing is None, f"{directory}: ConfigMap {generator['name']} generated twice"
            metadata = {"name": generator["name"], **({"labels": labels} if (labels := generator.get("options", {}).get("labels")) else {})}
            docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data})
            generated.add(generator["name"])
        else:
            assert existing is not None, f"{directory}: nothing to {behavior} for ConfigMap {generator['name']}"
            existing["data"] = data if behavior == "replace" else {**existing["data"], **data}
    for entry in kustomization.get("patches", []):
        for patch in load_docs((directory / entry["path"]).read_text()):
            targets = [d for d in docs if d["kind"] == patch["kind"] and d["metadata"]["name"] == patch["metadata"]["name"]]
            assert len(targets) == 1, f"{directory / entry['path']}: patch matches {len(targets)} resources"
            if patch.get("$patch") == "delete":  # the resource goes
                docs.remove(targets[0])
            else:
                merge(targets[0], patch, strategic=patch["apiVersion"] in BUILTIN_API_VERSIONS)
    if namespace := kustomization.get("namespace"):
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = namespace
    for image in kustomization.get("images", []):
        for pod in pod_specs(docs):
            for container in all_containers(pod):
                name, tag = split_image(container["image"])
                if name == image["name"]:
                    tag = image.get("newTag", tag)
                    container["image"] = image.get("newName", name) + (f":{tag}" if tag else "")
    return docs, generated


def render(directory: Path) -> list[dict]:
    """`kubectl kustomize DIR`: generated ConfigMaps get a content hash suffix and every pod
    reference to them follows (so a config change rolls the pods)."""
    docs, generated = build(directory)
    renamed = {}
    for doc in docs:
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] in generated:
            digest = hashlib.sha256(json.dumps(doc["data"], sort_keys=True).encode()).hexdigest()[:10]
            renamed[doc["metadata"]["name"]] = doc["metadata"]["name"] = f"{doc['metadata']['name']}-{digest}"
    for pod in pod_specs(docs):
        for volume in pod.get("volumes", []):
            if "configMap" in volume and volume["configMap"]["name"] in renamed:
                volume["configMap"]["name"] = renamed[volume["configMap"]["name"]]
    return docs


# -- reading a rendering ---------------------------------------------------------------------
class Install:
    """A rendered kustomization and questions about it."""

    def __init__(self, name: str):
        self.name = name
        self.docs = render(K8S / name)
        self.namespace = yaml.safe_load((K8S / name / "kustomization.yaml").read_text()).get("namespace")

    def has(self, kind: str) -> bool:
        return any(d["kind"] == kind for d in self.docs)

    def one(self, kind: str, name: str | None = None) -> dict:
        found = [d for d in self.docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
        assert len(found) == 1, f"{self.name}: {len(found)} {kind} {name or ''}"
        return found[0]

    def all(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def workload(self, component: str) -> dict:
        found = [d for d in self.docs if d["kind"] in ("Deployment", "StatefulSet")
                 and d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == component]
        assert len(found) == 1, f"{self.name}: {len(found)} workloads for {component}"
        return found[0]

    def pod(self, component: str) -> dict:
        return self.workload(component)["spec"]["template"]["spec"]

    def container(self, component: str) -> dict:
        """The main container of a component's pod, named after the component."""
        return next(c for c in self.pod(component)["containers"] if c["name"] == component)

    def service_for(self, component: str) -> dict:
        labels = self.pod_labels(component)
        found = [s for s in self.all("Service") if s["spec"].get("clusterIP") != "None" and selects(s["spec"]["selector"], labels)]
        assert len(found) == 1, f"{self.name}: {len(found)} Services for {component}"
        return found[0]

    def pod_labels(self, component: str) -> dict:
        return self.workload(component)["spec"]["template"]["metadata"]["labels"]

    def config_text(self, container: dict, component: str) -> str:
        """runner.yml as the container sees it at RUNNER_CONFIG: the ConfigMap volume mounted there."""
        path = env_value(container, "RUNNER_CONFIG")
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == path)
        volume = next(v for v in self.pod(component)["volumes"] if v["name"] == mount["name"])
        config_map = self.one("ConfigMap", volume["configMap"]["name"])
        return config_map["data"][mount["subPath"]]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def env_value(container: dict, name: str) -> str:
    entry = next((e for e in container.get("env", []) if e["name"] == name), None)
    assert entry is not None and "value" in entry, f"container {container['name']} has no plain env {name}"
    return entry["value"]


def port_number(container: dict, port: int | str) -> int:
    """A probe's or Service's port, named or numbered, as the container's port number."""
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


def under(path: Path, mounts: list[dict], writable: bool = False) -> bool:
    return any(path.is_relative_to(m["mountPath"]) and not (writable and m.get("readOnly")) for m in mounts)


@pytest.fixture(scope="module", params=RENDERINGS)
def install(request) -> Install:
    return Install(request.param)


#: renderings whose workers a KEDA ScaledObject scales (a Deployment), and those with a pod per build (a ScaledJob)
FLEET_RENDERINGS = [r for r in RENDERINGS if Install(r).has("ScaledObject")]
JOB_RENDERINGS = [r for r in RENDERINGS if Install(r).has("ScaledJob")]


@pytest.fixture(scope="module", params=FLEET_RENDERINGS)
def fleet_install(request) -> Install:
    return Install(request.param)


@pytest.fixture(scope="module", params=JOB_RENDERINGS)
def job_install(request) -> Install:
    return Install(request.param)


def worker_pods(install: Install) -> list[dict]:
    """The pod templates of the workers: the Deployment's, and the ScaledJob's where there is one."""
    return [install.pod("worker"), *[d["spec"]["jobTargetRef"]["template"]["spec"] for d in install.all("ScaledJob")]]


def test_every_rendering_scales_its_workers_one_way_or_the_other():
    assert set(FLEET_RENDERINGS) | set(JOB_RENDERINGS) == set(RENDERINGS) and not set(FLEET_RENDERINGS) & set(JOB_RENDERINGS)
    assert JOB_RENDERINGS == ["overlays/pod-per-job"]


@pytest.fixture
def settings_in(tmp_path, monkeypatch):
    """The settings a container of a rendering loads: its runner.yml and its RUNNER_* env."""

    def load(install: Install, component: str) -> Settings:
        container = install.container(component)
        config = tmp_path / f"{component}-runner.yml"
        config.write_text(install.config_text(container, component))
        with monkeypatch.context() as env:
            for key in [k for k in os.environ if k.startswith("RUNNER_")]:
                env.delenv(key)
            for entry in container.get("env", []):
                if entry["name"].startswith("RUNNER_") and "value" in entry:
                    env.setenv(entry["name"], entry["value"])
            env.setenv("RUNNER_CONFIG", str(config))
            return load_settings()

    return load


@pytest.fixture
def settings_of(install, settings_in):
    """The settings a container of `install` loads."""
    return lambda component: settings_in(install, component)


# -- schemas ---------------------------------------------------------------------------------
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_passes_strict_validation(install, version):
    kinds = set()
    for doc in install.docs:
        kinds.add(doc["kind"])
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # no bundled schema: the KEDA tests below check these
        kubernetes_validate.validate(doc, version, strict=True)
    assert kinds >= {"ConfigMap", "Service", "StatefulSet", "Deployment", "PodDisruptionBudget", "NetworkPolicy", "TriggerAuthentication"}
    assert kinds & {"ScaledObject", "ScaledJob"}
    assert {d["kind"] for d in install.docs if d["apiVersion"].startswith("keda.sh/")} <= KEDA_KINDS


def test_custom_resources_pass_their_own_crds(install):
    """KEDA's objects against KEDA's CRD (tests/fixtures/crds, from its repository): types,
    enums, required fields, and no field KEDA does not know."""
    custom = [d for d in install.docs if d["apiVersion"].startswith("keda.sh/")]
    assert "TriggerAuthentication" in {d["kind"] for d in custom} and {d["kind"] for d in custom} <= KEDA_KINDS
    for doc in custom:
        assert crds.validate(doc) == [], f"{doc['kind']} {doc['metadata']['name']}"


def test_crd_validation_catches_a_misspelt_field_and_a_wrong_value():
    scaled = copy.deepcopy(Install("base").one("ScaledObject"))
    assert crds.validate(scaled) == []
    misspelt = copy.deepcopy(scaled)
    misspelt["spec"]["advanced"]["scalingModifiers"]["formla"] = misspelt["spec"]["advanced"]["scalingModifiers"].pop("formula")
    assert any("formla" in error for error in crds.validate(misspelt))
    wrong = copy.deepcopy(scaled)
    wrong["spec"]["advanced"]["scalingModifiers"]["metricType"] = "Utilisation"
    assert any("advanced.scalingModifiers.metricType" in error for error in crds.validate(wrong))
    del wrong["spec"]["fallback"]["replicas"]
    assert any("'replicas' is a required property" in error for error in crds.validate(wrong))


def test_strict_validation_catches_a_misspelt_field():
    worker = copy.deepcopy(Install("base").workload("worker"))
    kubernetes_validate.validate(worker, OLDEST_KUBERNETES, strict=True)
    worker["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, OLDEST_KUBERNETES, strict=True)


def test_the_cli_validates_a_rendering(tmp_path):
    """The same check through `kubernetes-validate --strict`, as an operator would run it."""
    rendered = tmp_path / "example.yaml"
    rendered.write_text(yaml.safe_dump_all(Install("overlays/example").docs))
    command = [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", str(rendered)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout


def test_secret_templates_validate_and_hold_every_referenced_key(install):
    templates = load_docs((K8S / "base" / "secrets.example.yaml").read_text())
    for doc in templates:
        kubernetes_validate.validate(doc, OLDEST_KUBERNETES, strict=True)
    keys = {(d["metadata"]["name"], key) for d in templates for key in d["stringData"]}
    names = {name for name, _ in keys}
    for pod in pod_specs(install.docs):
        for container in all_containers(pod):
            for entry in container.get("env", []):
                if ref := entry.get("valueFrom", {}).get("secretKeyRef"):
                    assert (ref["name"], ref["key"]) in keys
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in names
    for ref in install.one("TriggerAuthentication")["spec"]["secretTargetRef"]:
        assert (ref["name"], ref["key"]) in keys


# -- the config and what follows from it -----------------------------------------------------
def test_configmap_loads_with_the_project_settings(install, settings_of):
    for component in ("worker", "api"):
        settings = settings_of(component)
        assert len(settings.enabled_executors()) == 1, "one executor per worker Deployment, so one queue for KEDA to watch"
        assert settings.enabled_executors() == [settings.default_executor]


def test_keda_scales_the_worker_on_its_queue_and_running_list(fleet_install, settings_in):
    install = fleet_install
    settings = settings_in(install, "worker")
    [executor] = settings.enabled_executors()
    scaled = install.one("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == install.workload("worker")["metadata"]["name"]
    assert scaled["spec"]["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert 0 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    assert scaled["spec"]["cooldownPeriod"] > 0
    triggers = {t["metadata"]["listName"]: t for t in scaled["spec"]["triggers"]}
    queue = settings.queue_for(executor)
    running = JobStore.from_settings(settings).running_key(executor)
    assert running == f"{settings.worker.namespace}:running:{executor}"
    assert set(triggers) == {queue, running}
    redis = install.service_for("redis")
    namespace = install.namespace or BASE_NAMESPACE
    for trigger in triggers.values():
        assert trigger["type"] == "redis"
        metadata = trigger["metadata"]
        assert all(isinstance(v, str) for v in metadata.values()), f"KEDA metadata values must be strings: {metadata}"
        assert int(metadata["listLength"]) >= 1
        assert metadata["address"] == f"{redis['metadata']['name']}.{namespace}.svc.cluster.local:{redis['spec']['ports'][0]['port']}"
        assert metadata.get("databaseIndex", "0") == urlsplit(env_value(install.container("worker"), "RUNNER_REDIS_URL")).path.strip("/")
        auth = install.one("TriggerAuthentication", trigger["authenticationRef"]["name"])
        [password] = [r for r in auth["spec"]["secretTargetRef"] if r["parameter"] == "password"]
        redis_env = next(e for e in install.container("redis")["env"] if e["name"] == "REDIS_PASSWORD")
        assert redis_env["valueFrom"]["secretKeyRef"] == {"name": password["name"], "key": password["key"]}
    # one worker per listLength running jobs: never fewer than the running builds need
    assert int(triggers[running]["metadata"]["listLength"]) <= settings.worker.concurrency


def formula_value(formula: str, values: dict[str, int]) -> float:
    """KEDA's formula (expr language) for what the manifests use: sums of trigger names."""

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return value(node.left) + value(node.right)
        if isinstance(node, ast.Name):
            return values[node.id]
        raise AssertionError(f"this test reads sums of trigger names, not {ast.unparse(node)!r}")

    return value(ast.parse(formula, mode="eval").body)


def test_keda_sizes_the_fleet_on_queued_plus_running(fleet_install, settings_in):
    """The HPA KEDA makes, computed: replicas = ceil(formula / target) for an AverageValue
    target, kept within min and max, 0 only when nothing is above the activation target."""
    install = fleet_install
    settings = settings_in(install, "worker")
    [executor] = settings.enabled_executors()
    spec = install.one("ScaledObject")["spec"]
    modifiers = spec["advanced"]["scalingModifiers"]
    lists = {t["name"]: t["metadata"]["listName"] for t in spec["triggers"]}
    queue, running = settings.queue_for(executor), JobStore.from_settings(settings).running_key(executor)
    assert sorted(lists.values()) == sorted([queue, running])
    assert {n.id for n in ast.walk(ast.parse(modifiers["formula"], mode="eval")) if isinstance(n, ast.Name)} == set(lists)
    assert modifiers["metricType"] == "AverageValue", "replicas follow demand per worker; the fallback needs it too"
    assert float(modifiers["target"]) == settings.worker.concurrency, "one worker per worker.concurrency jobs"
    low, high = spec["minReplicaCount"], spec["maxReplicaCount"]

    def replicas(queued: int, running_jobs: int) -> int:
        demand = formula_value(modifiers["formula"], {name: {queue: queued, running: running_jobs}[key] for name, key in lists.items()})
        if demand <= float(modifiers.get("activationTarget", "0")):
            return low
        return min(max(math.ceil(demand / float(modifiers["target"])), low, 1), high)

    concurrency = settings.worker.concurrency
    assert replicas(queued=2, running_jobs=4) == math.ceil(6 / concurrency)  # 3 with concurrency 2; the larger trigger alone gave 2
    assert replicas(0, 0) == low
    assert replicas(1, 0) >= 1, "one queued job wakes a fleet scaled to zero"
    assert replicas(0, 1) >= 1, "a running build keeps its worker"
    assert replicas(10_000, 0) == high
    for queued in range(0, 12):
        for running_jobs in range(0, 12):
            slots = replicas(queued, running_jobs) * concurrency
            assert slots >= min(queued + running_jobs, high * concurrency), (queued, running_jobs)
            assert replicas(queued, running_jobs) <= max(low, math.ceil((queued + running_jobs) / concurrency))
    fallback = spec["fallback"]
    assert fallback["failureThreshold"] >= 1
    assert max(low, 1) <= fallback["replicas"] <= high
    assert fallback["behavior"] == "currentReplicasIfHigher", "Redis unreadable: never scale in on a missing number"


def test_termination_grace_lets_every_build_finish(install, settings_of):
    """Scale-in, a rollout or a node drain never cuts a build short: the preStop hook drains
    the worker (`runner drain`: no new build, wait for the running ones), the drain lets a
    build run to its own timeout, and the pod's grace covers that with time to exit."""
    settings = settings_of("worker")
    assert settings.shutdown_grace() >= settings.limits.max_timeout, "the drain would requeue a build still within its timeout"
    assert settings.worker.metrics_port, "`runner drain` reaches the worker on its metrics port"
    for pod in worker_pods(install):
        assert pod["terminationGracePeriodSeconds"] >= settings.shutdown_grace() + REQUEUE_MARGIN
        worker = next(c for c in pod["containers"] if c["name"] == "worker")
        assert worker["lifecycle"]["preStop"] == {"exec": {"command": ["runner", "drain"]}}
        assert env_value(worker, "RUNNER_CONFIG"), "the hook reads the worker's own config (its metrics port)"


def test_probes_use_the_settings_ports_and_health_paths(install, settings_of):
    worker_settings = settings_of("worker")
    worker = install.container("worker")
    assert worker_settings.worker.metrics_port != 0, "metrics_port 0 turns off the server the probes call"
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert worker[probe]["httpGet"]["path"] == path
        assert port_number(worker, worker[probe]["httpGet"]["port"]) == worker_settings.worker.metrics_port
    api_settings = settings_of("api")
    api = install.container("api")
    assert api_settings.api.host == "0.0.0.0", "the kubelet and the Service reach the pod's address, not its loopback"
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert api[probe]["httpGet"]["path"] == path
        assert port_number(api, api[probe]["httpGet"]["port"]) == api_settings.api.port
    assert port_number(api, install.service_for("api")["spec"]["ports"][0]["targetPort"]) == api_settings.api.port


def test_pods_reach_redis_by_its_service(install):
    redis = install.service_for("redis")
    redis_container = install.container("redis")
    assert port_number(redis_container, redis["spec"]["ports"][0]["targetPort"]) == 6379
    for component in ("worker", "api"):
        container = install.container(component)
        names = [e["name"] for e in container["env"]]
        url = urlsplit(env_value(container, "RUNNER_REDIS_URL"))
        assert (url.hostname, url.port) == (redis["metadata"]["name"], redis["spec"]["ports"][0]["port"])
        # $(VAR) is expanded only from variables defined before it
        for var in re.findall(r"\$\((\w+)\)", env_value(container, "RUNNER_REDIS_URL")):
            assert names.index(var) < names.index("RUNNER_REDIS_URL")
        # service links would add RUNNER_REDIS_PORT=tcp://... and the like to the settings' env
        assert install.pod(component)["enableServiceLinks"] is False


def memory_bytes(text: str) -> int:
    """A Kubernetes quantity (2Gi) or a redis.conf size (1536mb, Redis's 1024-based units) in bytes."""
    number, unit = re.fullmatch(r"(\d+)([a-zA-Z]*)", text).groups()
    units = {"": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3,
             "ki": 1024, "mi": 1024**2, "gi": 1024**3}
    return int(number) * units[unit.lower()]


def test_redis_keeps_an_append_only_file_on_its_claim_and_never_evicts(install):
    redis = install.workload("redis")
    script = " ".join(install.container("redis")["command"] + install.container("redis")["args"])
    assert "--appendonly yes" in script
    # a burst of uploads is refused at maxmemory, below the container's limit (never OOM-killed),
    # and nothing is evicted to make room: any other policy may drop a queued job
    assert re.search(r"--maxmemory-policy (\S+)", script)[1] == "noeviction"
    maxmemory = memory_bytes(re.search(r"--maxmemory (\S+)", script)[1])
    limit = memory_bytes(install.container("redis")["resources"]["limits"]["memory"])
    assert 0 < maxmemory <= 0.8 * limit, "an AOF rewrite forks: copy-on-write pages need room beside maxmemory"
    data_dir = re.search(r"--dir (\S+)", script)[1]
    claims = {c["metadata"]["name"] for c in redis["spec"]["volumeClaimTemplates"]}
    assert any(m["name"] in claims and m["mountPath"] == data_dir for m in install.container("redis")["volumeMounts"])
    assert "$REDIS_PASSWORD" not in script.split("exec redis-server", 1)[1], "the password stays out of redis-server's argv"


def test_pdb_selects_the_worker_pods_only(install):
    pdbs = [p for p in install.all("PodDisruptionBudget") if selects(p["spec"]["selector"]["matchLabels"], install.pod_labels("worker"))]
    if install.has("ScaledJob"):  # its Job pods carry the worker's labels, and maxUnavailable cannot count them
        assert pdbs == []
        return
    assert len(pdbs) == 1
    assert pdbs[0]["spec"].get("maxUnavailable") == 1, "scale-to-zero must not make a drain impossible"
    for other in ("api", "redis"):
        assert not selects(pdbs[0]["spec"]["selector"]["matchLabels"], install.pod_labels(other))


def test_network_policy_lets_workers_reach_only_redis_dns_and_addresses(install):
    labels = install.pod_labels("worker")
    policies = [p for p in install.all("NetworkPolicy") if selects(p["spec"]["podSelector"]["matchLabels"], labels)]
    assert any("Egress" in p["spec"]["policyTypes"] for p in policies)
    redis_labels, redis_port = install.pod_labels("redis"), install.service_for("redis")["spec"]["ports"][0]["port"]
    reaches_redis = False
    for rule in (r for p in policies for r in p["spec"].get("egress", [])):
        assert rule.get("to") and rule.get("ports"), f"an egress rule without peers or ports allows everything: {rule}"
        for peer in rule["to"]:
            if "ipBlock" in peer:
                assert peer["ipBlock"]["cidr"] != "0.0.0.0/0"
            elif "namespaceSelector" in peer:  # DNS only
                assert {p["port"] for p in rule["ports"]} == {53}
            else:
                assert selects(peer["podSelector"]["matchLabels"], redis_labels)
                reaches_redis |= redis_port in {p["port"] for p in rule["ports"]}
    assert reaches_redis
    redis_ingress = [p for p in install.all("NetworkPolicy") if selects(p["spec"]["podSelector"]["matchLabels"], redis_labels)]
    peers = [peer for p in redis_ingress for rule in p["spec"]["ingress"] for peer in rule["from"]
             if redis_port in {port["port"] for port in rule["ports"]}]
    for component in ("worker", "api"):
        assert any(selects(peer.get("podSelector", {}).get("matchLabels", {"-": "-"}), install.pod_labels(component)) for peer in peers)
    assert any(peer.get("namespaceSelector") for peer in peers), "KEDA's operator polls Redis from its own namespace"


def test_configured_paths_are_writable_volumes(install, settings_of):
    settings = settings_of("worker")
    worker = install.container("worker")
    assert worker["securityContext"]["readOnlyRootFilesystem"] is True
    paths = [settings.worker.workspace, Path("/tmp"), Path("/var/tmp")]
    if settings.executors["buildah"].enabled:
        paths += [settings.executors["buildah"].storage_root, settings.executors["buildah"].run_root, Path("/run")]
    for path in paths:
        assert under(path, worker["volumeMounts"], writable=True), f"{path} is on the read-only root"
    if settings.executors["socket"].enabled:  # the engine's socket is in a volume its sidecar shares
        socket = Path(urlsplit(settings.executors["socket"].docker_host).path)
        sidecar = next(c for c in install.pod("worker")["initContainers"] if c["name"] == "dind")
        shared = {m["name"] for m in sidecar["volumeMounts"] if socket.is_relative_to(m["mountPath"])}
        assert any(m["name"] in shared and socket.is_relative_to(m["mountPath"]) for m in worker["volumeMounts"])


def secret_files(settings: Settings, component: str) -> list[Path]:
    if component == "api":
        files = [t.token_file for t in settings.api.tokens]
        files += [getattr(settings.webhooks, host).secret_file for host in ("github", "gitlab", "gitea")]
    else:
        files = [r.password_file for r in settings.registries] + [settings.callbacks.secret_file]
        files += [f for c in settings.git.credentials for f in (c.token_file, c.ssh_key_file, c.known_hosts_file)]
        files += [settings.signing.key_file, settings.signing.passphrase_file, settings.signing.public_key_file]
    return [f for f in files if f is not None]


def test_every_secret_file_in_the_config_is_a_mounted_secret(install, settings_of):
    for component in ("worker", "api"):
        settings = settings_of(component)
        pod, container = install.pod(component), install.container(component)
        secret_volumes = {v["name"] for v in pod["volumes"] if "secret" in v}
        mounts = [m for m in container["volumeMounts"] if m["name"] in secret_volumes]
        for path in secret_files(settings, component):
            assert under(path, mounts), f"{component}: {path} is not in a mounted Secret"
    if install.name != "base":
        assert secret_files(settings_of("worker"), "worker"), "an installation pushes to a registry with a password file"


# -- the worker's privileges -----------------------------------------------------------------
def test_buildah_worker_has_exactly_the_documented_privileges(install, settings_of):
    context = install.container("worker")["securityContext"]
    if not settings_of("worker").executors["buildah"].enabled:  # the dind variant: its worker needs nothing unusual
        assert context["seccompProfile"] == {"type": "RuntimeDefault"} and context["capabilities"] == {"drop": ["ALL"]}
        return
    assert context["capabilities"] == {"drop": ["ALL"], "add": ["SETUID", "SETGID", "SETFCAP"]}
    assert context["privileged"] is False and context["allowPrivilegeEscalation"] is False
    assert context["seccompProfile"] == {"type": "Unconfined"} and context["appArmorProfile"] == {"type": "Unconfined"}
    assert context["runAsUser"] == 0
    pod = install.pod("worker")
    assert pod["automountServiceAccountToken"] is False
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("initContainers")
    assert not any("hostPath" in v for v in pod["volumes"])


def test_dind_variant_confines_privilege_to_its_sidecar(install, settings_of):
    pod = install.pod("worker")
    privileged = [c["name"] for c in all_containers(pod) if c.get("securityContext", {}).get("privileged")]
    if not settings_of("worker").executors["socket"].enabled:
        assert privileged == []
        return
    assert privileged == ["dind"]
    [sidecar] = pod["initContainers"]
    assert sidecar["restartPolicy"] == "Always", "a native sidecar outlives the worker's drain"
    assert "startupProbe" in sidecar, "the worker starts only once the engine answers"
    worker = install.container("worker")["securityContext"]
    assert worker["capabilities"] == {"drop": ["ALL"]}
    assert worker["seccompProfile"] == {"type": "RuntimeDefault"} and worker["appArmorProfile"] == {"type": "RuntimeDefault"}
    assert not any("hostPath" in v for v in pod["volumes"]), "the engine is the pod's own, not a node's"


def test_namespaces_admit_what_the_worker_needs(install):
    """Seccomp/AppArmor Unconfined (buildah) and privileged (dind) are beyond Pod Security
    "baseline": an overlay's namespace must enforce "privileged" or the pods are refused."""
    if install.name == "base":  # namespace-agnostic: an overlay chooses (and labels) it
        assert install.all("Namespace") == [] and install.namespace is None
        return
    namespace = install.one("Namespace")
    assert namespace["metadata"]["name"] == install.namespace
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


# -- the renderer against kustomize itself ---------------------------------------------------
def normalised(docs: list[dict]) -> list[str]:
    text = [json.dumps(d, sort_keys=True) for d in docs]
    return sorted(re.sub(r'"(runner-config|runner-grafana-dashboard)-[a-z0-9]{10}"', r'"\1-HASH"', t) for t in text)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
def test_renderer_matches_kubectl_kustomize(install):
    result = subprocess.run(["kubectl", "kustomize", str(K8S / install.name)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert normalised(load_docs(result.stdout)) == normalised(install.docs)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
def test_renderer_matches_kubectl_kustomize_for_monitoring():
    result = subprocess.run(["kubectl", "kustomize", str(MONITORING)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert normalised(load_docs(result.stdout)) == normalised(render(MONITORING))


# -- monitoring (deploy/monitoring) ----------------------------------------------------------
def test_monitoring_objects_pass_the_prometheus_operators_crds():
    docs = render(MONITORING)
    assert {d["kind"] for d in docs} == {"PodMonitor", "ServiceMonitor", "PrometheusRule", "ConfigMap"}
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            kubernetes_validate.validate(doc, OLDEST_KUBERNETES, strict=True)
            assert doc["metadata"]["labels"] == {"grafana_dashboard": "1"}  # what Grafana's dashboard sidecar looks for
            assert json.loads(doc["data"]["ci-build-runner.json"])["uid"] == "ci-build-runner"
        else:
            assert crds.validate(doc) == [], f"{doc['kind']} {doc['metadata']['name']}"
    broken = copy.deepcopy(next(d for d in docs if d["kind"] == "PodMonitor"))
    broken["spec"]["podMetricsEndpoints"][0]["scrapeInterval"] = "30s"  # the field is `interval`
    assert any("scrapeInterval" in error for error in crds.validate(broken))


def test_monitors_and_annotations_scrape_the_ports_the_settings_serve(install, settings_of):
    """The PodMonitor finds the worker pods and their metrics port, the ServiceMonitor the API's
    Service and its port, and the plain scrape annotations name the same ports."""
    monitoring = render(MONITORING)
    pod_monitor = next(d for d in monitoring if d["kind"] == "PodMonitor")["spec"]
    service_monitor = next(d for d in monitoring if d["kind"] == "ServiceMonitor")["spec"]
    worker, api = install.container("worker"), install.container("api")
    metrics_port = settings_of("worker").worker.metrics_port
    assert selects(pod_monitor["selector"]["matchLabels"], install.pod_labels("worker"))
    for other in ("api", "redis"):
        assert not selects(pod_monitor["selector"]["matchLabels"], install.pod_labels(other))
    [endpoint] = pod_monitor["podMetricsEndpoints"]
    assert port_number(worker, endpoint["port"]) == metrics_port and endpoint["path"] == "/metrics"

    service = install.service_for("api")
    matching = [s for s in install.all("Service") if selects(service_monitor["selector"]["matchLabels"], s["metadata"]["labels"])]
    assert matching == [service], "the ServiceMonitor selects the API's Service by its labels, and only it"
    [endpoint] = service_monitor["endpoints"]
    [service_port] = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    assert port_number(api, service_port["targetPort"]) == settings_of("api").api.port and endpoint["path"] == "/metrics"

    for component, port in (("worker", metrics_port), ("api", settings_of("api").api.port)):
        annotations = install.workload(component)["spec"]["template"]["metadata"]["annotations"]
        assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}
    policy = next(p for p in install.all("NetworkPolicy") if p["metadata"]["name"] == "runner-worker")
    assert any(metrics_port in {port["port"] for port in rule["ports"]} and "from" not in rule for rule in policy["spec"]["ingress"]), \
        "Prometheus (any namespace) reaches the workers' metrics port"


# -- a pod per build (KEDA ScaledJob) --------------------------------------------------------
def test_scaled_job_starts_one_pod_per_waiting_build(job_install, settings_in):
    install = job_install
    settings = settings_in(install, "worker")
    [executor] = settings.enabled_executors()
    job = install.one("ScaledJob")["spec"]
    [trigger] = job["triggers"]
    redis = install.service_for("redis")
    assert trigger["type"] == "redis" and trigger["metadata"]["listName"] == settings.queue_for(executor)
    assert trigger["metadata"]["listLength"] == "1", "one Job per waiting build"
    address = f"{redis['metadata']['name']}.{install.namespace}.svc.cluster.local:{redis['spec']['ports'][0]['port']}"
    assert trigger["metadata"]["address"] == address
    assert install.one("TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert job["scalingStrategy"]["strategy"] == "accurate", "LLEN leaves out the builds taken: pending Jobs are subtracted"
    assert job["rollout"]["strategy"] == "gradual", "a change of the ScaledJob must not delete Jobs that are building"
    target = job["jobTargetRef"]
    assert target["parallelism"] == target["completions"] == 1 and target["backoffLimit"] == 0
    assert target["template"]["spec"]["restartPolicy"] == "Never"
    assert selects(install.pod_labels("worker"), target["template"]["metadata"]["labels"]), "the worker's policies and monitors apply"
    [worker] = target["template"]["spec"]["containers"]
    args = worker["args"]
    assert args[:1] == ["worker"] and args[args.index("--max-jobs") + 1] == "1" and float(args[args.index("--idle-exit") + 1]) > 0


def test_scaled_job_pods_are_the_base_workers(job_install):
    """The Job's pod is the base Deployment's worker pod (same image, privileges, env, mounts,
    volumes, probes and hook), save what a Job needs: its restart policy, its args, no
    readiness probe (nothing routes to it)."""
    base = Install("base").pod("worker")
    pod = job_install.one("ScaledJob")["spec"]["jobTargetRef"]["template"]["spec"]

    def settings_of_pod(spec: dict) -> dict:
        return {k: v for k, v in spec.items() if k not in ("restartPolicy", "containers", "volumes")}

    def container(spec: dict) -> dict:
        return {k: v for k, v in spec.items() if k not in ("args", "readinessProbe", "image")}

    def volumes(spec: list[dict]) -> list[dict]:  # the ConfigMap's name carries its content hash
        return [{**v, **({"configMap": {"name": "runner-config"}} if "configMap" in v else {})} for v in spec]

    assert settings_of_pod(pod) == settings_of_pod(base)
    [worker] = pod["containers"]
    assert container(worker) == container(base["containers"][0])
    assert volumes(pod["volumes"]) == volumes(base["volumes"])


def test_pod_per_job_keeps_one_worker_for_deliveries_and_recovery(job_install, settings_in):
    """Build pods come and go; commit statuses, callbacks and the recovery of builds whose pod
    died need a worker that stays: the Deployment, one replica, taking only the deliveries queue."""
    from runner.store.outbox import deliveries_queue

    settings = settings_in(job_install, "worker")
    assert job_install.workload("worker")["spec"]["replicas"] == 1
    assert job_install.container("worker")["args"] == ["worker", "--queues", deliveries_queue(settings.worker.namespace)]


# -- admission policies (deploy/k8s/policies) ------------------------------------------------
POLICIES = K8S / "policies"


def _condition_value(document: dict, key: str):
    """A Kyverno condition key of plain dotted names ("{{ a.b }}") looked up in `document`."""
    node = document
    for part in key.strip("{} ").split("."):
        node = node[part]
    return node


def test_admission_policies_pass_their_crds_and_admit_what_the_runner_attaches(tmp_path):
    """The policy-controller's ClusterImagePolicy and Kyverno's ClusterPolicy against their own
    CRDs (tests/fixtures/crds), with the runner's predicate type, build type and default
    builder id; their example key is one P-256 public key; Kyverno's conditions hold for a
    predicate the runner makes."""
    from datetime import UTC, datetime

    from runner.config.signing import DEFAULT_BUILDER_ID
    from runner.core.attestations import SLSA_PROVENANCE_V1
    from runner.core.build_inputs import BuildInputs
    from runner.supply.keys import load_public_key
    from runner.supply.provenance import BUILD_TYPE, RunDetails, predicate

    docs = {path.name: yaml.safe_load(path.read_text()) for path in sorted(POLICIES.glob("*.yaml"))}
    assert set(docs) == {"sigstore-clusterimagepolicy.yaml", "kyverno-clusterpolicy.yaml"}
    for name, doc in docs.items():
        assert crds.validate(doc) == [], name
    [authority] = docs["sigstore-clusterimagepolicy.yaml"]["spec"]["authorities"]
    [rule] = docs["kyverno-clusterpolicy.yaml"]["spec"]["rules"]
    [verify] = rule["verifyImages"]
    [attestation] = verify["attestations"]
    signers = [authority["key"]["data"], verify["attestors"][0]["entries"][0]["keys"]["publicKeys"],
               attestation["attestors"][0]["entries"][0]["keys"]["publicKeys"]]
    for index, pem in enumerate(signers):
        (tmp_path / f"{index}.pub").write_text(pem.strip() + "\n")
        load_public_key(tmp_path / f"{index}.pub")  # raises unless an ECDSA P-256 public key
    assert len({pem.strip() for pem in signers}) == 1
    assert "ctlog" not in authority  # no transparency log: the runner signs offline
    assert all(e["keys"]["rekor"] == {"ignoreTlog": True} for e in verify["attestors"][0]["entries"]
               + attestation["attestors"][0]["entries"])

    [provenance] = authority["attestations"]
    assert provenance["predicateType"] == SLSA_PROVENANCE_V1 == attestation["type"]
    assert f'buildType: "{BUILD_TYPE}"' in provenance["policy"]["data"]
    assert f'id: "{DEFAULT_BUILDER_ID}"' in provenance["policy"]["data"]
    made = predicate(BuildInputs(dockerfile="Dockerfile", executor="buildah", builder="auto"),
                     RunDetails(DEFAULT_BUILDER_ID, "1.0", "job", "worker", datetime.now(UTC), datetime.now(UTC)))
    [conditions] = attestation["conditions"]
    assert [c["operator"] for c in conditions["all"]] == ["Equals", "Equals"]
    assert [_condition_value(made, c["key"]) for c in conditions["all"]] == [c["value"] for c in conditions["all"]]

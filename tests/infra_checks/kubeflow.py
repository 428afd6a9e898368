"""Kubeflow Pipelines' storage and credentials: claims, their static volumes (NFS), the model store shared
with TF Serving, the secret examples and the keys the pipeline reads."""

from __future__ import annotations

import re
from pathlib import Path


from infra_checks.layout import SECRET_EXAMPLES, SERVING_DEPLOYMENT
from infra_checks.manifests import find, load_docs, one, pod_spec
from infra_checks.serving import serving_container


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


def secret_examples() -> dict[str, tuple[Path, dict]]:
    examples = {}
    for path in sorted(SECRET_EXAMPLES.glob("*.example.yaml")):
        doc = one(load_docs(path), "Secret")
        examples[doc["metadata"]["name"]] = (path, doc)
    return examples

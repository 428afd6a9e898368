"""Kubernetes manifests read as plain data: loading YAML documents, pod templates and containers of any
workload, command-line flags, container ports, and whether mounts and references resolve."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from infra_checks.layout import COMPOSE, EXTERNAL_SECRETS, INFRA


def load_docs(path: Path) -> list[dict]:
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def manifest_files() -> list[Path]:
    """Every Kubernetes YAML file under infra/ (kustomizations and the compose file excluded)."""
    files = sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))
    return [p for p in files if p.name != "kustomization.yaml" and p != COMPOSE]


def pod_specs(doc: dict) -> list[dict]:
    """Every pod template of a resource: one for workloads, one per replica type for a TFJob, the trial's for
    a Katib Experiment."""
    if doc.get("kind") == "TFJob":
        return [replica.get("template", {}).get("spec", {})
                for replica in doc.get("spec", {}).get("tfReplicaSpecs", {}).values()]
    if doc.get("kind") == "Experiment":
        return pod_specs(doc.get("spec", {}).get("trialTemplate", {}).get("trialSpec", {}))
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


def port_number(container: dict, port) -> int | None:
    if isinstance(port, int):
        return port
    return next((p["containerPort"] for p in container.get("ports", []) if p.get("name") == port), None)


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

"""A small kustomize: enough of `kustomize build` for infra/'s kustomizations (resources,
configMapGenerator, strategic merge patches with `$patch: delete`, images, namespace), checked against
the real one where `kustomize` or `kubectl` is installed."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from infra_checks.layout import CLUSTER_SCOPED
from infra_checks.manifests import containers, find, load_docs, pod_specs


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

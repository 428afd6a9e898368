"""Deployment manifests in infra/ as files: every YAML document parses, has apiVersion/kind/metadata.name and
only fields of the Kubernetes API (the `kubernetes` client's models; the TFJob CRD declared in
infra_checks.schema), with the right types; every file is built by a kustomization or applied on its own;
kustomizations name files that exist, and the resolver in infra_checks.kustomize builds what the real
`kustomize build` builds (where kustomize or kubectl is installed); every image is pinned (a version tag,
never latest, or a digest) at the locked clients' versions, the project image at this version; every pod runs
as non-root; no credentials are committed. Every checker is also shown a broken example and must reject it.
"""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from infra_checks.credentials import credential_problems
from infra_checks.images import all_images, image_problem, project_image
from infra_checks.kustomize import build, kustomization_problems, real_kustomize
from infra_checks.layout import BASE, BUILD_DIRS, INFRA, KUSTOMIZATIONS, ROOT, STANDALONE
from infra_checks.manifests import containers, load_docs, manifest_files, pod_spec, pod_specs
from infra_checks.schema import k8s_schema_problems


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


def test_no_credentials_in_infra():
    for path in [*INFRA.rglob("*"), *(ROOT / "containers").rglob("*"), ROOT / ".dockerignore"]:
        if path.is_file():
            assert not credential_problems(path.read_text()), path
    assert credential_problems("POSTGRES_PASSWORD: s3cretValue12345")
    assert credential_problems('{"type": "service_account", "private_key": "..."}')
    assert not credential_problems("POSTGRES_PASSWORD: REPLACE_ME_PLACEHOLDER_NOT_A_SECRET")


def test_manifests_run_the_project_image_of_this_version(builds):
    images = {image for where, image in all_images() if "cvpipe/cvpipe" in image}
    assert images == {project_image()}
    image = pytest.importorskip("pipeline.image")  # the lead's pipeline uses the same references
    assert image.PROJECT_IMAGE == project_image() and image.GPU_IMAGE == project_image("-gpu")

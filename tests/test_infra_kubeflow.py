"""Kubeflow Pipelines (infra/kubeflow): the claims the pipeline's steps mount exist in the KFP namespace
and are bound to the volumes they name; the model store the deploy step writes is the one TF Serving reads
(across namespaces: the same NFS directory; or one namespace; or gs://); secret examples carry the keys the
pipeline's --gcp-secret/--aws-secret/--mlflow-secret read; infra/README.md's commands match the manifests;
the retrain CronJob's command is accepted by `python -m pipeline`.
"""

from __future__ import annotations

import copy
import re

import pytest

from infra_checks.kubeflow import (DATA_CLAIM, DATA_MOUNT, GCP_SECRET_MOUNT, KFP_NAMESPACE, MLFLOW_URI, MODEL_CLAIM,
                                   MODEL_MOUNT, SECRET_KEYS, claim_binding_problems, nfs_directory, quantity,
                                   secret_examples, serving_model_mount)
from infra_checks.layout import BUILD_DIRS, CLUSTER_SCOPED, EXTERNAL_CLAIMS, INFRA, RETRAIN, TRAINING_KUSTOMIZATIONS
from infra_checks.manifests import container_flags, containers, find, load_docs, mount_problems, one, pod_specs
from infra_checks.serving import serving_container


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

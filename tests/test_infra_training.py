"""Multi-worker training (infra/training): the TFJob (a CRD, checked against the Training Operator's v1 API)
and the Indexed Job give every worker a TF_CONFIG that TensorFlow's TFConfigClusterResolver and
components/train read as one cluster with exactly one chief (the Indexed Job's script really runs), and the
train CLI accepts their arguments, input and output on the shared data claim.
"""

from __future__ import annotations

import copy
import re

import pytest

from infra_checks.images import project_image
from infra_checks.kubeflow import DATA_CLAIM, DATA_MOUNT, KFP_NAMESPACE
from infra_checks.layout import EXTERNAL_CLAIMS, TRAINING, TRAINING_KUSTOMIZATIONS
from infra_checks.manifests import load_docs, mount_problems, one, pod_specs, port_number
from infra_checks.schema import k8s_schema_problems
from infra_checks.training import TFJOB_PORT, cluster_problems, indexed_job_tf_configs, tfjob_problems, tfjob_tf_configs


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
    from components import cli
    from components.train.__main__ import main as train_main

    docs = builds[f"training/{name}"]
    spec = pod_specs(one(docs, "TFJob" if name == "tfjob" else "Job"))[0]
    container = spec["containers"][0]
    argv = container["args"] if name == "indexed-job" else [*container["command"], *container["args"]]
    assert argv[:3] == ["python", "-m", "components.train"]
    assert container["image"] == project_image()
    calls = []

    def fake_training(transform_dir, output, config, overwrite=False, tuning=None):
        assert tuning is None  # the manifests train as configured; tuning is the pipeline's step
        calls.append((transform_dir, output, config, overwrite))
        return train_run.TrainResult(output, {}, chief=False)

    checked = []  # the pod's paths are on its data claim, not on this machine: record what is checked
    monkeypatch.setattr(train_run, "run_training", fake_training)
    monkeypatch.setattr(cli, "require_path", lambda parser, path, flag, expected: checked.append((flag, path)))
    assert train_main([*argv[3:], "--set", "tracking.enabled=false"]) == 0
    assert checked == [("--transformed", calls[0][0])]
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

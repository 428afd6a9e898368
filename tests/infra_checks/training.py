"""Multi-worker training: what the Training Operator accepts in a TFJob, the TF_CONFIG a TFJob or the
Indexed Job gives each worker, and what TensorFlow and components/train make of it."""

from __future__ import annotations

import copy
import json
import subprocess
import types




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

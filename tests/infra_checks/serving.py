"""The TF Serving Deployment of a build: its container, the config files mounted into it, and its ports,
probes, Service, autoscaling, disruption budget and Prometheus scraping."""

from __future__ import annotations

import json
import re


from infra_checks.layout import SERVING_DEPLOYMENT
from infra_checks.manifests import container_flags, find, one, pod_spec, port_number
from infra_checks.serving_configs import parse_models, parse_monitoring


def serving_container(docs: list[dict]) -> dict:
    return next(c for c in pod_spec(one(docs, "Deployment", SERVING_DEPLOYMENT))["containers"] if c["name"] == "tf-serving")


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

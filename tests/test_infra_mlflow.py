"""The MLflow server on Kubernetes (infra/mlflow): its PostgreSQL backend store assembled from a Secret's
keys, artifacts proxied to its volume, probes and Service on its port, the Host header check passing
in-cluster and port-forwarded clients; secrets referenced, never applied, with a placeholder example.
"""

from __future__ import annotations

import re


from infra_checks.layout import MLFLOW
from infra_checks.manifests import containers, find, flags, load_docs, mount_problems, one, pod_spec, port_number
from infra_checks.mlflow_hosts import mlflow_allows_host


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

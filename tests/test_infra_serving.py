"""TF Serving on Kubernetes (infra/serving: the kustomize base and its overlays): models.config,
batching.config and monitoring.config parse into TF Serving's protos (infra_checks.serving_configs) and
follow the server's rules; the server's flags point at mounted configs; Service -> container port -> the
--port/--rest_api_port flags; probes ask the REST status endpoint of a declared model, and the readiness
script really runs (bash) against a fake status endpoint, passing only for an AVAILABLE version; the HPA and
PDB select the Deployment; the Prometheus path is monitoring.config's; each overlay (local PVC, gs://, GPU)
serves from where it says. Every checker is also shown a broken example and must reject it.
"""

from __future__ import annotations

import copy
import subprocess

import pytest
from google.protobuf import text_format

from infra_checks.layout import BASE, EXTERNAL_CLAIMS, MODEL_NAME, OVERLAYS, SERVING_DEPLOYMENT
from infra_checks.manifests import container_flags, find, load_docs, mount_problems, one, pod_spec
from infra_checks.probes import FakeStatusServer, closed_port, readiness_command, run_probe, status_body
from infra_checks.serving import (SEED, config_file, declared_models, models_config_problems_in_build,
                                  serving_container, serving_problems)
from infra_checks.serving_configs import (batching_problems, models_config_problems, parse_batching, parse_models,
                                          parse_monitoring)


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

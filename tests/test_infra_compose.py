"""infra/docker-compose.yml: TF Serving with the Kubernetes base's flags on the same config files
(mounted read-only from where `make run` deploys), its healthcheck the readiness script, and the MLflow
server; no `$` that compose would interpolate where a literal one was meant.
"""

from __future__ import annotations

import re


from infra_checks.compose import compose, interpolate, unescaped_dollars
from infra_checks.layout import INFRA, MODEL_NAME, ROOT
from infra_checks.manifests import container_flags, flags
from infra_checks.mlflow_hosts import mlflow_allows_host
from infra_checks.probes import FakeStatusServer, readiness_command, run_probe, status_body
from infra_checks.serving import SEED, config_file, serving_container
from infra_checks.serving_configs import parse_models


def test_compose_healthcheck_is_the_readiness_script(builds):
    test = compose()["services"]["tf-serving"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    assert not unescaped_dollars(test[-1]), "a `$` in the healthcheck would be interpolated by compose"
    command = [interpolate(part) for part in test[1:]]
    assert command == readiness_command(builds["base"])
    for states, ready in (((("AVAILABLE",)), True), (("LOADING",), False)):
        with FakeStatusServer(200, status_body(*states)) as server:
            assert (run_probe(command, server.port) == 0) is ready


def test_dollar_checker_rejects_compose_interpolation():
    assert unescaped_dollars('response=$(cat) ; [[ $response ]]') == ["$(cat)", "$response"]
    assert unescaped_dollars("a=$$(b) ${MODEL_DIR:-../runs} $${x}") == []


def test_compose_runs_the_kubernetes_flags_on_the_same_files(builds):
    services = compose()["services"]
    assert set(services) == {"tf-serving", "mlflow"}
    serving = services["tf-serving"]
    k8s = serving_container(builds["base"])
    assert serving["image"] == k8s["image"]
    assert serving["entrypoint"] == k8s["command"]
    args = flags([interpolate(a) for a in serving["command"]])
    k8s_args = container_flags(k8s)
    # The same flags; only the config file differs: the committed one unless MODEL_CONFIG_FILE says
    # /models/models.config (a deploy stage's BASE), which is what Kubernetes reads.
    assert {**args, "model_config_file": None} == {**k8s_args, "model_config_file": None}
    assert args["model_config_file"] == SEED
    assert {p.split(":")[-1] for p in serving["ports"]} == {args["port"], args["rest_api_port"]}
    assert all(interpolate(p).startswith("127.0.0.1:") for p in serving["ports"])  # loopback unless told
    mounts = {}
    for volume in serving["volumes"]:
        source, target, *mode = interpolate(volume).split(":")
        assert mode == ["ro"], f"{volume}: TF Serving needs read access only"
        mounts[target] = (INFRA / source).resolve()
    for flag in ("model_config_file", "batching_parameters_file", "monitoring_config_file"):
        source = mounts[args[flag]]
        assert source.is_file(), f"{args[flag]} is mounted from {source}, which does not exist"
        assert source.read_text() == config_file(builds["base"], args[flag]), f"{source} is not the base's file"
    assert k8s_args["model_config_file"].startswith("/models/")  # the alternative MODEL_CONFIG_FILE
    # The model directory is where `make run` deploys: the base whose models.config `make serve` reads.
    makefile = (ROOT / "Makefile").read_text()
    run_dir = re.search(r"^RUN_DIR \?= (\S+)$", makefile, re.M).group(1)
    served = re.search(r"--model_config_file=\$\(RUN_DIR\)/(\S+)/models\.config", makefile).group(1)
    assert re.search(rf"^MODEL_NAME \?= {MODEL_NAME}$", makefile, re.M)
    assert mounts["/models"] == (ROOT / run_dir / served).resolve()
    models = parse_models(mounts[args["model_config_file"]].read_text()).model_config_list.config
    assert [m.base_path for m in models] == [f"/models/{MODEL_NAME}"]


def test_compose_mlflow_server():
    mlflow = compose()["services"]["mlflow"]
    assert mlflow["command"][:2] == ["mlflow", "server"]
    args = flags(mlflow["command"][2:])
    assert args["host"] == "0.0.0.0"
    assert [interpolate(p) for p in mlflow["ports"]] == [f"127.0.0.1:{args['port']}:{args['port']}"]
    assert args["backend-store-uri"].startswith("sqlite:////mlflow/")
    assert args["artifacts-destination"].startswith("/mlflow/")
    assert [interpolate(v).split(":")[1] for v in mlflow["volumes"]] == ["/mlflow"]
    allowed = args["allowed-hosts"].split(",")
    for host in ("localhost:5000", "127.0.0.1:5000", "mlflow:5000"):
        assert mlflow_allows_host(allowed, host), host
    assert not mlflow_allows_host(allowed, "evil.example.com")
    assert f":{args['port']}/health" in " ".join(mlflow["healthcheck"]["test"])
    for service in compose()["services"].values():
        for part in [*service.get("command", []), *service["healthcheck"]["test"], *service.get("volumes", [])]:
            assert not unescaped_dollars(part), part

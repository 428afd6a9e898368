"""The Kubeflow pipeline: its compiled IR, and real local runs with kfp.local on a tiny dataset.

The local runs are the real thing: every step is a subprocess running the stage code, artifacts
pass between them on disk, MLflow records to the session's SQLite store, deploy writes a real
TF Serving model base path.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import pytest
import yaml

from components.artifacts import model_version
from components.deploy import model_config
from components.ingest.fingerprint import fingerprint_source
from components.tracking.client import tracking_uri
from components.tracking.runs import DATA_FINGERPRINT_TAG, DATA_INPUTS_TAG, KFP_RUN_ID_TAG, child_runs, pipeline_runs
from conftest import make_config
from image_files import write_colour_classes
from pipeline.__main__ import main
from pipeline.cluster import kfp_cron
from pipeline.definition import CACHED_STEPS, RESOURCES
from pipeline.image import GPU_IMAGE, PROJECT_IMAGE, check_pinned
from components.tune.tracked import TUNED_TAG
from pipeline.local import PipelineRunError, RunSummary, run_local

SETTINGS = ("transform.image_size=32", "train.batch_size=16", "train.tensorboard_images=0", "export.tflite=[]",
            "export.warmup_requests=1", "tracking.experiment=pipeline-test", "tracking.registered_model=pipeline-test")
STAGES = ("ingest", "transform", "tune", "train", "export", "evaluate", "batch_predict")


def compile_ir(tmp_path: Path, *flags: str) -> list[dict]:
    package = tmp_path / "cvpipe.yaml"
    assert main(["compile", "--output", str(package), *flags]) == 0
    return list(yaml.safe_load_all(package.read_text()))


def dag_tasks(ir: dict) -> dict[str, dict]:
    """Every task of every DAG in the IR, by name."""
    tasks = dict(ir["root"]["dag"]["tasks"])
    for component in ir["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


def guard(ir: dict, task: str) -> str:
    """The condition of the dsl.If group directly around `task`."""
    [group] = [name for name, component in ir["components"].items()
               if task in component.get("dag", {}).get("tasks", {})]
    [condition] = [t["triggerPolicy"]["condition"] for t in dag_tasks(ir).values()
                   if t.get("componentRef", {}).get("name") == group]
    return condition


def test_compiled_ir_has_the_stage_graph(tmp_path):
    ir = compile_ir(tmp_path)[0]
    tasks = dag_tasks(ir)
    edges = {name: set(task.get("dependentTasks", [])) for name, task in tasks.items()}
    assert {"ingest", "transform", "tune", "train", "export", "evaluate", "register", "deploy", "batch-predict",
            "start-run", "finish-run", "configure"} <= set(tasks)
    assert "start-run" in edges["ingest"]
    assert "ingest" in edges["transform"]
    assert "transform" in edges["tune"]
    assert {"transform", "tune"} <= edges["train"]
    assert {"train", "transform"} <= edges["export"]
    assert {"export", "ingest"} <= edges["evaluate"]
    assert {"evaluate", "export"} <= edges["register"]
    # deploy only under the blessing; batch scoring after deploy, and only with an input
    assert guard(ir, "deploy") == "inputs.parameter_values['pipelinechannel--evaluate-Output'] == true"
    assert guard(ir, "batch-predict") == "inputs.parameter_values['pipelinechannel--batch_input'] != ''"
    assert edges[next(n for n, t in tasks.items() if t.get("triggerPolicy", {}).get("condition") ==
                      guard(ir, "batch-predict"))] == {"deploy"}
    # the MLflow run is ended by the exit handler, whatever happens
    assert tasks["finish-run"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"


def test_compiled_ir_pins_the_project_image_and_caches_only_content_keyed_steps(tmp_path):
    ir = compile_ir(tmp_path)[0]
    images = {spec["container"]["image"] for spec in ir["deploymentSpec"]["executors"].values()}
    assert images == {PROJECT_IMAGE}
    assert not PROJECT_IMAGE.endswith(":latest")
    for name, task in dag_tasks(ir).items():
        if "componentRef" in task and name.startswith(tuple(RESOURCES)) and not name.startswith("condition"):
            cached = task.get("cachingOptions", {}).get("enableCache", False)
            assert cached == (name in CACHED_STEPS), name
    train = ir["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert train["resourceCpuLimit"] == RESOURCES["train"].cpu
    assert train["resourceMemoryLimit"] == RESOURCES["train"].memory
    # ingest's cache key holds the data's content fingerprint, not only its path
    ingest_inputs = dag_tasks(ir)["ingest"]["inputs"]["parameters"]
    assert ingest_inputs["data_fingerprint"]["taskOutputParameter"] == {"outputParameterKey": "data_fingerprint",
                                                                         "producerTask": "start-run"}


def test_compiled_ir_loads_back_as_a_component_with_typed_parameters(tmp_path):
    from kfp import components

    compile_ir(tmp_path, "--set", "train.epochs=7")
    loaded = components.load_component_from_file(str(tmp_path / "cvpipe.yaml"))
    inputs = loaded.component_spec.inputs
    assert inputs["epochs"].type == "Integer" and inputs["epochs"].default == 7
    assert inputs["learning_rate"].type == "Float" and inputs["data_source"].type == "String"
    assert inputs["tune"].type == "Boolean" and inputs["tune"].default is False
    assert inputs["tune_trials"].default == 10 and inputs["tune_algorithm"].default == "bayesian"
    assert inputs["config"].default["train"]["epochs"] == 7
    assert not inputs["data_source"].optional


def test_cluster_options_mount_volumes_and_secrets_and_give_training_a_gpu(tmp_path):
    ir, platform = compile_ir(tmp_path, "--gpus", "1", "--pvc", "cvpipe-data:/data", "--pvc", "cvpipe-models:/models",
                              "--gcp-secret", "cvpipe-gcp", "--aws-secret", "cvpipe-aws",
                              "--image", "registry/cvpipe:2.0")
    executors = ir["deploymentSpec"]["executors"]
    for step in ("exec-tune", "exec-train"):
        assert executors[step]["container"]["image"] == GPU_IMAGE
        assert executors[step]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
    assert executors["exec-ingest"]["container"]["image"] == "registry/cvpipe:2.0"
    kubernetes = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(kubernetes) == set(executors)
    ingest = kubernetes["exec-ingest"]
    assert {(m["constant"], m["mountPath"]) for m in ingest["pvcMount"]} == {("cvpipe-data", "/data"),
                                                                             ("cvpipe-models", "/models")}
    assert ingest["secretAsVolume"][0]["secretName"] == "cvpipe-gcp"
    assert {e["keyToEnv"][0]["envVar"] for e in ingest["secretAsEnv"]} <= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    env = {e["name"]: e["value"] for e in executors["exec-ingest"]["container"]["env"]}
    assert env["GOOGLE_APPLICATION_CREDENTIALS"] == "/var/secrets/google/key.json"


@pytest.mark.parametrize("flags", [["--image", "registry/cvpipe:latest"], ["--image", "registry/cvpipe"],
                                   ["--pvc", "no-mount-path"]])
def test_compile_refuses_unpinned_images_and_bad_options(tmp_path, flags):
    assert main(["compile", "--output", str(tmp_path / "x.yaml"), *flags]) == 1
    assert not (tmp_path / "x.yaml").exists()


@pytest.mark.parametrize("reference", ["repo/cvpipe:1.2.3", "localhost:5000/cvpipe:0.1",
                                       "repo/cvpipe@sha256:" + "a" * 64, "repo/cvpipe:1@sha256:" + "b" * 64])
def test_pinned_images_pass(reference):
    assert check_pinned(reference) == reference


@pytest.mark.parametrize("expression, expected", [("0 3 * * *", "0 0 3 * * *"), ("15 0 3 * * 1", "15 0 3 * * 1")])
def test_cron_expressions_become_kfp_six_field_cron(expression, expected):
    assert kfp_cron(expression) == expected


def test_a_malformed_cron_expression_is_refused():
    with pytest.raises(ValueError, match="5 fields"):
        kfp_cron("every day")


@dataclass(frozen=True)
class LocalRuns:
    root: Path
    images: Path
    serving: Path
    blessed: RunSummary
    unblessed: RunSummary


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory) -> LocalRuns:
    """Two kfp.local runs on the same tiny data: a tuned model that is blessed, then an untuned one that is not."""
    root = tmp_path_factory.mktemp("pipeline")
    images, serving = root / "images", root / "serving"
    write_colour_classes(images, per_class=30)
    arguments = {"data_source": str(images), "serving_base_path": str(serving), "model_name": "tiny",
                 "batch_input": "split:test"}
    blessed = run_local({**arguments, "tune": True, "tune_trials": 2, "tune_algorithm": "random"},
                        make_config(*SETTINGS, "train.epochs=4", "evaluate.min_accuracy=0", "evaluate.min_class_recall=0",
                                    "tune.epochs=1"),
                        pipeline_root=str(root / "kfp"), log_file=str(root / "blessed.log"))
    # One epoch at a tiny learning rate cannot reach 100 % accuracy: not blessed.
    strict = make_config(*SETTINGS, "train.epochs=1", "train.learning_rate=0.00001", "evaluate.min_accuracy=1")
    unblessed = run_local(arguments, strict, pipeline_root=str(root / "kfp"), log_file=str(root / "unblessed.log"))
    return LocalRuns(root, images, serving, blessed, unblessed)


def test_a_blessed_run_passes_artifacts_through_every_stage_and_deploys(local_runs):
    run = local_runs.blessed
    assert run.blessing["blessed"], run.blessing
    assert tuple(run.outputs) == STAGES
    for stage, output in run.outputs.items():
        assert Path(output, "manifest.json").is_file(), stage
        assert output.startswith(str(local_runs.root / "kfp")), stage
    assert run.served == {"stable": 1}
    config = model_config.read_model_config(model_config.model_config_path(str(local_runs.serving)))
    assert model_config.labels(config, "tiny") == {"stable": 1}
    assert (local_runs.serving / "tiny" / "1" / "saved_model.pb").is_file()
    batch = run.batch_summary
    test_images = json.loads(Path(run.outputs["ingest"], "stats.json").read_text())["splits"]["test"]["images"]
    assert batch["predictions"] + batch["errors"] == batch["inputs"] == test_images
    assert [v.champion for v in run.model_versions] == [True]


def test_a_tuned_run_trains_with_the_best_trial_and_says_so(local_runs):
    tuning = json.loads(Path(local_runs.blessed.outputs["tune"], "tuning.json").read_text())
    assert [t["status"] for t in tuning["trials"]] == ["COMPLETED"] * 2
    training = json.loads(Path(local_runs.blessed.outputs["train"], "training.json").read_text())
    assert training["tuning"]["best_trial"] == tuning["best"]["trial"]
    assert training["tuning"]["output"].startswith(str(local_runs.root / "kfp"))
    trained = training["config"]["train"]
    for key, value in tuning["best"]["hyperparameters"].items():
        section, _, name = key.rpartition(".")
        assert (trained[section] if section else trained)[name] == value, key
    assert trained["epochs"] == 4, "the trials' epochs (tune.epochs) are not the training's"
    report = Path(local_runs.blessed.outputs["evaluate"], "evaluation.html").read_text()
    assert "the best of 2 random trials" in report
    config = make_config(*SETTINGS)
    parent = mlflow.MlflowClient(tracking_uri(config.tracking)).get_run(local_runs.blessed.mlflow_run_id)
    assert parent.data.tags[TUNED_TAG].startswith("random: 2 trials, best ")
    assert parent.data.metrics["tune.best_val_accuracy"] == tuning["best"]["objective"]
    untuned = json.loads(Path(local_runs.unblessed.outputs["train"], "training.json").read_text())
    assert "tuning" not in untuned and "tune" not in local_runs.unblessed.outputs


def test_the_summary_names_the_files_to_open_as_clickable_paths_and_the_mlflow_run_page(local_runs):
    run = local_runs.blessed
    assert set(run.files) == {"evaluation report", "confusion matrix", "training curves", "tuning trials", "whole log"}
    assert all(Path(path).is_file() for path in run.files.values()), run.files
    text = str(run)
    for path in run.files.values():
        assert Path(path).as_uri() in text
    assert run.files["whole log"] == str(local_runs.root / "blessed.log")
    assert f"/runs/{run.mlflow_run_id}?" in run.mlflow_run_page.url and str(run.mlflow_run_page) in text
    log = (local_runs.root / "blessed.log").read_text()
    assert "\x1b[" not in log, "the log file has no terminal colour codes"
    assert "absl::InitializeLog" not in log and "cudart_stub" not in log, "nor TensorFlow's start-up lines"
    assert "Executing task" in log and "Ingest done" in log


def test_the_run_is_one_mlflow_parent_run_with_the_kfp_run_id_and_a_child_per_stage(local_runs):
    config = make_config(*SETTINGS)
    run = local_runs.blessed
    parent = mlflow.MlflowClient(tracking_uri(config.tracking)).get_run(run.mlflow_run_id)
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags[KFP_RUN_ID_TAG]
    assert tags[DATA_FINGERPRINT_TAG] == fingerprint_source(str(local_runs.images)).sha256
    assert tags[DATA_INPUTS_TAG] == "90"
    assert parent.data.params["train.epochs"] == "4"
    # Named after the run's artifact folder; the headline metrics of the model it registered.
    assert parent.info.run_name == Path(run.outputs["train"]).relative_to(local_runs.root / "kfp").parts[0]
    assert parent.data.metrics["blessed"] == 1 and parent.data.metrics["registered_version"] == 1
    assert {"test.accuracy", "test.macro_f1"} <= set(parent.data.metrics)
    stages = {child.data.tags.get("cvpipe.stage") for child in child_runs(config, run.mlflow_run_id)}
    assert stages == {*STAGES, "register"}


def test_typed_artifacts_carry_the_evaluation_for_the_kfp_ui(local_runs):
    evaluate_dir = Path(local_runs.blessed.outputs["evaluate"]).parent
    executor_output = json.loads((evaluate_dir / "executor_output.json").read_text())
    artifacts = {name: value["artifacts"][0] for name, value in executor_output["artifacts"].items()}
    matrix = artifacts["confusion_matrix"]["metadata"]["confusionMatrix"]
    assert [c["displayName"] for c in matrix["annotationSpecs"]] == ["blue", "green", "red"]
    assert "test_accuracy" in artifacts["metrics"]["metadata"]
    assert artifacts["report"]["uri"].endswith("/report.html")
    assert (evaluate_dir / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert executor_output["parameterValues"]["Output"] is True


def test_an_unblessed_model_stops_before_deploy(local_runs):
    run = local_runs.unblessed
    assert not run.blessing["blessed"]
    assert "batch_predict" not in run.outputs
    assert run.served == {"stable": 1}, "the blessed version stays served"
    assert sorted(p.name for p in (local_runs.serving / "tiny").iterdir() if p.name.isdigit()) == ["1"]
    assert [v.champion for v in run.model_versions] == [False], "registered, but not the champion"


def test_one_version_number_per_model_in_export_registry_deployment_predictions_and_report(local_runs):
    """The second run's export is version 2 (the registry holds 1), as the registry numbers it; the
    first's is 1 everywhere, its deployment and its batch rows included."""
    for run, version in ((local_runs.blessed, 1), (local_runs.unblessed, 2)):
        assert model_version(run.outputs["export"]) == ("tiny", version)
        assert [v.version for v in run.model_versions] == [version]
        evaluated = json.loads(Path(run.outputs["evaluate"], "evaluation.json").read_text())["model"]
        assert model_version(evaluated) == ("tiny", version)
    assert local_runs.blessed.served == {"stable": 1}
    assert local_runs.blessed.batch_summary["model"]["version"] == "1"


def test_unchanged_data_and_config_reuse_ingest_and_transform_from_the_cache(local_runs):
    first, second = local_runs.blessed.outputs, local_runs.unblessed.outputs
    assert second["ingest"] == first["ingest"] and second["transform"] == first["transform"]
    assert second["train"] != first["train"], "training is never cached"


def test_a_failing_step_fails_the_run_and_its_mlflow_run(tmp_path):
    (tmp_path / "images" / "cat").mkdir(parents=True)
    (tmp_path / "images" / "cat" / "notes.jpg").write_text("not an image")
    config = make_config(*SETTINGS)
    with pytest.raises(PipelineRunError, match="ingest"):
        run_local({"data_source": str(tmp_path / "images"), "serving_base_path": str(tmp_path / "serving")}, config,
                  pipeline_root=str(tmp_path / "kfp"), log_file=str(tmp_path / "run.log"))
    [parent] = pipeline_runs(config, data_source=str(tmp_path / "images"))
    assert parent.info.status == "FAILED"
    assert "no image was accepted" in (tmp_path / "run.log").read_text()


# The retrain tests add images to the shared tiny dataset: they come last.
def retrain(local_runs: LocalRuns, *flags: str) -> int:
    return main(["retrain", "--data", str(local_runs.images), "--min-hours-between-runs", "0",
                 *(f"--set={setting}" for setting in SETTINGS), *flags])


def test_retrain_does_nothing_on_unchanged_data_then_triggers_on_new_images(local_runs, capsys, tmp_path):
    assert retrain(local_runs, "--dry-run") == 0
    assert "Retrain now: no, nothing calls for it." in capsys.readouterr().out
    write_colour_classes(tmp_path, per_class=4, seed=1)
    for path in tmp_path.rglob("*.*"):
        target = local_runs.images / path.parent.name / f"new_{path.name}"
        target.write_bytes(path.read_bytes())
    assert retrain(local_runs, "--dry-run") == 0
    decision = capsys.readouterr().out
    assert decision.startswith("Retrain now: yes.")
    assert "12 new inputs" in decision and "90 -> 102" in decision


def test_a_triggered_retrain_is_recorded_before_it_starts(local_runs, capsys):
    config = make_config(*SETTINGS)
    # No KFP API listens on port 9: the submission fails, and the reserved run says so.
    assert retrain(local_runs, "--host", "http://127.0.0.1:9") == 1
    assert capsys.readouterr().out.startswith("Retrain now: yes.")
    newest = pipeline_runs(config, data_source=str(local_runs.images), max_results=1)[0]
    assert newest.data.tags["cvpipe.trigger"] == "retrain" and newest.info.status == "FAILED"
    assert newest.data.tags[DATA_INPUTS_TAG] == "102"
    # within the cool-down, the next call holds
    assert main(["retrain", "--data", str(local_runs.images), "--dry-run",
                 *(f"--set={setting}" for setting in SETTINGS)]) == 0
    assert capsys.readouterr().out.startswith("Retrain now: no, on hold.")


class KfpApiStandIn(BaseHTTPRequestHandler):
    """Answers the KFP v2beta1 REST calls kfp.Client makes to submit and schedule, and records them.
    It checks what cvpipe sends; the real API server's behaviour is not in question here."""

    requests: list[tuple[str, str, dict]] = []

    def do_GET(self):
        self.requests.append(("GET", self.path, {}))
        self._reply({"tag_name": "2.5.0", "multi_user": False} if "healthz" in self.path else {})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(("POST", self.path, body))
        ids = {"experiments": {"experiment_id": "exp-1"}, "runs": {"run_id": "run-1", "experiment_id": "exp-1"},
               "recurringruns": {"recurring_run_id": "recurring-1"}}
        self._reply({**body, **ids[self.path.split("?")[0].rsplit("/", 1)[-1]]})

    def _reply(self, body: dict):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def kfp_api():
    KfpApiStandIn.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), KfpApiStandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", KfpApiStandIn.requests
    server.shutdown()


def posted(requests: list, resource: str) -> dict:
    [body] = [body for method, path, body in requests if method == "POST" and path.endswith(f"/v2beta1/{resource}")]
    return body


def test_submit_sends_the_compiled_pipeline_and_typed_arguments(kfp_api, capsys, caplog):
    host, requests = kfp_api
    assert main(["submit", "--host", host, "--data", "/data/images", "--param", "epochs=3", "--serving-base-path",
                 "/models", "--pvc", "cvpipe-data:/data", "--experiment", "nightly", "--run-name", "try"]) == 0
    assert capsys.readouterr().out.strip() == "run-1"
    # pod-local paths are named: the default SQLite MLflow store, /models without its volume
    assert "is a file inside each step's pod" in caplog.text and "/models is on no mounted volume" in caplog.text
    assert posted(requests, "experiments")["display_name"] == "nightly"
    run = posted(requests, "runs")
    assert run["display_name"] == "try" and run["experiment_id"] == "exp-1"
    assert run["runtime_config"]["parameters"] == {"data_source": "/data/images", "epochs": 3,
                                                   "serving_base_path": "/models"}
    spec = run["pipeline_spec"]
    assert spec["pipeline_spec"]["pipelineInfo"]["name"] == "cvpipe"
    assert "exec-ingest" in spec["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_schedule_creates_one_recurring_run_at_a_time_without_catch_up(kfp_api, capsys):
    host, requests = kfp_api
    assert main(["schedule", "--host", host, "--cron", "0 3 * * *", "--data", "gs://bucket/images"]) == 0
    assert capsys.readouterr().out.strip() == "recurring-1"
    recurring = posted(requests, "recurringruns")
    assert recurring["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}
    assert recurring["max_concurrency"] == 1 and recurring["no_catchup"] is True and recurring["mode"] == "ENABLE"
    assert recurring["runtime_config"]["parameters"] == {"data_source": "gs://bucket/images"}


def test_an_unreachable_kfp_api_is_a_clear_error(caplog):
    assert main(["submit", "--host", "http://127.0.0.1:9", "--data", "/data/images"]) == 1
    assert "Kubeflow Pipelines at http://127.0.0.1:9" in caplog.text


def test_an_unknown_pipeline_parameter_is_refused_before_anything_runs(tmp_path, caplog):
    (tmp_path / "images" / "cat").mkdir(parents=True)
    assert main(["run", "--data", str(tmp_path / "images"), "--workdir", str(tmp_path / "work"),
                 "--param", "epoch=3"]) == 1
    assert "the pipeline has no parameter 'epoch'" in caplog.text
    assert not (tmp_path / "work").exists()

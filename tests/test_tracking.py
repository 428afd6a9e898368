"""MLflow tracking against a real `mlflow server` and a local SQLite store, on real stage outputs
of a tiny demo dataset (ingest, transform, train, export and evaluate all run for real)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from components.config import Config
from components.demo_data import generate_demo_dataset
from components.evaluate.run import run_evaluate
from components.export.run import run_export
from components.ingest.run import run_ingest
from components.manifest import code_version, read_manifest
from components.tracking.client import UiPage, experiment_id, mlflow_client, safe_key, tracking_uri, ui_page
from components.tracking.registry import ModelVersionInfo, champion_model_dir, register_model
from components.tracking.runs import finish_run, log_benchmark, log_stage, stage_runs, start_pipeline_run
from components.train.run import run_training
from components.transform.run import run_transform
from conftest import make_config
from mlflow_server import mlflow_server  # noqa: F401

STAGES = ("ingest", "transform", "train", "export", "evaluate")
# A class name MLflow refuses in a metric key as it is.
ODD_CLASS = "big circle/2"


@dataclass(frozen=True)
class Outputs:
    ingest: str
    transform: str
    train: str
    export: str
    evaluate: str
    labels: list[str]
    images: list[bytes]  # real PNG bytes


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Outputs:
    """Real outputs of every stage for 5 demo classes x 12 images (32x32, one epoch)."""
    root = tmp_path_factory.mktemp("tracking")
    images = root / "images"
    generate_demo_dataset(images, seed=5, per_class=12)
    first = sorted((images / "circle").iterdir())[0]
    shutil.copy(first, images / "circle" / f"copy{first.suffix}")  # a duplicate reject
    (images / "circle" / "empty.png").write_bytes(b"")  # an empty_file reject
    config = stage_config()
    ingest = run_ingest(str(images), str(root / "ingest"), config)
    transform = run_transform(ingest.output, str(root / "transform"), config)
    train = run_training(transform.output, str(root / "train"), config)
    labels = train.training["labels"]
    export = run_export(train.output, transform.output, str(root / "export" / "classifier"), config).output
    evaluate = run_evaluate(export, ingest.output, str(root / "evaluate"), config).output
    return Outputs(ingest.output, transform.output, train.output, export, evaluate, labels,
                   [png_bytes(color) for color in ((250, 10, 10), (10, 250, 10), (10, 10, 250))])


def stage_config(*overrides: str) -> Config:
    return make_config("transform.image_size=32", "train.epochs=1", "train.batch_size=16",
                       "train.tensorboard_images=0", "export.tflite=[float16]", "export.warmup_requests=1",
                       "evaluate.min_accuracy=0", "evaluate.min_class_recall=0", *overrides)


def png_bytes(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 16), color).save(buffer, format="PNG")
    return buffer.getvalue()


def server_config(uri: str, monkeypatch, registered_model: str = "cvpipe-classifier") -> Config:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    config = stage_config()
    config.tracking.registered_model = registered_model
    return config


def dataset_inputs(run: mlflow.entities.Run) -> set[tuple[str, str]]:
    """The (name, context) of a run's dataset inputs."""
    return {(d.dataset.name, {t.key: t.value for t in d.tags}["mlflow.data.context"]) for d in run.inputs.dataset_inputs}


def artifact_paths(client: mlflow.MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, path)}


def test_pipeline_run_has_a_child_run_per_stage(outputs, mlflow_server, monkeypatch):
    config = server_config(mlflow_server, monkeypatch)
    parent = start_pipeline_run(config, run_name="pipeline-test", tags={"kfp.run_id": "kfp-123"})
    children = {stage: log_stage(stage, getattr(outputs, stage), config, parent_run_id=parent)
                for stage in STAGES}
    finish_run(parent, config)

    client = mlflow.MlflowClient(mlflow_server)
    run = client.get_run(parent)
    assert run.info.status == "FINISHED" and run.info.run_name == "pipeline-test"
    assert run.data.tags["kfp.run_id"] == "kfp-123" and run.data.tags["cvpipe.code_version"] == code_version()
    assert run.data.params["train.epochs"] == "1" and run.data.params["transform.image_size"] == "32"
    assert json.loads(run.data.params["ingest.formats"]) == config.ingest.formats
    assert run.data.params["tracking.experiment"] == "cvpipe"
    found = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert {r.info.run_name: r.info.run_id for r in found} == children
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "cvpipe" and experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # The parent run has the datasets ingest made, by split: the digest starts the ingest output's fingerprint.
    ingest_fingerprint = read_manifest(outputs.ingest, "ingest").fingerprint
    assert dataset_inputs(run) == {("train", "training"), ("valid", "validation"), ("test", "test")}
    assert {d.dataset.digest for d in run.inputs.dataset_inputs} == {ingest_fingerprint[:12]}

    runs = {stage: client.get_run(run_id) for stage, run_id in children.items()}
    for stage, child in runs.items():
        manifest = read_manifest(getattr(outputs, stage), stage)
        assert child.info.status == "FINISHED"
        assert child.data.tags["cvpipe.stage"] == stage and child.data.tags["cvpipe.output"] == getattr(outputs, stage)
        assert child.data.tags["cvpipe.fingerprint"] == manifest.fingerprint
        assert child.data.tags["cvpipe.code_version"] == manifest.code_version
        assert "manifest.json" in artifact_paths(client, child.info.run_id)
        # The run spans the stage's own run, not the moment it was logged.
        assert (child.info.start_time, child.info.end_time) == manifest.span_ms()
        assert child.info.start_time <= child.info.end_time
    assert runs["train"].info.start_time >= runs["transform"].info.end_time  # each stage started after the last
    assert {stage: dataset_inputs(r) for stage, r in runs.items()} == {
        "ingest": {("train", "training"), ("valid", "validation"), ("test", "test")},
        "transform": set(), "train": {("train", "training"), ("valid", "validation")}, "export": set(),
        "evaluate": {("test", "test"), ("valid", "validation")}}
    ingest_source = json.loads(runs["train"].inputs.dataset_inputs[0].dataset.source)
    assert ingest_source == {"uri": read_manifest(outputs.ingest, "ingest").inputs["images"]}  # ingest logged it first
    # one meaning in every stage: the ingest output's fingerprint
    assert {stage: r.data.tags["cvpipe.dataset_fingerprint"] for stage, r in runs.items()} == {
        stage: ingest_fingerprint for stage in ("ingest", "transform", "train", "export", "evaluate")}

    ingest = runs["ingest"]
    stats = json.loads(Path(outputs.ingest, "stats.json").read_text())
    assert ingest.data.metrics["splits.train.images"] == stats["splits"]["train"]["images"]
    assert ingest.data.metrics["accepted"] == stats["accepted"] == 60
    assert ingest.data.metrics["rejects.duplicate"] == 1 and ingest.data.metrics["rejects.empty_file"] == 1
    assert ingest.data.params["ingest.min_side"] == "32"
    assert {"stats.json", "labels.txt", "rejects_summary.json"} <= artifact_paths(client, ingest.info.run_id)
    summary = json.loads(Path(client.download_artifacts(ingest.info.run_id, "rejects_summary.json")).read_text())
    assert summary["counts"] == {"duplicate": 1, "empty_file": 1} and len(summary["first"]) == 2

    transform = runs["transform"]
    assert {"channel_mean.0", "channel_std.2", "images.train", "bytes_per_image"} <= set(transform.data.metrics)
    assert transform.data.params["transform.image_size"] == "32"
    assert {"transform_fn", "transformed_metadata", "stats.json"} <= artifact_paths(client, transform.info.run_id)
    assert "transform_fn/saved_model.pb" in artifact_paths(client, transform.info.run_id, "transform_fn")

    train = runs["train"]
    training = json.loads(Path(outputs.train, "training.json").read_text())
    for metric in ("loss", "accuracy", "val_loss", "val_accuracy"):
        history = client.get_metric_history(train.info.run_id, metric)
        assert [(m.step, m.value) for m in history] == [(e["epoch"], e[metric]) for e in training["epochs"]]
    assert len(training["epochs"]) == 1
    assert train.data.metrics["final.test.accuracy"] == training["final"]["test"]["accuracy"]
    assert {"wall_seconds", "train_images_per_second", "final.valid.loss"} <= set(train.data.metrics)
    assert train.data.params["train.model"] == "small_cnn" and train.data.params["train.augment.color"] == "True"
    assert {"training.json", "training_curves.png", "history.csv"} <= artifact_paths(client, train.info.run_id)

    export = runs["export"]
    exported = json.loads(Path(outputs.export, "export.json").read_text())
    float16 = exported["tflite"]["float16"]
    assert export.data.metrics["tflite.float16.accuracy_delta"] == float16["accuracy_delta"]
    assert export.data.metrics["tflite.float16.bytes"] == float16["bytes"] and export.data.metrics["version"] == 1
    assert artifact_paths(client, export.info.run_id) == {"manifest.json", "export.json"}

    evaluate = runs["evaluate"].data.metrics
    evaluation = json.loads(Path(outputs.evaluate, "evaluation.json").read_text())["splits"]
    test, valid = evaluation["test"], evaluation["valid"]
    assert evaluate["test.accuracy"] == test["accuracy"] and evaluate["valid.top_k_accuracy"] == valid["top_k_accuracy"]["value"]
    assert evaluate["test.log_loss"] == test["log_loss"] and evaluate["test.ece"] == test["ece"]
    assert evaluate["blessed"] == 1
    assert evaluate["test.macro.f1"] == test["macro"]["f1"] and evaluate["test.weighted.recall"] == test["weighted"]["recall"]
    label = outputs.labels[0]
    assert evaluate[f"test.class.{label}.precision"] == test["per_class"][label]["precision"]
    assert {f"test.class.{name}.{metric}" for name, row in test["per_class"].items() for metric, value in row.items()
            if value is not None} <= set(evaluate)  # None values are skipped
    assert artifact_paths(client, runs["evaluate"].info.run_id) == {
        "manifest.json", "evaluation.json", "blessing.json", "evaluation.html", "predictions.jsonl",
        "confusion_matrix_test.png", "confusion_matrix_valid.png", "calibration_test.png", "calibration_valid.png"}
    assert safe_key(f"test.class.{ODD_CLASS}.recall") == "test.class.big_circle_2.recall"


def test_log_stage_refuses_an_unknown_stage_and_an_unfinished_output(outputs, tmp_path):
    config = stage_config("tracking.tracking_uri=sqlite:///" + str(tmp_path / "unused.db"))
    with pytest.raises(ValueError, match="'deploy'"):
        log_stage("deploy", outputs.train, config)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        log_stage("train", str(tmp_path), config)
    with pytest.raises(ValueError, match="'train' output, not a ingest"):
        log_stage("ingest", outputs.train, config)


def test_stage_runs_are_found_by_output_and_fingerprint(outputs, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    config = stage_config()
    fingerprint = read_manifest(outputs.ingest, "ingest").fingerprint
    assert stage_runs("ingest", outputs.ingest, fingerprint, config) == []  # not even an experiment
    run_id = log_stage("ingest", outputs.ingest, config)
    assert stage_runs("ingest", outputs.ingest, fingerprint, config) == [run_id]
    assert stage_runs("ingest", outputs.ingest, "another fingerprint", config) == []
    assert stage_runs("transform", outputs.ingest, fingerprint, config) == []
    assert stage_runs("ingest", outputs.transform, fingerprint, config) == []


def test_registered_versions_move_the_champion_alias_only_when_blessed(outputs, mlflow_server, monkeypatch,
                                                                      tmp_path):
    config = server_config(mlflow_server, monkeypatch, registered_model="classifier-aliases")
    name = config.tracking.registered_model
    assert champion_model_dir(config, str(tmp_path / "none")) is None  # no registered model yet
    parent = start_pipeline_run(config, run_name="aliases")
    run_id = log_stage("export", outputs.export, config, parent_run_id=parent)

    first = register_model(outputs.export, config, run_id=run_id, blessed=True,
                           metrics={"test.accuracy": 0.85}, parent_run_id=parent)
    assert first == ModelVersionInfo(name, 1, f"models:/{name}/1", True)
    second = register_model(outputs.export, config, run_id=run_id, blessed=False)
    assert (second.version, second.champion) == (2, False)
    client = mlflow.MlflowClient(mlflow_server)
    assert client.get_registered_model(name).aliases == {"champion": "1"}
    third = register_model(outputs.export, config, run_id=run_id, blessed=True)
    assert third.version == 3 and client.get_registered_model(name).aliases == {"champion": "3"}

    v1, v2 = client.get_model_version(name, "1"), client.get_model_version(name, "2")
    assert v1.tags["cvpipe.blessed"] == "true" and v2.tags["cvpipe.blessed"] == "false"
    assert v1.tags["test.accuracy"] == "0.85" and v1.tags["cvpipe.export_dir"] == outputs.export
    assert v1.tags["cvpipe.dataset_fingerprint"] == read_manifest(outputs.ingest, "ingest").fingerprint
    assert v1.tags["cvpipe.code_version"] == read_manifest(outputs.export, "export").code_version
    assert v1.run_id == run_id
    models = client.get_run(run_id).outputs.model_outputs  # one LoggedModel per registration
    assert len(models) == 3 and {client.get_logged_model(m.model_id).artifact_location for m in models} == {
        client.get_model_version(name, str(v)).source for v in (1, 2, 3)}
    model_of_version = {json.loads(client.get_logged_model(m.model_id).tags["mlflow.modelVersions"])[0]["version"]:
                        m.model_id for m in models}  # each model links to its version
    assert sorted(model_of_version) == ["1", "2", "3"]
    # The pipeline run: the first version's model and headline metrics; the model: its metrics, by dataset.
    pipeline_run = client.get_run(parent)
    assert [m.model_id for m in pipeline_run.outputs.model_outputs] == [model_of_version["1"]]
    assert pipeline_run.data.metrics == {"test.accuracy": 0.85, "blessed": 1.0, "registered_version": 1.0}
    model_metrics = {m.key: m for m in client.get_logged_model(model_of_version["1"]).metrics}
    assert model_metrics["test.accuracy"].value == 0.85 and model_metrics["test.accuracy"].dataset_name == "test"
    assert model_metrics["blessed"].value == 1.0 and model_metrics["registered_version"].value == 1.0
    finish_run(parent, config)

    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    predictions = model.predict(pd.DataFrame({"image_bytes": outputs.images * 30}))  # 90 rows: two batches
    assert list(predictions.columns) == ["label", "score", "class_id", "probabilities"]
    assert len(predictions) == 90 and set(predictions["label"]) <= set(outputs.labels)
    assert [outputs.labels[i] for i in predictions["class_id"]] == predictions["label"].tolist()
    np.testing.assert_allclose([sum(p) for p in predictions["probabilities"]], 1.0, rtol=1e-5)
    np.testing.assert_allclose(predictions["score"], [max(p) for p in predictions["probabilities"]])
    assert model.predict(outputs.images)["label"].tolist() == predictions["label"].tolist()[:3]

    # Only the config names the server: mlflow's global tracking URI plays no part.
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    config.tracking.tracking_uri = mlflow_server
    saved_model = champion_model_dir(config, str(tmp_path / "champion"))
    assert saved_model.startswith(str(tmp_path / "champion"))
    loaded = tf.saved_model.load(saved_model)
    labels = loaded.signatures["serving_default"](image_bytes=tf.constant(outputs.images))["label"].numpy()
    assert set(labels.astype(str)) <= set(outputs.labels)


def test_a_fresh_process_loads_the_champion_as_pyfunc(outputs, mlflow_server, monkeypatch, tmp_path):
    config = server_config(mlflow_server, monkeypatch, registered_model="classifier-fresh-process")
    run_id = start_pipeline_run(config)
    register_model(outputs.export, config, run_id=run_id, blessed=False)
    assert champion_model_dir(config, str(tmp_path)) is None  # a registered model without champion
    register_model(outputs.export, config, run_id=run_id, blessed=True)
    finish_run(run_id, config)
    script = ("import sys, mlflow, pandas as pd\n"
              f"model = mlflow.pyfunc.load_model('models:/{config.tracking.registered_model}@champion')\n"
              f"print(model.predict(pd.DataFrame({{'image_bytes': [{outputs.images[0]!r}]}}))['label'][0])\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] in outputs.labels


def test_an_existing_experiment_gets_the_model_training_kind(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    created = client.create_experiment("cvpipe")  # as an older cvpipe made it: no kind
    config = stage_config()
    assert experiment_id(mlflow_client(config.tracking), config.tracking) == created
    assert client.get_experiment(created).tags["mlflow.experimentKind"] == "custom_model_development"
    local = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert ui_page(config.tracking, created) == UiPage(  # a SQLite store's UI is started first
        f"http://127.0.0.1:5000/#/experiments/{created}?workflowType=machine_learning",
        f"mlflow server --backend-store-uri {local} --host 127.0.0.1 --port 5000")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000/")
    assert ui_page(config.tracking, "3", "abc") == UiPage(
        "http://mlflow.example:5000/#/experiments/3/runs/abc?workflowType=machine_learning")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///runs/mlflow.db")
    assert ui_page(config.tracking, "1").start_command == "make mlflow-ui"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file://{tmp_path}/mlruns")
    assert ui_page(config.tracking, "1") is None


def test_the_default_local_sqlite_store_tracks_and_registers(outputs, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    database = tmp_path / "store" / "mlflow.db"  # its directory does not exist yet
    config = stage_config(f"tracking.tracking_uri=sqlite:///{database}")
    assert tracking_uri(config.tracking) == f"sqlite:///{database}" and database.parent.is_dir()
    parent = start_pipeline_run(config)
    train_run = log_stage("train", outputs.train, config, parent_run_id=parent)
    version = register_model(outputs.export, config, run_id=train_run, blessed=True)
    finish_run(parent, config, status="FAILED")

    assert version == ModelVersionInfo("cvpipe-classifier", 1, "models:/cvpipe-classifier/1", True)
    client = mlflow.MlflowClient(f"sqlite:///{database}")
    assert client.get_run(parent).info.status == "FAILED"
    assert client.get_run(train_run).data.tags["mlflow.parentRunId"] == parent
    assert len(client.get_metric_history(train_run, "val_accuracy")) == 1
    assert list((tmp_path / "store" / "mlartifacts" / "cvpipe").rglob("training.json"))  # next to the database
    saved_model = champion_model_dir(config, str(tmp_path / "champion"))
    assert "serving_default" in tf.saved_model.load(saved_model).signatures
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking_uri(config.tracking) == "http://mlflow.example:5000"


def test_benchmark_results_become_a_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    results_file = tmp_path / "results.md"
    results_file.write_text("| benchmark |\n")
    rows = [{"benchmark": "ingest", "variant": "Beam, 2 workers", "images": 3000, "images_per_s": 650.5,
             "vs_baseline": 0.75, "note": "text is not a metric"}]
    run_id = log_benchmark({"rows": rows}, [str(results_file)], stage_config())
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.info.run_name == "bench" and run.info.status == "FINISHED"
    assert run.data.metrics == {"ingest.Beam__2_workers.images": 3000, "ingest.Beam__2_workers.images_per_s": 650.5,
                                "ingest.Beam__2_workers.vs_baseline": 0.75}
    assert artifact_paths(mlflow.MlflowClient(), run_id) == {"results.md"}

"""The register stage against a real `mlflow server`: evaluate -> register moves the champion only on blessing."""

from __future__ import annotations

import subprocess
import sys

import mlflow

from components.evaluate.champion import registered_champion
from components.evaluate.run import run_evaluate
from components.register import run_register
from components.tracking.registry import champion_model_dir
from components.tracking.runs import finish_run, start_pipeline_run
from conftest import make_config
from mlflow_server import mlflow_server  # noqa: F401


def test_a_worse_model_is_not_blessed_and_the_champion_stays(tiny_run, tiny_export, worse_export, mlflow_server,
                                                             monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    config = make_config("tracking.registered_model=register-test", "evaluate.min_accuracy=0.5",
                         "evaluate.min_class_recall=0")
    client = mlflow.MlflowClient(mlflow_server)
    parent = start_pipeline_run(config, run_name="register-test")

    # No champion yet: absolute thresholds alone bless the good model, which becomes the champion.
    assert champion_model_dir(config, str(tmp_path / "none")) is None
    good = run_evaluate(tiny_export, tiny_run.ingest, str(tmp_path / "good"), config)
    assert good.blessing["blessed"]
    first = run_register(tiny_export, good.output, config, parent_run_id=parent)
    assert (first.version, first.champion) == (1, True)

    # The worse model, evaluated against the registered champion: refused; registered, alias unchanged.
    champion = registered_champion(config, str(tmp_path / "champion"))
    worse = run_evaluate(worse_export, tiny_run.ingest, str(tmp_path / "worse"), config, champion=champion)
    assert not worse.blessing["blessed"]
    assert worse.blessing["champion"]["version"] == 1  # the registered champion, its run's page on the server
    assert worse.blessing["champion"]["run_url"].startswith(f"{mlflow_server}/#/experiments/")
    assert any(check["kind"] == "change" and not check["passed"] for check in worse.blessing["checks"])
    second = run_register(worse_export, worse.output, config, parent_run_id=parent)
    assert (second.version, second.champion) == (2, False)
    assert client.get_registered_model("register-test").aliases == {"champion": "1"}
    versions = {v: client.get_model_version("register-test", v) for v in ("1", "2")}
    assert versions["1"].tags["cvpipe.blessed"] == "true" and versions["2"].tags["cvpipe.blessed"] == "false"
    assert float(versions["1"].tags["test.accuracy"]) == good.evaluation["splits"]["test"]["accuracy"]

    # The pipeline run carries the latest registration's headline metrics and both models.
    pipeline_run = client.get_run(parent)
    assert pipeline_run.data.metrics["registered_version"] == 2 and pipeline_run.data.metrics["blessed"] == 0
    assert pipeline_run.data.metrics["test.accuracy"] == worse.evaluation["splits"]["test"]["accuracy"]
    assert {"test.macro_f1", "valid.accuracy", "valid.macro_f1"} <= set(pipeline_run.data.metrics)
    assert len(pipeline_run.outputs.model_outputs) == 2

    finish_run(parent, config)
    children = client.search_runs([client.get_run(parent).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.info.run_name for r in children) == ["register", "register"]


def test_register_refuses_an_evaluation_of_another_model(tiny_run, tiny_export, worse_export, tmp_path):
    good = run_evaluate(tiny_export, tiny_run.ingest, str(tmp_path / "good"), make_config())
    done = subprocess.run([sys.executable, "-m", "components.register", "--model", worse_export,
                           "--evaluation", good.output], capture_output=True, text=True)
    assert done.returncode == 1 and f"evaluated {tiny_export}, not {worse_export}" in done.stderr

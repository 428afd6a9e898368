"""The tune stage: KerasTuner searches of real training runs on the tiny transform output, its command line,
its MLflow runs, the overlay that reproduces the best trial, a search resumed after kill -9, the median stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from components.config import ConfigError, load_config
from components.tracking.client import tracking_uri
from components.tracking.runs import child_runs
from components.tune.space import hyperparameters, overlay, searched_values
from conftest import make_config

# The search settings of every run here; `python -m components.train` gets the same base settings.
BASE = ("train.tensorboard_images=0", "transform.image_size=32")
CLI = (sys.executable, "-m")


def search_command(transformed: str, output: Path, *flags: str) -> list[str]:
    return [*CLI, "components.tune", "--transformed", transformed, "--output", str(output), "--algorithm", "random",
            *[item for setting in BASE for item in ("--set", setting)], *flags]


def trained(output: Path) -> dict:
    return json.loads((output / "training.json").read_text())


@pytest.fixture(scope="module")
def search(tiny_run, tmp_path_factory) -> Path:
    """Three random trials of two epochs through the command line, tracked in the test MLflow store."""
    output = tmp_path_factory.mktemp("tune") / "search"
    done = subprocess.run(search_command(tiny_run.transform, output, "--max-trials", "3", "--epochs", "2"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return output


def test_a_search_writes_every_trial_and_picks_the_best_by_the_objective(search):
    tuning = json.loads((search / "tuning.json").read_text())
    assert [t["trial"] for t in tuning["trials"]] == ["0", "1", "2"]
    for trial in tuning["trials"]:
        assert trial["status"] == "COMPLETED" and trial["epochs_run"] == 2
        training = trained(search / "trials" / trial["trial"])
        assert trial["objective"] == training["final"]["valid"]["accuracy"]
        assert training["config"]["train"]["epochs"] == 2
    assert tuning["best"]["objective"] == max(t["objective"] for t in tuning["trials"])
    assert tuning["best"] == next(t for t in tuning["trials"] if t["objective"] == tuning["best"]["objective"])
    assert (search / "tuning.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((search / "manifest.json").read_text())["stage"] == "tune"


def test_the_best_config_overlay_reproduces_the_best_trial_in_train(search, tiny_run, tmp_path):
    tuning = json.loads((search / "tuning.json").read_text())
    best = tuning["best"]
    overlay_file = search / "best_config.yaml"
    assert yaml.safe_load(overlay_file.read_text()) == overlay(best["hyperparameters"])
    by_config, by_tuning = tmp_path / "by-config", tmp_path / "by-tuning"
    common = ["--transformed", tiny_run.transform, "--epochs", "2", *[i for s in BASE for i in ("--set", s)]]
    for output, flags in ((by_config, ["--config", str(overlay_file)]), (by_tuning, ["--tuning", str(search)])):
        done = subprocess.run([*CLI, "components.train", "--output", str(output), *common, *flags],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    config_run, tuning_run = trained(by_config), trained(by_tuning)
    # Deterministic training: the same values, data and seed give the best trial's very weights.
    assert config_run["weights_sha256"] == tuning_run["weights_sha256"] == best["weights_sha256"]
    assert config_run["config"] == tuning_run["config"] == trained(search / "trials" / best["trial"])["config"]
    assert "tuning" not in config_run
    assert tuning_run["tuning"] == {"output": str(search), "algorithm": "random", "objective": "val_accuracy",
                                    "trials": 3, "best_trial": best["trial"], "best_objective": best["objective"],
                                    "hyperparameters": best["hyperparameters"]}


def test_the_search_is_an_mlflow_run_with_a_child_run_per_trial(search):
    client = mlflow.MlflowClient(tracking_uri(load_config().tracking))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              f"tags.`cvpipe.output` = '{search}'")
    (tune_run,) = [r for r in runs if r.data.tags["cvpipe.stage"] == "tune"]
    tuning = json.loads((search / "tuning.json").read_text())
    assert tune_run.data.metrics["best_objective"] == tuning["best"]["objective"]
    assert tune_run.data.metrics["trials"] == 3
    assert {a.path for a in client.list_artifacts(tune_run.info.run_id)} >= {"tuning.json", "best_config.yaml",
                                                                           "tuning.png"}
    trials = child_runs(load_config(), tune_run.info.run_id)
    assert sorted(r.info.run_name for r in trials) == ["trial 0", "trial 1", "trial 2"]
    for run in trials:
        record = tuning["trials"][int(run.info.run_name.split()[1])]
        assert run.data.params["train.learning_rate"] == str(record["hyperparameters"]["learning_rate"])
        assert run.data.metrics["final.valid.accuracy"] == record["objective"]
        assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 2, "a value per epoch"
        assert "training_curves.png" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_a_killed_search_resumes_without_repeating_finished_trials(search, tiny_run, tmp_path):
    output = tmp_path / "search"
    command = search_command(tiny_run.transform, output, "--max-trials", "3", "--epochs", "2",
                             "--set", "tracking.enabled=false")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (output / "trials" / "1").exists():  # trial 0 is finished, trial 1 has started
        assert process.poll() is None and time.monotonic() < deadline, "the search ended before it was killed"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = (output / "trials" / "0" / "training.json").read_bytes()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    tuning = json.loads((output / "tuning.json").read_text())
    assert [t["status"] for t in tuning["trials"]] == ["COMPLETED"] * 3
    assert (output / "trials" / "0" / "training.json").read_bytes() == finished, "trial 0 was not run again"
    assert "Resuming the search" in done.stderr
    # The search is deterministic for its seed, kill or not: the same trials as the uninterrupted one.
    uninterrupted = json.loads((search / "tuning.json").read_text())
    assert [t["hyperparameters"] for t in tuning["trials"]] == [t["hyperparameters"] for t in uninterrupted["trials"]]


@pytest.mark.parametrize("algorithm", ["bayesian", "hyperband"])
def test_each_algorithm_searches(tiny_run, tmp_path, algorithm):
    from components.tune.search import run_tuning

    config = make_config(*BASE, "tracking.enabled=false", f"tune.algorithm={algorithm}", "tune.max_trials=2",
                         "tune.epochs=2", "tune.hyperband_factor=2")
    tuning = run_tuning(tiny_run.transform, str(tmp_path / algorithm), config).tuning
    assert len(tuning["trials"]) == 2 and all(t["status"] == "COMPLETED" for t in tuning["trials"])
    if algorithm == "hyperband":  # its first bracket trains for fewer epochs than the most
        assert [t["hyperband"]["epochs"] for t in tuning["trials"]] == [1, 1]
        assert [t["epochs_run"] for t in tuning["trials"]] == [1, 1]


def test_no_trial_starts_once_the_time_budget_is_spent(tiny_run, tmp_path):
    from components.tune.search import run_tuning

    config = make_config(*BASE, "tracking.enabled=false", "tune.max_trials=5", "tune.epochs=1",
                         "tune.max_minutes=0.001")
    tuning = run_tuning(tiny_run.transform, str(tmp_path / "budget"), config).tuning
    assert len(tuning["trials"]) == 1, "the first trial ends after the budget: no second one starts"


@pytest.mark.parametrize("finished, stops", [([[1.01] * 4], True), ([[-0.01] * 4], False)])
def test_the_median_rule_stops_a_trial_worse_than_the_finished_ones(finished, stops):
    import tf_keras as keras

    from components.tune.search import MedianStop

    rng = np.random.default_rng(0)
    images, labels = rng.random((32, 4)).astype("float32"), rng.integers(0, 2, 32)
    model = keras.Sequential([keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    stop = MedianStop("val_accuracy", finished, after=2, min_trials=1)
    history = model.fit(images, labels, validation_data=(images, labels), epochs=4, callbacks=[stop], verbose=0)
    assert stop.stopped_epoch == (2 if stops else None)
    assert len(history.history["loss"]) == (2 if stops else 4)


def test_the_search_space_keeps_each_keys_type():
    config = load_config()
    space = hyperparameters(config.tune.space)
    assert {p.name for p in space.space} == {p.key for p in config.tune.space}
    values = searched_values({"augment.flip": 1, "batch_size": np.int64(32), "learning_rate": np.float64(0.01),
                              "tuner/epochs": 3})
    assert values == {"augment.flip": True, "batch_size": 32, "learning_rate": 0.01}
    assert type(values["augment.flip"]) is bool and type(values["batch_size"]) is int
    assert overlay(values) == {"train": {"augment": {"flip": True}, "batch_size": 32, "learning_rate": 0.01}}


@pytest.mark.parametrize("space, message", [
    ("[{key: nope, values: [1]}]", "nope: not a train setting"),
    ("[{key: augment, values: [1]}]", "augment: not a train setting"),
    ("[{key: model, values: [small_cnn, nope]}]", "model='nope'"),
    ("[{key: dropout, min: 0.5, max: 0.1}]", "needs min < max"),
    ("[{key: learning_rate, min: 0, max: 0.1, log: true}]", "min > 0 with log"),
    ("[{key: dropout, values: [0.1], min: 0.1, max: 0.2}]", "either values or min and max"),
    ("[{key: dropout, values: [0.1]}, {key: dropout, values: [0.2]}]", "each train key once"),
])
def test_a_bad_search_space_is_refused_with_the_key(space, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(overrides=[f"tune.space={space}"])

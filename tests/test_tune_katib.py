"""The search as a Katib Experiment (components.tune.katib, infra/katib): what is checked in is the rendering of
the defaults; every algorithm renders an Experiment that Katib's webhook rules (infra_checks.katib) and the v1beta1
schema accept, whose trial is a valid Job; every value Katib could assign reaches train as that value; and a real
trial, filled as Katib's controller fills it, trains and logs the metrics Katib's StdOut collector reads, the
last of them the objective components.tune uses."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.config import load_config
from components.tune.katib import (
    EPOCHS_PARAMETER, TRIAL_CONTAINER, experiment_yaml, hyperband_parallel_trials, render_experiment)
from infra_checks.katib import collect_metrics, experiment_problems, fill_trial
from infra_checks.kubeflow import MLFLOW_URI
from infra_checks.layout import KATIB
from infra_checks.manifests import one, pod_specs
from infra_checks.schema import k8s_schema_problems
from pipeline.image import PROJECT_IMAGE

ROOT = Path(__file__).resolve().parent.parent
CHECKED_IN_COMMAND = "python -m components.tune.katib --output infra/katib/experiment.yaml"


def trial_job(experiment: dict, assignments: dict[str, str] | None = None) -> dict:
    """The trial Katib's controller would make of the first value of every parameter (or `assignments`)."""
    first = {p["name"]: p["feasibleSpace"].get("list", [p["feasibleSpace"].get("min")])[0]
             for p in experiment["spec"]["parameters"]}
    return fill_trial(experiment, "cvpipe-tune-abc123", {**first, **(assignments or {})})


def set_overrides(args: list[str]) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args) if arg == "--set"]


def test_the_checked_in_experiment_is_the_rendering_of_the_defaults(builds):
    experiment = render_experiment(load_config())
    assert (KATIB / "experiment.yaml").read_text() == experiment_yaml(experiment, CHECKED_IN_COMMAND)
    built = one(builds["katib"], "Experiment", "cvpipe-tune")
    assert built == {**experiment, "metadata": {**experiment["metadata"], "namespace": "kubeflow"}}
    container = pod_specs(built)[0]["containers"][0]
    assert container["image"] == PROJECT_IMAGE
    assert {e["name"]: e.get("value") for e in container["env"]}["MLFLOW_TRACKING_URI"] == MLFLOW_URI


@pytest.mark.parametrize("overrides", [
    (), ("tune.algorithm=random",), ("tune.algorithm=hyperband",), ("tune.median_stop_after_epochs=0",),
    ("tune.objective=val_loss", "tune.algorithm=random"),
    ("tune.space=[{key: model, values: [small_cnn, mobilenet_v2]}, {key: hidden_units, min: 16, max: 256, log: true},"
     " {key: dropout, min: 0.0, max: 0.5}, {key: augment.flip, values: [false, true]}]", "tune.algorithm=random"),
], ids=["defaults", "random", "hyperband", "no-median-stop", "val_loss", "every-kind"])
def test_every_algorithm_renders_an_experiment_katib_accepts(overrides):
    config = load_config(overrides=overrides)
    experiment = render_experiment(config)
    assert experiment_problems(experiment) == []
    assert k8s_schema_problems(experiment) == []
    assert k8s_schema_problems(trial_job(experiment)) == []
    spec = experiment["spec"]
    assert spec["maxTrialCount"] == config.tune.max_trials
    assert spec["objective"]["objectiveMetricName"] == config.tune.objective
    assert spec["objective"]["type"] == ("maximize" if config.tune.objective == "val_accuracy" else "minimize")
    assert ("earlyStopping" in spec) == (config.tune.median_stop_after_epochs > 0)
    searched = {p["name"] for p in spec["parameters"]}
    assert searched == {p.key for p in config.tune.space} | (
        {EPOCHS_PARAMETER} if config.tune.algorithm == "hyperband" else set())
    if config.tune.algorithm == "hyperband":
        assert spec["parallelTrialCount"] == hyperband_parallel_trials(config.tune) == 9  # 3 ** floor(log3 10)


def test_katib_checks_reject_broken_experiments():
    good = render_experiment(load_config(overrides=["tune.algorithm=hyperband"]))
    assert experiment_problems(good) == []

    def broken(change) -> list[str]:
        experiment = copy.deepcopy(good)
        change(experiment["spec"])
        return experiment_problems(experiment) + k8s_schema_problems(experiment)

    def drop_trial_parameter(spec):
        spec["trialTemplate"]["trialParameters"].pop(1)

    def unknown_placeholder(spec):
        spec["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]["args"].append(
            "--set=train.l1=${trialParameters.l1}")

    def name_the_trial(spec):
        spec["trialTemplate"]["trialSpec"]["metadata"] = {"name": "fixed"}

    cases = {
        "spec.parameters not in trialParameters": drop_trial_parameter,
        "placeholders without a trialParameter": unknown_placeholder,
        "metadata.name and metadata.namespace": name_the_trial,
        "parallelTrialCount must be not less than 9": lambda s: s.update(parallelTrialCount=3),
        "parameterType 'float' is not supported": lambda s: s["parameters"][0].update(parameterType="float"),
        "distribution 'loguniform' is not supported": lambda s: s["parameters"][0]["feasibleSpace"].update(
            distribution="loguniform"),
        "feasibleSpace .max, .min and .step is not supported": lambda s: s["parameters"][1]["feasibleSpace"].update(
            min="1"),
        "names no container": lambda s: s["trialTemplate"].update(primaryContainerName="training"),
        "'maximise' is not maximize or minimize": lambda s: s["objective"].update(type="maximise"),
        "'last' is not min, max or latest": lambda s: s["objective"]["metricStrategies"][0].update(value="last"),
        "must capture a name and a value": lambda s: s["metricsCollectorSpec"]["source"]["filter"].update(
            metricsFormat=["val_accuracy=\\d+"]),
        "start_step must be greater or equal than one": lambda s: s["earlyStopping"]["algorithmSettings"][1].update(
            value="0"),
        "feasiblespace: unknown field": lambda s: s["parameters"][0].update(feasiblespace={}),
        "expected a list": lambda s: s["parameters"][1]["feasibleSpace"].update(list="16,32"),
    }
    for message, change in cases.items():
        problems = broken(change)
        assert any(message in p for p in problems), (message, problems)
    bayesian = copy.deepcopy(render_experiment(load_config()))
    bayesian["spec"]["algorithm"]["algorithmSettings"].append({"name": "eta", "value": "3"})
    assert any("unknown setting eta for algorithm bayesianoptimization" in p for p in experiment_problems(bayesian))


def test_every_value_katib_can_assign_reaches_train_as_that_value():
    config = load_config(overrides=[
        "tune.algorithm=random", "tune.space=[{key: model, values: [small_cnn, mobilenet_v2]}, {key: learning_rate, "
        "min: 1e-4, max: 1e-2, log: true}, {key: hidden_units, min: 16, max: 256, log: true}, {key: dropout, min: 0.0,"
        " max: 0.5, step: 0.25}, {key: l2, values: [0.0, 1e-5]}, {key: augment.flip, values: [false, true]}]"])
    experiment = render_experiment(config)
    for parameter in experiment["spec"]["parameters"]:
        space = parameter["feasibleSpace"]
        for value in space.get("list") or [space["min"], space["max"]]:
            job = trial_job(experiment, {parameter["name"]: value})
            args = job["spec"]["template"]["spec"]["containers"][0]["args"]
            trained = load_config(overrides=set_overrides(args)).train
            node = trained
            *sections, name = parameter["name"].split(".")
            for section in sections:
                node = getattr(node, section)
            assert getattr(node, name) == yaml.safe_load(value) or str(getattr(node, name)) == value, (parameter, value)
            assert trained.epochs == config.tune.epochs


def test_the_configurations_own_train_settings_go_to_every_trial():
    demo = load_config(str(ROOT / "configs" / "demo.yaml"),
                       ["tune.space=[{key: learning_rate, min: 1e-4, max: 1e-2, log: true}]", "train.l1=0.001"])
    job = trial_job(render_experiment(demo))
    trained = load_config(overrides=set_overrides(job["spec"]["template"]["spec"]["containers"][0]["args"])).train
    assert trained.augment == demo.train.augment and trained.l1 == 0.001
    assert trained == dataclasses.replace(demo.train, learning_rate=1e-4, epochs=demo.tune.epochs)


def test_a_trial_trains_and_katib_reads_its_objective_from_the_log(tiny_run, tmp_path):
    config = load_config(overrides=[
        "tune.epochs=2", "tune.algorithm=random", "train.batch_size=16", "train.tensorboard_images=0",
        "tune.space=[{key: learning_rate, min: 1e-3, max: 1e-2, log: true}, {key: augment.color, values: [false, true]}]"])
    experiment = render_experiment(config, transformed=tiny_run.transform, output=str(tmp_path / "trials"))
    job = trial_job(experiment, {"learning_rate": "0.003", "augment.color": "true"})
    [container] = [c for c in job["spec"]["template"]["spec"]["containers"] if c["name"] == TRIAL_CONTAINER]
    command = [sys.executable if part == "python" else part for part in container["command"]]
    # The StdOut collector reads the primary container's stdout and stderr as one log.
    done = subprocess.run([*command, *container["args"]], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    output = tmp_path / "trials" / "cvpipe-tune-abc123"
    training = json.loads((output / "training.json").read_text())
    assert training["config"]["train"]["learning_rate"] == 0.003 and training["config"]["train"]["augment"]["color"]
    objective = experiment["spec"]["objective"]
    names = [objective["objectiveMetricName"], *objective["additionalMetricNames"]]
    logs = collect_metrics(done.stdout, names, experiment["spec"]["metricsCollectorSpec"]["source"]["filter"]
                           ["metricsFormat"])
    accuracy = [float(m.value) for m in logs if m.name == "val_accuracy"]
    # One observation per epoch (what the median stopping rule compares), then the kept weights' (`latest`).
    assert accuracy[:-1] == [round(e["val_accuracy"], 4) for e in training["epochs"]]
    assert accuracy[-1] == round(training["final"]["valid"]["accuracy"], 4)  # components.tune's objective
    assert len([m for m in logs if m.name == "val_loss"]) == len(accuracy)
    assert all(m.timestamp for m in logs), "Katib orders observations by the time each log line starts with"


def test_the_command_line_refuses_what_katib_would_not_run(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "components.tune.katib", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)

    printed = run("--algorithm", "random", "--max-trials", "4")
    assert printed.returncode == 0, printed.stderr
    experiment = yaml.safe_load(printed.stdout)
    assert experiment["spec"]["algorithm"]["algorithmName"] == "random" and experiment["spec"]["maxTrialCount"] == 4
    hyperband = run("--algorithm", "hyperband", "--parallel-trials", "2")
    assert hyperband.returncode == 2 and "needs at least 9 parallel trials, got 2" in hyperband.stderr
    linear = run("--set", "tune.space=[{key: dropout, min: 0.0, max: 0.5}]")
    assert linear.returncode == 2 and "tune.space dropout: Katib's bayesianoptimization samples" in linear.stderr
    latest = run("--image", "ghcr.io/cvpipe/cvpipe:latest")
    assert latest.returncode == 2 and "is not pinned" in latest.stderr
    written = run("--output", str(tmp_path / "experiment.yaml"), "--namespace", "team-a", "--name", "flowers")
    assert written.returncode == 0, written.stderr
    experiment = yaml.safe_load((tmp_path / "experiment.yaml").read_text())
    assert experiment["metadata"] == {"name": "flowers", "namespace": "team-a", "labels": {
        "app.kubernetes.io/name": "flowers", "app.kubernetes.io/part-of": "cvpipe"}}

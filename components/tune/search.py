"""The tune stage: a KerasTuner search over `tune.space`, each trial a real training run.

Output directory:
  trials/<trial id>/   the trial's train output (components.train): model, training.json, curves
  keras_tuner/         the oracle's state: a killed search resumes from it (the same command)
  tuning.json          every trial (hyperparameters, objective, epochs, early stop, seconds) and the best
  best_config.yaml     the best trial's hyperparameters as a configuration overlay (`components.train --config`)
  tuning.png           the objective per trial and per hyperparameter
  manifest.json        written last: the search finished

KerasTuner's oracles choose the values (random, Bayesian optimisation, Hyperband); the trials run
`components.train.run.run_training` with the trial's values set on the configuration, so the overlay
reproduces a trial exactly (with `train.deterministic`, to the weights at the same epochs). A trial
stops early by the median stopping rule (`tune.median_stop_after_epochs`); Hyperband also gives
most trials few epochs (each trains from scratch for its bracket's epochs). A killed search resumes:
finished trials are kept, the trial that was running resumes from its own checkpoints.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import posixpath
import statistics
import time
from dataclasses import dataclass
from typing import Any, Mapping

import keras_tuner
import tensorflow as tf
import tf_keras as keras
import yaml

from components.artifacts import (BEST_CONFIG_FILE, DATASET_FINGERPRINT, MANIFEST_FILE, TRAINING_FILE, TRANSFORM_FINGERPRINT,
                                  TRIALS_DIR, TUNING_FILE, TUNING_PLOT_FILE, fingerprint)
from components.config import TUNE_OBJECTIVES, Config
from components.files import read_json, write_file, write_json
from components.manifest import Manifest, read_manifest, write_manifest
from components.staging import resumable_output
from components.train.inputs import count_examples
from components.train.run import run_training
from components.tune.plot import plot_tuning
from components.tune.space import hyperparameters, overlay, searched_values, with_overlay

logger = logging.getLogger(__name__)

ORACLE_DIR = "keras_tuner"
_PROJECT = "search"


@dataclass(frozen=True)
class TuneResult:
    output: str
    tuning: dict[str, Any]


class MedianStop(keras.callbacks.Callback):
    """Stops a trial whose best objective so far is worse than the median of the finished trials' best
    at the same epoch, from epoch `after` on, once `min_trials` trials have reached it (Katib's medianstop)."""

    def __init__(self, objective: str, finished_curves: list[list[float]], after: int, min_trials: int):
        super().__init__()
        self.objective, self.after, self.min_trials = objective, after, min_trials
        self.maximise = TUNE_OBJECTIVES[objective] == "max"
        self.curves = [_best_so_far(curve, self.maximise) for curve in finished_curves]
        self.best: float | None = None
        self.stopped_epoch: int | None = None

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        value = (logs or {}).get(self.objective)
        if value is None or not math.isfinite(value):
            return
        self.best = value if self.best is None else (max if self.maximise else min)(self.best, value)
        reached = [curve[epoch] for curve in self.curves if len(curve) > epoch]
        if not self.after or epoch + 1 < self.after or len(reached) < max(self.min_trials, 1):
            return
        median = statistics.median(reached)
        if (self.best < median) if self.maximise else (self.best > median):
            self.stopped_epoch = epoch + 1
            logger.info("Stopping the trial at epoch %d: its best %s %.4f is worse than the median %.4f of %d "
                        "finished trials", epoch + 1, self.objective, self.best, median, len(reached))
            self.model.stop_training = True


def _best_so_far(values: list[float], maximise: bool) -> list[float]:
    best, out = None, []
    for value in values:
        best = value if best is None else (max if maximise else min)(best, value)
        out.append(best)
    return out


class _BudgetSpent(Exception):
    """The search's time budget is spent: no further trial starts."""


class _Tuner(keras_tuner.engine.base_tuner.BaseTuner):
    """Runs each trial as a training run of the transform output on the trial's configuration."""

    def __init__(self, transform_dir: str, output: str, config: Config, oracle: keras_tuner.Oracle):
        with contextlib.redirect_stdout(io.StringIO()):  # KerasTuner prints "Reloading Tuner from ..."
            super().__init__(oracle=oracle, directory=posixpath.join(output, ORACLE_DIR), project_name=_PROJECT)
        self.transform_dir, self.output, self.config = transform_dir, output, config
        self.deadline = (time.monotonic() + config.tune.max_minutes * 60) if config.tune.max_minutes else None
        self.started_trials = 0

    def pre_create_trial(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise _BudgetSpent

    def run_trial(self, trial: keras_tuner.engine.trial.Trial, **_: Any) -> dict[str, float]:
        settings = self.config.tune
        values = trial.hyperparameters.values
        epochs = int(values.get("tuner/epochs", settings.epochs))
        trial_config = with_overlay(self.config, _deep_merge(overlay(values), {"train": {"epochs": epochs}}))
        out = trial_dir(self.output, trial.trial_id)
        self.started_trials += 1
        logger.info("Trial %s (%d of at most %d): %s, %d epochs", trial.trial_id, len(self.oracle.trials),
                    settings.max_trials, _describe(searched_values(values)), epochs)
        if tf.io.gfile.exists(posixpath.join(out, MANIFEST_FILE)):  # finished before a kill: not repeated
            training = read_json(posixpath.join(out, TRAINING_FILE))
            stopped = training.get("tuning", {}).get("stopped_at_epoch")
        else:
            stop = MedianStop(settings.objective, self._finished_curves(), settings.median_stop_after_epochs,
                              settings.median_stop_min_trials)
            started = time.monotonic()
            training = run_training(self.transform_dir, out, trial_config, extra_callbacks=[stop], tuning={
                "trial": trial.trial_id, "stopped_at_epoch": stop.stopped_epoch}).training
            stopped = stop.stopped_epoch
            if stopped:  # recorded after the fact: the callback decides while training runs
                training["tuning"]["stopped_at_epoch"] = stopped
                write_json(posixpath.join(out, TRAINING_FILE), training)
            keras.backend.clear_session()
            logger.info("Trial %s: %s %.4f in %.0f s%s", trial.trial_id, settings.objective,
                        objective_value(training, settings.objective), time.monotonic() - started,
                        f" (stopped early at epoch {stopped})" if stopped else "")
        return {settings.objective: objective_value(training, settings.objective)}

    def _finished_curves(self) -> list[list[float]]:
        """The objective per epoch of every completed trial (for the median stopping rule)."""
        curves = []
        for trial in self.oracle.trials.values():
            path = posixpath.join(trial_dir(self.output, trial.trial_id), TRAINING_FILE)
            if trial.status == "COMPLETED" and tf.io.gfile.exists(path):
                curves.append([epoch[self.config.tune.objective] for epoch in read_json(path)["epochs"]
                               if self.config.tune.objective in epoch])
        return curves


def trial_dir(output: str, trial_id: str) -> str:
    """The train output of trial `trial_id`."""
    return posixpath.join(output, TRIALS_DIR, trial_id)


def objective_value(training: Mapping[str, Any], objective: str) -> float:
    """A trial's objective: the validation metric of the weights its training kept (what train would
    export), from training.json."""
    return float(training["final"]["valid"][objective.removeprefix("val_")])


def run_tuning(transform_dir: str, output: str, config: Config, *, overwrite: bool = False) -> TuneResult:
    """Searches `config.tune.space` on a transform output; resumes an unfinished search in `output`."""
    settings = config.tune
    output = resumable_output(output, overwrite, "search")
    if not count_examples(transform_dir, "valid"):
        raise ValueError(f"{transform_dir} has no validation images: the search's objective "
                         f"({settings.objective}) is measured on the valid split (set ingest.splits.valid > 0)")
    transform = read_manifest(transform_dir, "transform")
    tf.io.gfile.makedirs(output)
    started = time.monotonic()
    tuner = _Tuner(transform_dir, output, config, _oracle(config))
    done_before = sum(t.status == "COMPLETED" for t in tuner.oracle.trials.values())
    if done_before:
        logger.info("Resuming the search in %s: %d trial(s) finished", output, done_before)
    try:
        tuner.search(verbose=0)
    except _BudgetSpent:
        logger.info("The time budget of %g minutes is spent: no further trial starts", settings.max_minutes)
    tuning = _summary(tuner, output, config, round(time.monotonic() - started, 1))
    best = tuning["best"]
    if best is None:
        raise RuntimeError(f"no trial of the search in {output} finished; see the trials' messages in {TUNING_FILE}")
    write_json(posixpath.join(output, TUNING_FILE), tuning)
    write_file(posixpath.join(output, BEST_CONFIG_FILE),
               f"# The best trial ({best['trial']}, {settings.objective} {best['objective']:.4f}) of {output}:\n"
               f"# python -m components.train --config {BEST_CONFIG_FILE} ...\n"
               + yaml.safe_dump(overlay(best["hyperparameters"]), sort_keys=True))
    plot_tuning(tuning, posixpath.join(output, TUNING_PLOT_FILE))
    write_manifest(output, Manifest(
        stage="tune",
        fingerprint=fingerprint({"transform": transform.fingerprint, "tune": config.to_dict()["tune"],
                                 "train": config.to_dict()["train"]}),
        inputs={"transform": transform_dir, TRANSFORM_FINGERPRINT: transform.fingerprint,
                DATASET_FINGERPRINT: transform.dataset_fingerprint},
        config={"tune": config.to_dict()["tune"], "train": config.to_dict()["train"]},
        outputs={"best": best, "trials": len(tuning["trials"])},
    ))
    logger.info("Search done in %.0f s: %d trials, best %s (%s %.4f): %s", tuning["wall_seconds"],
                len(tuning["trials"]), best["trial"], settings.objective, best["objective"],
                _describe(best["hyperparameters"]))
    return TuneResult(output, tuning)


def _oracle(config: Config) -> keras_tuner.Oracle:
    settings = config.tune
    common = dict(objective=keras_tuner.Objective(settings.objective, TUNE_OBJECTIVES[settings.objective]),
                  hyperparameters=hyperparameters(settings.space), tune_new_entries=False, allow_new_entries=False,
                  seed=settings.seed, max_consecutive_failed_trials=3)
    if settings.algorithm == "random":
        return keras_tuner.oracles.RandomSearchOracle(max_trials=settings.max_trials, **common)
    if settings.algorithm == "bayesian":
        return keras_tuner.oracles.BayesianOptimizationOracle(max_trials=settings.max_trials, **common)
    oracle = keras_tuner.oracles.HyperbandOracle(max_epochs=settings.epochs, factor=settings.hyperband_factor,
                                                 **common)
    oracle.max_trials = settings.max_trials  # Hyperband's own schedule, cut at the trial budget
    return oracle


def _summary(tuner: _Tuner, output: str, config: Config, wall_seconds: float) -> dict[str, Any]:
    """tuning.json: every trial the oracle knows, in the order they started, and the best."""
    settings = config.tune
    maximise = TUNE_OBJECTIVES[settings.objective] == "max"
    trials = []
    for trial_id in tuner.oracle.start_order:
        trial = tuner.oracle.trials[trial_id]
        path = posixpath.join(trial_dir(output, trial_id), TRAINING_FILE)
        training = read_json(path) if tf.io.gfile.exists(path) else None
        record: dict[str, Any] = {
            "trial": trial_id, "status": trial.status,
            "hyperparameters": searched_values(trial.hyperparameters.values),
            "objective": objective_value(training, settings.objective) if training else None,
            "epochs_run": training["epochs_run"] if training else 0,
            "stopped_at_epoch": training.get("tuning", {}).get("stopped_at_epoch") if training else None,
            "seconds": training["wall_seconds"] if training else None,
            "weights_sha256": training["weights_sha256"] if training else None,
            "output": trial_dir(output, trial_id),
        }
        if "tuner/epochs" in trial.hyperparameters.values:
            record["hyperband"] = {k.removeprefix("tuner/"): v for k, v in trial.hyperparameters.values.items()
                                   if k.startswith("tuner/")}
        if trial.message:
            record["message"] = trial.message.strip().splitlines()[-1][:500]
        trials.append(record)
    finished = [t for t in trials if t["status"] == "COMPLETED" and t["objective"] is not None]
    best = (max if maximise else min)(finished, key=lambda t: t["objective"]) if finished else None
    return {"algorithm": settings.algorithm, "objective": settings.objective,
            "direction": TUNE_OBJECTIVES[settings.objective], "max_trials": settings.max_trials,
            "max_minutes": settings.max_minutes, "epochs_per_trial": settings.epochs, "seed": settings.seed,
            "space": [p.key for p in settings.space], "trials": trials, "best": best,
            "trained_epochs": sum(t["epochs_run"] for t in trials), "wall_seconds": wall_seconds}


def _describe(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}"
                     for key, value in sorted(values.items()))


def _deep_merge(a: dict[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in b.items():
        a[key] = _deep_merge(a.get(key, {}), value) if isinstance(value, Mapping) else value
    return a

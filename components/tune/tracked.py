"""What MLflow keeps of a tune output: the search's result, its files, and every trial as a child run."""

from __future__ import annotations

import posixpath

from components.artifacts import BEST_CONFIG_FILE, TRIALS_DIR, TUNING_FILE, TUNING_PLOT_FILE
from components.manifest import Manifest
from components.tracking.stage_log import StageLog, numbers, read_optional

TUNED_TAG = "cvpipe.tuned"  # on the pipeline run: the search's algorithm, trials and best trial


def tracked_outputs(output: str, manifest: Manifest) -> StageLog:
    """The best objective, trial counts and the best hyperparameters (`best.`) as metrics; the trial
    outputs as child runs `trial <id>` (train outputs: params, epochs, curves); the best objective and a
    `cvpipe.tuned` tag on the pipeline run."""
    tuning = read_optional(output, TUNING_FILE) or {"trials": [], "best": None}
    best = tuning["best"] or {}
    finished = [t for t in tuning["trials"] if t.get("objective") is not None]
    metrics = {"best_objective": best.get("objective"), "trials": len(tuning["trials"]),
               "trials_stopped_early": sum(t.get("stopped_at_epoch") is not None for t in finished),
               "trained_epochs": tuning.get("trained_epochs"), "wall_seconds": tuning.get("wall_seconds")}
    metrics = numbers(metrics)
    metrics.update(numbers(best.get("hyperparameters", {}), "best."))
    history = [(step, {tuning["objective"]: t["objective"]}) for step, t in enumerate(finished, 1)] if finished else []
    children = [("train", posixpath.join(output, TRIALS_DIR, t["trial"]), f"trial {t['trial']}") for t in finished]
    parent = {f"tune.best_{tuning['objective']}": best["objective"]} if best else {}
    tag = (f"{tuning['algorithm']}: {len(tuning['trials'])} trials, best {best['trial']} "
           f"({tuning['objective']} {best['objective']:.4f})") if best else ""
    return StageLog(metrics, history=history, artifacts=(TUNING_FILE, BEST_CONFIG_FILE, TUNING_PLOT_FILE),
                    children=children, parent_metrics=parent, parent_tags={TUNED_TAG: tag} if tag else {})

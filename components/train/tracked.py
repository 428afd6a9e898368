"""What MLflow keeps of a train output: the metrics of every epoch, the final ones, the curves."""

from __future__ import annotations

from components.artifacts import CURVES_FILE, HISTORY_FILE, TRAINING_FILE
from components.manifest import Manifest
from components.tracking.stage_log import StageLog, numbers, read_optional


def tracked_outputs(output: str, manifest: Manifest) -> StageLog:
    """training.json's epochs as history (step = epoch), its final split metrics (`final.<split>.`)
    and throughput as metrics."""
    training = read_optional(output, TRAINING_FILE) or {}
    history = [(int(epoch["epoch"]), numbers({k: v for k, v in epoch.items() if k != "epoch"}))
               for epoch in training.get("epochs", [])]
    metrics = numbers(training.get("final"), "final.")
    metrics.update(numbers({k: training.get(k) for k in ("train_images_per_second", "wall_seconds")}))
    return StageLog(metrics, history=history, artifacts=(TRAINING_FILE, CURVES_FILE, HISTORY_FILE))

"""What MLflow keeps of an evaluate output: headline metrics per split, the blessing, the report."""

from __future__ import annotations

import posixpath

import tensorflow as tf

from components.artifacts import BLESSING_FILE, EVALUATION_FILE, PREDICTIONS_FILE, REPORT_FILE
from components.manifest import Manifest
from components.tracking.stage_log import StageLog, numbers, read_optional


def tracked_outputs(output: str, manifest: Manifest) -> StageLog:
    """Per split (`<split>.`): accuracy, log loss, ECE, top-k accuracy, the macro and weighted
    averages and every class's metrics (`<split>.class.<label>.`); `blessed` as 1 or 0. The plots
    are artifacts too."""
    evaluation = read_optional(output, EVALUATION_FILE) or {}
    metrics: dict[str, float] = {}
    for split, results in evaluation.get("splits", {}).items():
        headline = {name: results.get(name) for name in ("accuracy", "log_loss", "ece")}
        headline["top_k_accuracy"] = (results.get("top_k_accuracy") or {}).get("value")
        metrics.update(numbers(headline, f"{split}."))
        metrics.update(numbers({average: results.get(average) for average in ("macro", "weighted")}, f"{split}."))
        metrics.update(numbers(results.get("per_class"), f"{split}.class."))
    blessing = read_optional(output, BLESSING_FILE)
    if blessing is not None:
        metrics["blessed"] = float(bool(blessing["blessed"]))
    plots = [posixpath.basename(path) for path in sorted(tf.io.gfile.glob(posixpath.join(output, "*.png")))]
    return StageLog(metrics, artifacts=(EVALUATION_FILE, BLESSING_FILE, REPORT_FILE, PREDICTIONS_FILE, *plots))

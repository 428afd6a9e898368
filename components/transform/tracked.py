"""What MLflow keeps of a transform output: its statistics, its labels and the tf.transform graph."""

from __future__ import annotations

from components.artifacts import LABELS_FILE, STATS_FILE, TRANSFORM_FN_DIR, TRANSFORMED_METADATA_DIR
from components.manifest import Manifest
from components.tracking.stage_log import StageLog, numbers, read_optional


def tracked_outputs(output: str, manifest: Manifest) -> StageLog:
    """The numbers of stats.json as metrics."""
    return StageLog(numbers(read_optional(output, STATS_FILE)),
                    artifacts=(STATS_FILE, LABELS_FILE, TRANSFORM_FN_DIR, TRANSFORMED_METADATA_DIR))

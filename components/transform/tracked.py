"""What MLflow keeps of a transform output: its statistics, its labels and the tf.transform graph."""

from __future__ import annotations

import tensorflow_transform as tft

from components.manifest import Manifest
from components.records import LABELS_FILE
from components.tracking.stage_log import StageLog, numbers, read_optional
from components.transform.run import STATS_FILE


def tracked_outputs(output: str, manifest: Manifest) -> StageLog:
    """The numbers of stats.json as metrics; the data is the ingest output's."""
    return StageLog(numbers(read_optional(output, STATS_FILE)),
                    artifacts=(STATS_FILE, LABELS_FILE, tft.TFTransformOutput.TRANSFORM_FN_DIR,
                               tft.TFTransformOutput.TRANSFORMED_METADATA_DIR),
                    dataset_fingerprint=manifest.inputs["ingest_fingerprint"])

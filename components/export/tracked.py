"""What MLflow keeps of an export output: export.json (version, sizes, TFLite checks)."""

from __future__ import annotations

from components.artifacts import EXPORT_FILE
from components.manifest import Manifest
from components.tracking.stage_log import StageLog, numbers, read_optional


def tracked_outputs(output: str, manifest: Manifest) -> StageLog:
    """The numbers of export.json as metrics; the SavedModel itself is logged when it is registered."""
    return StageLog(numbers(read_optional(output, EXPORT_FILE)), artifacts=(EXPORT_FILE,))

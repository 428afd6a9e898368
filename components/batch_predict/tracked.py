"""What MLflow keeps of a batch_predict output: summary.json's counts and the error rows."""

from __future__ import annotations

from components.artifacts import ERRORS_FILE, SUMMARY_FILE
from components.manifest import Manifest
from components.tracking.stage_log import StageLog, numbers, read_optional


def tracked_outputs(output: str, manifest: Manifest) -> StageLog:
    """The numbers of summary.json (but its files and model) as metrics."""
    summary = read_optional(output, SUMMARY_FILE) or {}
    return StageLog(numbers({k: v for k, v in summary.items() if k not in ("files", "model")}),
                    artifacts=(SUMMARY_FILE, ERRORS_FILE))

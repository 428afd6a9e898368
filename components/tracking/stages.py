"""The stages whose outputs MLflow tracks, and the module where each declares what they log.

A declaration (`tracked_outputs(output, manifest) -> StageLog`) imports its stage's code, with
TensorFlow and possibly Beam and tf.transform: it is imported when an output of its stage is
logged, not with this module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from components.manifest import Manifest
    from components.tracking.stage_log import StageLog

TrackedOutputs = Callable[[str, "Manifest"], "StageLog"]

_DECLARATIONS = {
    "ingest": "components.ingest.tracked",
    "transform": "components.transform.tracked",
    "train": "components.train.tracked",
    "tune": "components.tune.tracked",
    "export": "components.export.tracked",
    "evaluate": "components.evaluate.tracked",
    "batch_predict": "components.batch_predict.tracked",
    "monitor": "components.monitor.tracked",
}


def tracked_outputs(stage: str) -> TrackedOutputs:
    """The function that says what MLflow keeps of an output of `stage`; a ValueError for a stage
    that is not tracked."""
    if stage not in _DECLARATIONS:
        raise ValueError(f"cannot track stage {stage!r}: known stages are {sorted(_DECLARATIONS)}")
    return importlib.import_module(_DECLARATIONS[stage]).tracked_outputs

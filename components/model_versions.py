"""One version number per model: the export, the registry, the deployment and every prediction and
report carry the same N.

The registry (when tracking is on) and the serving base path each number a model's versions; the
pipeline takes the next number free in both for its export (`next_model_version`), the registry then
gives that export the same number (it numbers versions one after the other) and deploy copies it in
under that number (`components.deploy.run.push(version=...)`). Batch scoring and the evaluation
report read the number from the export's path (`artifacts.model_version`).
"""

from __future__ import annotations

import logging
import posixpath

from components.artifacts import version_directories
from components.config import Config

logger = logging.getLogger(__name__)


def next_model_version(config: Config, serving_base_path: str = "") -> int:
    """One more than the highest version of the model in the registry (`tracking.registered_model`,
    when tracking is enabled) and under `serving_base_path`/NAME (when given); 1 for a new model."""
    name = config.tracking.registered_model
    deployed = max(version_directories(posixpath.join(serving_base_path, name)), default=0) if serving_base_path else 0
    registered = 0
    if config.tracking.enabled:
        from components.tracking.registry import latest_version  # MLflow loads only when tracking is on

        registered = latest_version(config)
    version = max(deployed, registered) + 1
    logger.info("%s: version %d (registered up to %d, deployed up to %d)", name, version, registered, deployed)
    return version

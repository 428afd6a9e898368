"""What every pipeline step does inside its container before and after calling its stage."""

from __future__ import annotations

import logging
import posixpath
from typing import Any, Mapping

from components.config import Config, config_from_dict

logger = logging.getLogger(__name__)


def step_setup(config: Mapping[str, Any]) -> Config:
    """Configures logging like the stage CLIs (replacing kfp's executor format, which drops the logger
    names) and returns the step's configuration."""
    from components.logging_setup import configure_logging

    logging.getLogger().handlers.clear()
    configure_logging()
    return config_from_dict(dict(config), source="the pipeline step's config")


def track(stage: str, output: str, location: str, config: Config, parent_run_id: str) -> None:
    """Logs a finished stage output (read at `output`, the step's local path; recorded as `location`, its
    artifact URI) to MLflow as a child of the pipeline's run (none: tracking is off)."""
    if not parent_run_id or not config.tracking.enabled:
        return
    from components.tracking.runs import log_stage

    log_stage(stage, output, config, parent_run_id=parent_run_id, location=location)


def saved_model_base(artifact_path: str, metadata: Mapping[str, Any]) -> str:
    """BASE/NAME of an exported model artifact: the export step writes NAME/<version> inside it."""
    return posixpath.join(artifact_path, metadata["model_name"])

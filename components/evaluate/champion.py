"""The champion a candidate is compared with: its SavedModel and where it came from (a path, or a
version of the MLflow registry with the run that registered it and that run's page in the MLflow UI).

Needs no TensorFlow; MLflow is imported only to look the registered champion up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from components.config import Config

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Champion:
    """A champion SavedModel; `name` says where it came from (default: its path)."""

    model: str
    name: str | None = None
    version: int | None = None  # its version of the registered model
    run_id: str | None = None  # the MLflow run that registered that version
    run_url: str | None = None  # that run's page in the MLflow UI
    ui_command: str | None = None  # what serves that UI, when it is a local one to start first

    def describe(self, model: str) -> dict[str, Any]:
        """What evaluation.json and blessing.json record of it, `model` being its resolved SavedModel."""
        return {"model": self.name or model, "version": self.version, "run_id": self.run_id,
                "run_url": self.run_url, "ui_command": self.ui_command}


def registered_champion(config: Config, download: str) -> Champion | None:
    """The MLflow registry's current champion `models:/NAME@champion`, downloaded into `download`;
    None when there is none yet."""
    from components.tracking.client import mlflow_client, ui_page
    from components.tracking.registry import CHAMPION_ALIAS, champion_model_dir, champion_version

    settings = config.tracking
    name = f"models:/{settings.registered_model}@{CHAMPION_ALIAS}"
    version = champion_version(config)
    model = champion_model_dir(config, download) if version is not None else None
    if version is None or model is None:
        logger.info("Champion: none registered for %s", settings.registered_model)
        return None
    run_url, ui_command = None, None
    if version.run_id:
        experiment = mlflow_client(settings).get_run(version.run_id).info.experiment_id
        page = ui_page(settings, experiment, version.run_id)
        run_url, ui_command = (page.url, page.start_command) if page else (None, None)
    champion = Champion(model, name, int(version.version), version.run_id or None, run_url, ui_command)
    logger.info("Champion: %s version %d (run %s)", name, champion.version, champion.run_id)
    return champion


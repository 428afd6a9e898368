"""The MLflow client of the configured tracking store: its URI, the experiment, and valid keys and values.

Everything goes through an explicit `MlflowClient` for the resolved tracking URI; mlflow's global
tracking URI (which `mlflow.set_tracking_uri` also writes to $MLFLOW_TRACKING_URI) is never
changed. The model registry is the tracking store's.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import tensorflow as tf
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from components.config import TrackingConfig

logger = logging.getLogger(__name__)

# Metric, param and tag names: MLflow also takes spaces, colons and slashes, but those may read
# as paths; everything but letters, digits, `_`, `.` and `-` becomes `_`.
_UNSAFE_KEY_CHARACTERS = re.compile(r"[^\w.\-]")
# The experiment's kind: MLflow 3 opens a `custom_model_development` experiment in its model-training
# view (runs, metrics, models), not the GenAI view (traces). MLflow 3.17's UI also follows its
# workflow switch, which a page address sets with `?workflowType=machine_learning` (see `ui_url`).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
MODEL_TRAINING_WORKFLOW = "workflowType=machine_learning"
# The UI of a local SQLite store, as `make mlflow-ui` serves the default one (runs/mlflow.db).
LOCAL_UI = "http://127.0.0.1:5000"


def tracking_uri(settings: TrackingConfig) -> str:
    """$MLFLOW_TRACKING_URI if set, else `settings.tracking_uri`; a SQLite file's directory is created."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or settings.tracking_uri
    database = _sqlite_path(uri)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    return uri


def mlflow_client(settings: TrackingConfig) -> mlflow.MlflowClient:
    """A client of the tracking store and its model registry."""
    uri = tracking_uri(settings)
    return mlflow.MlflowClient(uri, registry_uri=uri)


def experiment_id(client: mlflow.MlflowClient, settings: TrackingConfig) -> str:
    """The id of `settings.experiment`, created (or restored) if needed, of the model-training kind
    (`EXPERIMENT_KIND_TAG`, set on an existing experiment that lacks it). With a local SQLite store its
    artifacts go next to the database (MLflow's default would be ./mlruns of the current directory)."""
    experiment = client.get_experiment_by_name(settings.experiment)
    if experiment is None:
        database = _sqlite_path(tracking_uri(settings))
        location = (database.parent.resolve() / "mlartifacts" / settings.experiment).as_uri() if database else None
        try:
            return client.create_experiment(settings.experiment, artifact_location=location,
                                            tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
        except MlflowException as e:  # created meanwhile by another process
            if e.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
            experiment = client.get_experiment_by_name(settings.experiment)
    if experiment.lifecycle_stage == "deleted":
        logger.warning("MLflow experiment %r was deleted; restoring it", settings.experiment)
        client.restore_experiment(experiment.experiment_id)
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    return experiment.experiment_id


@dataclass(frozen=True)
class UiPage:
    """A page of the MLflow UI, and for a local store the command that serves that UI first."""

    url: str
    start_command: str | None = None

    def __str__(self) -> str:
        return self.url + (f" (start the UI first: {self.start_command})" if self.start_command else "")


def ui_page(settings: TrackingConfig, experiment: str, run_id: str | None = None) -> UiPage | None:
    """The MLflow UI page of an experiment (by id), or of one of its runs, in the model-training view: the
    tracking server's, or for a SQLite store the local UI's (`make mlflow-ui` for the default store,
    `mlflow server` on another); None for other stores."""
    uri = tracking_uri(settings).rstrip("/")
    page = f"#/experiments/{experiment}" + (f"/runs/{run_id}" if run_id else "") + f"?{MODEL_TRAINING_WORKFLOW}"
    if uri.startswith(("http://", "https://")):
        return UiPage(f"{uri}/{page}")
    if uri.startswith("sqlite:"):
        command = ("make mlflow-ui" if uri == TrackingConfig().tracking_uri
                   else f"mlflow server --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
        return UiPage(f"{LOCAL_UI}/{page}", command)
    return None


def safe_key(name: str) -> str:
    """`name` as a valid MLflow metric, param or tag key."""
    return _UNSAFE_KEY_CHARACTERS.sub("_", name)[:MAX_ENTITY_KEY_LENGTH]


def safe_tags(values: Mapping[str, str]) -> dict[str, str]:
    """Tags with valid keys and values cut to MLflow's length limit."""
    return {safe_key(name): str(value)[:MAX_TAG_VAL_LENGTH] for name, value in values.items()}


def config_params(config: Mapping[str, Any], prefix: str = "") -> list[Param]:
    """Nested config sections flattened to `section.key` params; lists as JSON, values truncated."""
    flat = []
    for name, value in config.items():
        if isinstance(value, Mapping):
            flat.extend(config_params(value, f"{prefix}{name}."))
        else:
            text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
            flat.append(Param(safe_key(prefix + name), text[:MAX_PARAM_VAL_LENGTH]))
    return flat


def search_string(value: str) -> str:
    """`value` as a string literal of MLflow's search syntax, which has no escapes."""
    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    raise ValueError(f"cannot search MLflow for {value!r}: it holds both kinds of quotes")


def local_copy(path: str, scratch: str) -> str:
    """A local path of the file or directory `path`: itself, or for a remote URI (gs://...) a copy
    made with tf.io.gfile under `scratch`."""
    if "://" not in path:
        return path
    target = os.path.join(scratch, posixpath.basename(path.rstrip("/")))
    if not tf.io.gfile.isdir(path):
        tf.io.gfile.copy(path, target)
        return target
    for directory, _, files in tf.io.gfile.walk(path):
        local_dir = os.path.join(target, directory[len(path):].strip("/"))
        os.makedirs(local_dir, exist_ok=True)
        for name in files:
            tf.io.gfile.copy(posixpath.join(directory, name), os.path.join(local_dir, name))
    return target


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (relative or absolute), else None."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None

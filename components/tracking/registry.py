"""The model registry: exported SavedModels as versions of `tracking.registered_model`, and its champion.

A version is the export logged as a pyfunc LoggedModel (`pyfunc_model.ImageClassifier`) of a run,
tagged with its lineage, with the evaluation's headline metrics; a blessed version takes the alias
`champion`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata

import mlflow
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from components.config import SPLITS, Config
from components.manifest import read_manifest
from components.tracking.client import local_copy, mlflow_client, safe_key, safe_tags, search_string
from components.tracking.datasets import DIGEST_LENGTH
from components.tracking.pyfunc_model import SAVED_MODEL_ARTIFACT, ImageClassifier

logger = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"
# The version number of the export a registry version holds (the same number, unless runs raced).
EXPORT_VERSION_TAG = "cvpipe.export_version"
# Name of the LoggedModel inside its run.
MODEL_NAME = "model"
# Metrics of a registration besides the evaluation's: whether it was blessed (1 or 0), its version.
BLESSED_METRIC, VERSION_METRIC = "blessed", "registered_version"
# Packages of the pyfunc model's environment, pinned to the installed versions (never inferred).
MODEL_REQUIREMENTS = ("mlflow", "tensorflow", "pandas", "numpy")


@dataclass(frozen=True)
class ModelVersionInfo:
    """A registered model version: `uri` is models:/NAME/VERSION; `champion` if it holds the alias."""

    name: str
    version: int
    uri: str
    champion: bool


def register_model(export_dir: str, config: Config, *, run_id: str, blessed: bool,
                   metrics: Mapping[str, float] = {}, parent_run_id: str | None = None) -> ModelVersionInfo:
    """Logs the exported SavedModel as a pyfunc LoggedModel of run `run_id` and registers it as a new
    version of `tracking.registered_model` linked to that model (its source the model's artifacts, its
    model id and the model's `mlflow.modelVersions` tag), tagged with its lineage and `metrics`. A blessed version gets the alias `champion`; otherwise the alias stays where it was.

    The run logs `metrics` (`split.name` keys), `blessed` (1 or 0) and `registered_version` as the
    model's metrics; the pipeline run `parent_run_id` gets them too, the model as its output."""
    export_dir = export_dir.rstrip("/")
    manifest = read_manifest(export_dir, "export")
    settings = config.tracking
    client = mlflow_client(settings)
    run = client.get_run(run_id)
    model = client.create_logged_model(run.info.experiment_id, name=MODEL_NAME, source_run_id=run_id,
                                       tags=safe_tags({"cvpipe.export_dir": export_dir}))
    try:
        with tempfile.TemporaryDirectory() as scratch:
            local = os.path.join(scratch, "model")
            mlflow.pyfunc.save_model(
                local,
                python_model=ImageClassifier(),
                artifacts={SAVED_MODEL_ARTIFACT: local_copy(export_dir, scratch)},
                pip_requirements=[f"{name}=={metadata.version(name)}" for name in MODEL_REQUIREMENTS],
                mlflow_model=Model(artifact_path=model.artifact_location, run_id=run_id, model_id=model.model_id,
                                   model_uuid=model.model_id),
            )
            client.log_model_artifacts(model.model_id, local)
    except BaseException:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    for run in (run_id, parent_run_id) if parent_run_id else (run_id,):
        client.log_outputs(run, [LoggedModelOutput(model.model_id, step=0)])

    try:
        client.create_registered_model(settings.registered_model)
    except MlflowException as e:
        if e.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    tags = {
        "cvpipe.blessed": str(blessed).lower(),
        "cvpipe.export_dir": export_dir,
        "cvpipe.fingerprint": manifest.fingerprint,
        "cvpipe.dataset_fingerprint": manifest.dataset_fingerprint or "unknown",
        "cvpipe.code_version": manifest.code_version,
        EXPORT_VERSION_TAG: str(manifest.outputs["version"]),
        **{key: str(value) for key, value in metrics.items()},
    }
    # The source is the model's storage location, not models:/<model_id>: a SQL registry resolves the
    # latter through mlflow's global tracking URI, not this client's (a local store would look in
    # ./mlflow.db).
    version = client.create_model_version(settings.registered_model, model.artifact_location, run_id=run_id,
                                          tags=safe_tags(tags), model_id=model.model_id)
    # The model's link to its version, as mlflow.register_model records it (and the UI shows it).
    client.set_logged_model_tags(model.model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(
        [{"name": version.name, "version": str(version.version)}])})
    if blessed:
        client.set_registered_model_alias(settings.registered_model, CHAMPION_ALIAS, version.version)
    headline = {**metrics, BLESSED_METRIC: float(blessed), VERSION_METRIC: float(version.version)}
    _log_model_metrics(client, run_id, model.model_id, headline, manifest.dataset_fingerprint)
    if parent_run_id:
        _log_model_metrics(client, parent_run_id, None, headline, manifest.dataset_fingerprint)
    info = ModelVersionInfo(settings.registered_model, int(version.version),
                            f"models:/{settings.registered_model}/{version.version}", blessed)
    if info.version != manifest.outputs["version"]:
        logger.warning("%s is version %d of %s, but the registry numbered it %d (another run registered a "
                       "version meanwhile, or the export's version was not taken from the registry: see "
                       "components.model_versions); its tag %s keeps the export's number", export_dir,
                       manifest.outputs["version"], settings.registered_model, info.version, EXPORT_VERSION_TAG)
    logger.info("Registered %s from %s (run %s)%s", info.uri, export_dir, run_id,
                f"; it is the {CHAMPION_ALIAS}" if blessed else "; not blessed, the champion is unchanged")
    return info


def _log_model_metrics(client: mlflow.MlflowClient, run_id: str, model_id: str | None,
                       metrics: Mapping[str, float], dataset_fingerprint: str) -> None:
    """`metrics` at step 0 of run `run_id`, of the LoggedModel `model_id` when given; a `split.name`
    metric is linked to that split's dataset (`datasets.split_inputs`)."""
    now = int(time.time() * 1000)
    logged = []
    for key, value in metrics.items():
        split = key.partition(".")[0]
        dataset = {"dataset_name": split, "dataset_digest": dataset_fingerprint[:DIGEST_LENGTH]} if (
            split in SPLITS and dataset_fingerprint) else {}
        logged.append(Metric(safe_key(key), value, now, 0, model_id=model_id, **dataset))
    client.log_batch(run_id, metrics=logged)


def latest_version(config: Config) -> int:
    """The highest version number of `tracking.registered_model` (0 when it has none or does not exist)."""
    settings = config.tracking
    found = mlflow_client(settings).search_model_versions(f"name = {search_string(settings.registered_model)}")
    return max((int(v.version) for v in found), default=0)


def registered_versions(config: Config, run_id: str) -> list[ModelVersionInfo]:
    """The versions of `tracking.registered_model` that run `run_id` registered."""
    settings = config.tracking
    client = mlflow_client(settings)
    found = client.search_model_versions(f"name = {search_string(settings.registered_model)} "
                                         f"and run_id = {search_string(run_id)}")
    champion = client.get_registered_model(settings.registered_model).aliases.get(CHAMPION_ALIAS) if found else None
    return [ModelVersionInfo(v.name, int(v.version), f"models:/{v.name}/{v.version}", str(v.version) == str(champion))
            for v in found]


def champion_version(config: Config) -> mlflow.entities.model_registry.ModelVersion | None:
    """The registered model's version holding the `champion` alias; None when the model or the alias
    does not exist."""
    settings = config.tracking
    client = mlflow_client(settings)
    # The registered model's aliases, not get_model_version_by_alias: a missing alias is an
    # INVALID_PARAMETER_VALUE error there, like a malformed request.
    try:
        version = client.get_registered_model(settings.registered_model).aliases.get(CHAMPION_ALIAS)
    except MlflowException as e:
        if e.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        version = None
    if version is None:
        logger.info("No %s of %r at %s", CHAMPION_ALIAS, settings.registered_model, client.tracking_uri)
        return None
    return client.get_model_version(settings.registered_model, str(version))


def champion_model_dir(config: Config, destination: str) -> str | None:
    """Downloads the champion's model to `destination` and returns its SavedModel directory; None when
    the registered model or its champion alias does not exist."""
    champion = champion_version(config)
    if champion is None:
        return None
    client = mlflow_client(config.tracking)
    # Not models:/NAME/VERSION: mlflow resolves those through its global registry URI, not this client's.
    location = client.get_model_version_download_uri(champion.name, champion.version)
    model_dir = mlflow.artifacts.download_artifacts(location, dst_path=destination, tracking_uri=client.tracking_uri)
    artifact = Model.load(model_dir).flavors["python_function"]["artifacts"][SAVED_MODEL_ARTIFACT]
    saved_model = os.path.join(model_dir, artifact["path"])
    logger.info("Downloaded %s version %s (%s) to %s", champion.name, champion.version, CHAMPION_ALIAS, saved_model)
    return saved_model

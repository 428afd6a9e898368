"""MLflow tracking: every pipeline run, stage output and model version.

A pipeline run is a parent MLflow run holding the whole configuration; each finished stage output
is logged as a child run (params from its manifest, metrics from its files, the files themselves
as artifacts). An exported SavedModel is logged as a pyfunc model (`ImageClassifier`) and
registered as a new version of `tracking.registered_model`; a blessed version gets the alias
`champion`.

Everything goes through an explicit `MlflowClient` for the resolved tracking URI; mlflow's global
tracking URI (which `mlflow.set_tracking_uri` also writes to $MLFLOW_TRACKING_URI) is never
changed. The model registry is the tracking store's.
"""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from components.config import Config, TrackingConfig
from components.manifest import MANIFEST_FILE, Manifest, code_version, read_json, read_manifest

if TYPE_CHECKING:
    from components.ingest.fingerprint import SourceFingerprint

logger = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"
# Tags of a pipeline run (the parent run): what it is, which KFP run, which data.
KIND_TAG = "cvpipe.kind"
PIPELINE_KIND = "pipeline"
KFP_RUN_ID_TAG = "cvpipe.kfp_run_id"
DATA_SOURCE_TAG = "cvpipe.data_source"
DATA_FINGERPRINT_TAG = "cvpipe.data_fingerprint"  # components.ingest.fingerprint of the source
DATA_INPUTS_TAG = "cvpipe.data_inputs"  # how many inputs the source listed
# Tags of a stage run: which stage, which output (its path or artifact URI), its manifest fingerprint.
STAGE_TAG, OUTPUT_TAG, FINGERPRINT_TAG = "cvpipe.stage", "cvpipe.output", "cvpipe.fingerprint"
# The artifact of the pyfunc model that holds the exported SavedModel directory.
SAVED_MODEL_ARTIFACT = "saved_model"
# Name of the LoggedModel inside its run.
MODEL_NAME = "model"
PREDICT_BATCH_SIZE = 64
REJECT_EXAMPLES = 20
# Packages of the pyfunc model's environment, pinned to the installed versions (never inferred).
MODEL_REQUIREMENTS = ("mlflow", "tensorflow", "pandas", "numpy")

# Metric, param and tag names: MLflow also takes spaces, colons and slashes, but those may read
# as paths; everything but letters, digits, `_`, `.` and `-` becomes `_`.
_UNSAFE_KEY_CHARACTERS = re.compile(r"[^\w.\-]")

Metrics = list[tuple[str, float, int]]  # (key, value, step)


@dataclass(frozen=True)
class ModelVersionInfo:
    """A registered model version: `uri` is models:/NAME/VERSION; `champion` if it holds the alias."""

    name: str
    version: int
    uri: str
    champion: bool


def tracking_uri(settings: TrackingConfig) -> str:
    """$MLFLOW_TRACKING_URI if set, else `settings.tracking_uri`; a SQLite file's directory is created."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or settings.tracking_uri
    database = _sqlite_path(uri)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    return uri


def start_pipeline_run(config: Config, *, run_name: str | None = None, tags: Mapping[str, str] = {},
                       run_id: str | None = None) -> str:
    """Creates the RUNNING parent run of one pipeline run (or completes `run_id`, reserved by
    `reserve_pipeline_run`), with the whole config as params; returns its id.

    Stage runs attach to it with `log_stage(..., parent_run_id=...)`; `finish_run` ends it.
    """
    client = _client(config.tracking)
    if run_id:
        adopted = {**tags, "cvpipe.code_version": code_version(), **({"mlflow.runName": run_name} if run_name else {})}
        client.log_batch(run_id, tags=[RunTag(key, value) for key, value in _tags(adopted).items()])
    else:
        run_id = start_run(config, run_name=run_name, tags={KIND_TAG: PIPELINE_KIND, **tags})
    client.log_batch(run_id, params=_params(config.to_dict()))
    logger.info("Started MLflow pipeline run %s in experiment %r at %s", run_id, config.tracking.experiment,
                tracking_uri(config.tracking))
    return run_id


def reserve_pipeline_run(config: Config, data: SourceFingerprint, *, tags: Mapping[str, str] = {}) -> str:
    """A RUNNING pipeline run of `data` recorded before the pipeline starts (its start step completes
    it with `start_pipeline_run(run_id=...)`), so that it counts as in progress at once."""
    return start_run(config, run_name="pipeline (starting)", tags={
        KIND_TAG: PIPELINE_KIND, DATA_SOURCE_TAG: source_tag(data.source), DATA_FINGERPRINT_TAG: data.sha256,
        DATA_INPUTS_TAG: str(data.inputs), **tags})


def pipeline_runs(config: Config, *, data_source: str | None = None, kfp_run_id: str | None = None,
                  max_results: int = 100) -> list[mlflow.entities.Run]:
    """The pipeline runs of the configured experiment (any status), newest first; only those of
    `data_source` (as `source_tag` spells it) or of KFP run `kfp_run_id` when given."""
    client = _client(config.tracking)
    search = [f"tags.`{KIND_TAG}` = '{PIPELINE_KIND}'"]
    if data_source is not None:
        search.append(f"tags.`{DATA_SOURCE_TAG}` = {_quoted(source_tag(data_source))}")
    if kfp_run_id is not None:
        search.append(f"tags.`{KFP_RUN_ID_TAG}` = {_quoted(kfp_run_id)}")
    return list(client.search_runs([_experiment_id(client, config.tracking)], " and ".join(search),
                                   max_results=max_results, order_by=["attributes.start_time DESC"]))


def source_tag(data_source: str) -> str:
    """How a pipeline run records its data source: the path without a trailing slash."""
    return data_source.rstrip("/") or data_source


def _quoted(value: str) -> str:
    """`value` as a string literal of MLflow's search syntax, which has no escapes."""
    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    raise ValueError(f"cannot search MLflow for {value!r}: it holds both kinds of quotes")


def child_runs(config: Config, parent_run_id: str) -> list[mlflow.entities.Run]:
    """The stage (child) runs of a pipeline run, oldest first."""
    client = _client(config.tracking)
    return list(client.search_runs([_experiment_id(client, config.tracking)],
                                   f"tags.`mlflow.parentRunId` = {_quoted(parent_run_id)}",
                                   order_by=["attributes.start_time ASC"]))


def registered_versions(config: Config, run_id: str) -> list[ModelVersionInfo]:
    """The versions of `tracking.registered_model` that run `run_id` registered."""
    settings = config.tracking
    client = _client(settings)
    found = client.search_model_versions(f"name = {_quoted(settings.registered_model)} and run_id = {_quoted(run_id)}")
    champion = client.get_registered_model(settings.registered_model).aliases.get(CHAMPION_ALIAS) if found else None
    return [ModelVersionInfo(v.name, int(v.version), f"models:/{v.name}/{v.version}", str(v.version) == str(champion))
            for v in found]


def start_run(config: Config, *, run_name: str | None = None, tags: Mapping[str, str] = {},
              parent_run_id: str | None = None) -> str:
    """Creates a RUNNING run (a child of `parent_run_id` when given) tagged with the code version."""
    client = _client(config.tracking)
    tags = {"cvpipe.code_version": code_version(), **tags}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    return client.create_run(_experiment_id(client, config.tracking), run_name=run_name,
                             tags=_tags(tags)).info.run_id


def finish_run(run_id: str, config: Config, *, status: str = "FINISHED", if_running: bool = False) -> None:
    """Ends a run with `status` (FINISHED, FAILED or KILLED); with `if_running`, only a run not ended yet."""
    client = _client(config.tracking)
    if if_running and client.get_run(run_id).info.status not in ("RUNNING", "SCHEDULED"):
        return
    client.set_terminated(run_id, status)
    logger.info("Ended MLflow run %s: %s", run_id, status)


def log_stage(stage: str, output: str, config: Config, *, parent_run_id: str | None = None,
              location: str | None = None) -> str:
    """Logs a finished stage output as a run named after the stage (a child of `parent_run_id` when
    given): params from its manifest's config, metrics and artifacts from its files. `location` is
    where the output lives for good when `output` is a local copy (a pipeline step's artifact URI).
    Returns the run id."""
    if stage not in _STAGE_METRICS:
        raise ValueError(f"cannot track stage {stage!r}: known stages are {sorted(_STAGE_METRICS)}")
    output = output.rstrip("/")
    manifest = read_manifest(output, stage)
    metrics, documents = _STAGE_METRICS[stage](output)
    tags = {
        STAGE_TAG: stage,
        "cvpipe.code_version": manifest.code_version,
        FINGERPRINT_TAG: manifest.fingerprint,
        OUTPUT_TAG: location or output,
    }
    dataset = _dataset_fingerprint(manifest)
    if dataset:
        tags["cvpipe.dataset_fingerprint"] = dataset
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id

    client = _client(config.tracking)
    run_id = client.create_run(_experiment_id(client, config.tracking), run_name=stage, tags=_tags(tags)).info.run_id
    try:
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(key, value, now, step) for key, value, step in metrics],
                         params=_params(manifest.config))
        for name, document in documents.items():
            client.log_dict(run_id, document, name)
        with tempfile.TemporaryDirectory() as scratch:
            for path in _stage_artifacts(stage, output):
                local = _local_copy(path, scratch)
                if os.path.isdir(local):
                    client.log_artifacts(run_id, local, posixpath.basename(path))
                else:
                    client.log_artifact(run_id, local)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id)
    logger.info("Logged %s output %s to MLflow run %s: %d metric values%s", stage, output, run_id, len(metrics),
                f" (parent {parent_run_id})" if parent_run_id else "")
    return run_id


def stage_runs(stage: str, output: str, fingerprint: str, config: Config) -> list[str]:
    """The ids of the FINISHED runs that logged `output` of `stage` with this manifest fingerprint
    (see `log_stage`), newest first; none when the experiment does not exist."""
    client = _client(config.tracking)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        return []
    search = " and ".join([f"tags.`{STAGE_TAG}` = {_quoted(stage)}", f"tags.`{OUTPUT_TAG}` = {_quoted(output)}",
                           f"tags.`{FINGERPRINT_TAG}` = {_quoted(fingerprint)}", "attributes.status = 'FINISHED'"])
    runs = client.search_runs([experiment.experiment_id], search, order_by=["attributes.start_time DESC"])
    return [run.info.run_id for run in runs]


def log_benchmark(results: Mapping[str, Any], files: Sequence[str], config: Config) -> str:
    """Logs `make bench` results as a run named `bench`: each row's numbers as metrics keyed
    `<benchmark>.<variant>.<figure>`, the result files as artifacts. Returns the run id."""
    numbers: dict[str, float] = {}
    for row in results["rows"]:
        figures = {key: value for key, value in row.items() if key not in ("benchmark", "variant")}
        numbers.update(_numbers(figures, f"{row['benchmark']}.{row['variant']}."))
    client = _client(config.tracking)
    run_id = start_run(config, run_name="bench", tags={STAGE_TAG: "bench"})
    try:
        client.log_batch(run_id, metrics=[Metric(key, value, int(time.time() * 1000), 0)
                                          for key, value in numbers.items()])
        for path in files:
            client.log_artifact(run_id, path)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id)
    logger.info("Logged %d benchmark figures to MLflow run %s", len(numbers), run_id)
    return run_id


def register_model(export_dir: str, config: Config, *, run_id: str, blessed: bool,
                   metrics: Mapping[str, float] = {}) -> ModelVersionInfo:
    """Logs the exported SavedModel as a pyfunc model of run `run_id` and registers it as a new version
    of `tracking.registered_model`, tagged with its lineage and `metrics`. A blessed version gets the
    alias `champion`; otherwise the alias stays where it was."""
    export_dir = export_dir.rstrip("/")
    manifest = read_manifest(export_dir, "export")
    settings = config.tracking
    client = _client(settings)
    run = client.get_run(run_id)
    model = client.create_logged_model(run.info.experiment_id, name=MODEL_NAME, source_run_id=run_id,
                                       tags=_tags({"cvpipe.export_dir": export_dir}))
    try:
        with tempfile.TemporaryDirectory() as scratch:
            local = os.path.join(scratch, "model")
            mlflow.pyfunc.save_model(
                local,
                python_model=ImageClassifier(),
                artifacts={SAVED_MODEL_ARTIFACT: _local_copy(export_dir, scratch)},
                pip_requirements=[f"{name}=={metadata.version(name)}" for name in MODEL_REQUIREMENTS],
                mlflow_model=Model(artifact_path=model.artifact_location, run_id=run_id, model_id=model.model_id,
                                   model_uuid=model.model_id),
            )
            client.log_model_artifacts(model.model_id, local)
    except BaseException:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])

    try:
        client.create_registered_model(settings.registered_model)
    except MlflowException as e:
        if e.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    tags = {
        "cvpipe.blessed": str(blessed).lower(),
        "cvpipe.export_dir": export_dir,
        "cvpipe.fingerprint": manifest.fingerprint,
        "cvpipe.dataset_fingerprint": _dataset_fingerprint(manifest) or "unknown",
        "cvpipe.code_version": manifest.code_version,
        **{key: str(value) for key, value in metrics.items()},
    }
    # The source is the model's storage location, not models:/<model_id>: a SQL registry resolves the
    # latter through mlflow's global tracking URI, not this client's (a local store would look in
    # ./mlflow.db).
    version = client.create_model_version(settings.registered_model, model.artifact_location, run_id=run_id,
                                          tags=_tags(tags), model_id=model.model_id)
    if blessed:
        client.set_registered_model_alias(settings.registered_model, CHAMPION_ALIAS, version.version)
    info = ModelVersionInfo(settings.registered_model, int(version.version),
                            f"models:/{settings.registered_model}/{version.version}", blessed)
    logger.info("Registered %s from %s (run %s)%s", info.uri, export_dir, run_id,
                f"; it is the {CHAMPION_ALIAS}" if blessed else "; not blessed, the champion is unchanged")
    return info


def champion_version(config: Config) -> mlflow.entities.model_registry.ModelVersion | None:
    """The registered model's version holding the `champion` alias; None when the model or the alias
    does not exist."""
    settings = config.tracking
    client = _client(settings)
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
    client = _client(config.tracking)
    # Not models:/NAME/VERSION: mlflow resolves those through its global registry URI, not this client's.
    location = client.get_model_version_download_uri(champion.name, champion.version)
    model_dir = mlflow.artifacts.download_artifacts(location, dst_path=destination, tracking_uri=client.tracking_uri)
    artifact = Model.load(model_dir).flavors["python_function"]["artifacts"][SAVED_MODEL_ARTIFACT]
    saved_model = os.path.join(model_dir, artifact["path"])
    logger.info("Downloaded %s version %s (%s) to %s", champion.name, champion.version, CHAMPION_ALIAS, saved_model)
    return saved_model


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """The exported SavedModel as a pyfunc model: image bytes in, label, score, class id and
    probabilities out, through the SavedModel's `serving_default` signature."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Loads the SavedModel of the artifact `saved_model`."""
        self._model = tf.saved_model.load(context.artifacts[SAVED_MODEL_ARTIFACT])
        self._serve = self._model.signatures["serving_default"]

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Classifies a DataFrame with a column `image_bytes` (JPEG or PNG bytes) or a list of bytes:
        one row per image with `label`, `score`, `class_id` and `probabilities`."""
        if isinstance(model_input, pd.DataFrame):
            if "image_bytes" not in model_input.columns:
                raise ValueError(f"the input DataFrame needs a column image_bytes, got {list(model_input.columns)}")
            images = model_input["image_bytes"].tolist()
        else:
            images = list(model_input)
        batches = [self._serve(image_bytes=tf.constant(images[start:start + PREDICT_BATCH_SIZE], dtype=tf.string))
                   for start in range(0, len(images), PREDICT_BATCH_SIZE)]
        if not batches:
            return pd.DataFrame({"label": [], "score": [], "class_id": [], "probabilities": []})
        probabilities = np.concatenate([b["probabilities"].numpy() for b in batches]).astype(float)
        return pd.DataFrame({
            "label": [label.decode("utf-8") for b in batches for label in b["label"].numpy()],
            "score": np.concatenate([b["score"].numpy() for b in batches]).astype(float),
            "class_id": np.concatenate([b["class_id"].numpy() for b in batches]).astype(int),
            "probabilities": [row.tolist() for row in probabilities],
        })


def _client(settings: TrackingConfig) -> mlflow.MlflowClient:
    uri = tracking_uri(settings)
    return mlflow.MlflowClient(uri, registry_uri=uri)


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (relative or absolute), else None."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def _experiment_id(client: mlflow.MlflowClient, settings: TrackingConfig) -> str:
    """The id of `settings.experiment`, created (or restored) if needed. With a local SQLite store its
    artifacts go next to the database (MLflow's default would be ./mlruns of the current directory)."""
    experiment = client.get_experiment_by_name(settings.experiment)
    if experiment is None:
        database = _sqlite_path(tracking_uri(settings))
        location = (database.parent.resolve() / "mlartifacts" / settings.experiment).as_uri() if database else None
        try:
            return client.create_experiment(settings.experiment, artifact_location=location)
        except MlflowException as e:  # created meanwhile by another process
            if e.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
            experiment = client.get_experiment_by_name(settings.experiment)
    if experiment.lifecycle_stage == "deleted":
        logger.warning("MLflow experiment %r was deleted; restoring it", settings.experiment)
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def _key(name: str) -> str:
    """`name` as a valid MLflow metric, param or tag key."""
    return _UNSAFE_KEY_CHARACTERS.sub("_", name)[:MAX_ENTITY_KEY_LENGTH]


def _tags(tags: Mapping[str, str]) -> dict[str, str]:
    return {_key(key): str(value)[:MAX_TAG_VAL_LENGTH] for key, value in tags.items()}


def _params(config: Mapping[str, Any], prefix: str = "") -> list[Param]:
    """Nested config sections flattened to `section.key` params; lists as JSON, values truncated."""
    params = []
    for name, value in config.items():
        if isinstance(value, Mapping):
            params.extend(_params(value, f"{prefix}{name}."))
        else:
            text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
            params.append(Param(_key(prefix + name), text[:MAX_PARAM_VAL_LENGTH]))
    return params


def _numbers(data: Any, prefix: str = "") -> dict[str, float]:
    """Every finite number in nested dicts and lists, keyed by its dotted path (list items by index);
    booleans, strings and None are skipped."""
    if isinstance(data, Mapping):
        items = data.items()
    elif isinstance(data, (list, tuple)):
        items = enumerate(data)
    elif isinstance(data, (int, float)) and not isinstance(data, bool) and math.isfinite(data):
        return {_key(prefix.rstrip(".")): float(data)}
    else:
        return {}
    numbers: dict[str, float] = {}
    for name, value in items:
        numbers.update(_numbers(value, f"{prefix}{name}."))
    return numbers


def _at_step_0(numbers: Mapping[str, float]) -> Metrics:
    return [(key, value, 0) for key, value in numbers.items()]


def _dataset_fingerprint(manifest: Manifest) -> str | None:
    """The fingerprint of the data a stage output derives from."""
    if manifest.stage == "ingest":
        return manifest.fingerprint
    if manifest.stage == "transform":
        return manifest.inputs["ingest_fingerprint"]
    if manifest.stage == "train":
        return manifest.inputs["transform_fingerprint"]
    return manifest.inputs.get("dataset_fingerprint")


def _read_optional(output: str, name: str) -> Any:
    """A JSON file of the output, or None (logged at debug level) when it is missing."""
    path = posixpath.join(output, name)
    if not tf.io.gfile.exists(path):
        logger.debug("%s has no %s: not tracked", output, name)
        return None
    return read_json(path)


def _ingest_metrics(output: str) -> tuple[Metrics, dict[str, Any]]:
    numbers = _numbers(_read_optional(output, "stats.json"))
    documents = {}
    rejects_path = posixpath.join(output, "rejects.jsonl")
    if tf.io.gfile.exists(rejects_path):
        counts: dict[str, int] = {}
        examples = []
        with tf.io.gfile.GFile(rejects_path) as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    counts[row["reason"]] = counts.get(row["reason"], 0) + 1
                    if len(examples) < REJECT_EXAMPLES:
                        examples.append(row)
        numbers.update(_numbers(counts, "rejects."))
        documents["rejects_summary.json"] = {"counts": counts, "total": sum(counts.values()), "first": examples}
    else:
        logger.debug("%s has no rejects.jsonl: not tracked", output)
    return _at_step_0(numbers), documents


def _transform_metrics(output: str) -> tuple[Metrics, dict[str, Any]]:
    return _at_step_0(_numbers(_read_optional(output, "stats.json"))), {}


def _train_metrics(output: str) -> tuple[Metrics, dict[str, Any]]:
    training = _read_optional(output, "training.json") or {}
    metrics = [(key, value, int(epoch["epoch"]))
               for epoch in training.get("epochs", [])
               for key, value in _numbers({k: v for k, v in epoch.items() if k != "epoch"}).items()]
    numbers = _numbers(training.get("final"), "final.")
    numbers.update(_numbers({k: training.get(k) for k in ("train_images_per_second", "wall_seconds")}))
    return metrics + _at_step_0(numbers), {}


def _export_metrics(output: str) -> tuple[Metrics, dict[str, Any]]:
    return _at_step_0(_numbers(_read_optional(output, "export.json"))), {}


def _batch_predict_metrics(output: str) -> tuple[Metrics, dict[str, Any]]:
    summary = _read_optional(output, "summary.json") or {}
    return _at_step_0(_numbers({k: v for k, v in summary.items() if k not in ("files", "model")})), {}


def _evaluate_metrics(output: str) -> tuple[Metrics, dict[str, Any]]:
    evaluation = _read_optional(output, "evaluation.json") or {}
    numbers: dict[str, float] = {}
    for split, results in evaluation.get("splits", {}).items():
        headline = {name: results.get(name) for name in ("accuracy", "log_loss", "ece")}
        headline["top_k_accuracy"] = (results.get("top_k_accuracy") or {}).get("value")
        numbers.update(_numbers(headline, f"{split}."))
        numbers.update(_numbers({average: results.get(average) for average in ("macro", "weighted")}, f"{split}."))
        numbers.update(_numbers(results.get("per_class"), f"{split}.class."))
    blessing = _read_optional(output, "blessing.json")
    if blessing is not None:
        numbers["blessed"] = float(bool(blessing["blessed"]))
    return _at_step_0(numbers), {}


_STAGE_METRICS: dict[str, Callable[[str], tuple[Metrics, dict[str, Any]]]] = {
    "ingest": _ingest_metrics,
    "transform": _transform_metrics,
    "train": _train_metrics,
    "export": _export_metrics,
    "evaluate": _evaluate_metrics,
    "batch_predict": _batch_predict_metrics,
}

_STAGE_ARTIFACTS = {
    "ingest": ("stats.json", "labels.txt"),
    "transform": ("stats.json", "labels.txt", "transform_fn", "transformed_metadata"),
    "train": ("training.json", "training_curves.png", "history.csv"),
    "export": ("export.json",),
    "evaluate": ("evaluation.json", "blessing.json", "evaluation.html", "predictions.jsonl"),
    "batch_predict": ("summary.json", "errors.jsonl"),
}


def _stage_artifacts(stage: str, output: str) -> list[str]:
    """The existing files and directories of an output that its run keeps as artifacts."""
    paths = [posixpath.join(output, name) for name in (MANIFEST_FILE, *_STAGE_ARTIFACTS[stage])]
    if stage == "evaluate":
        paths += sorted(tf.io.gfile.glob(posixpath.join(output, "*.png")))
    found = []
    for path in paths:
        if tf.io.gfile.exists(path):
            found.append(path)
        else:
            logger.debug("%s is missing: not tracked", path)
    return found


def _local_copy(path: str, scratch: str) -> str:
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


def main(argv: list[str] | None = None) -> int:
    """CLI: `start` prints a new pipeline run's id (for $CVPIPE_MLFLOW_PARENT_RUN_ID); `finish RUN_ID` ends it."""
    import argparse

    from components.cli import add_config_arguments, config_from_args
    from components.logging_setup import configure_logging

    parser = argparse.ArgumentParser(prog="python -m components.tracking",
                                     description="Start or finish the MLflow parent run of a pipeline run.")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="create a pipeline run and print its id")
    start.add_argument("--run-name", help="the run's name in MLflow")
    start.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="a tag (repeatable)")
    finish = commands.add_parser("finish", help="end a pipeline run")
    finish.add_argument("run_id")
    finish.add_argument("--status", default="FINISHED", choices=["FINISHED", "FAILED", "KILLED"])
    for command in (start, finish):
        add_config_arguments(command)
    args = parser.parse_args(argv)
    configure_logging()
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # stdout carries the run id
    config = config_from_args(parser, args)
    if args.command == "start":
        tags = dict(tag.partition("=")[::2] for tag in args.tag)
        print(start_pipeline_run(config, run_name=args.run_name, tags=tags))  # noqa: T201 (the command's output)
    else:
        finish_run(args.run_id, config, status=args.status)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

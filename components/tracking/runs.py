"""Runs in the tracking store: pipeline runs (the parent runs), their stage runs, benchmark runs.

A pipeline run holds the whole configuration as params, the datasets it ran on and, once registered,
its model and headline metrics (`registry.register_model`); each finished stage output is logged as
a child run named after its stage, spanning the stage's run, with what its stage declares
(`stage_log.StageLog`).
"""

from __future__ import annotations

import logging
import os
import posixpath
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import mlflow
import tensorflow as tf
from mlflow.entities import Metric, RunTag

from components.config import Config
from components.artifacts import MANIFEST_FILE
from components.manifest import code_version, read_manifest
from components.tracking import stages
from components.tracking.client import (config_params, experiment_id, local_copy, mlflow_client, safe_key,
                                        safe_tags, search_string, tracking_uri, ui_page)
from components.tracking.datasets import stage_inputs
from components.tracking.stage_log import numbers

if TYPE_CHECKING:
    from components.ingest.fingerprint import SourceFingerprint

logger = logging.getLogger(__name__)

# Tags of a pipeline run (the parent run): what it is, which KFP run, which data.
KIND_TAG = "cvpipe.kind"
PIPELINE_KIND = "pipeline"
KFP_RUN_ID_TAG = "cvpipe.kfp_run_id"
DATA_SOURCE_TAG = "cvpipe.data_source"
DATA_FINGERPRINT_TAG = "cvpipe.data_fingerprint"  # components.ingest.fingerprint of the source
DATA_INPUTS_TAG = "cvpipe.data_inputs"  # how many inputs the source listed
# Tags of a stage run: which stage, which output (its path or artifact URI), its manifest fingerprint.
STAGE_TAG, OUTPUT_TAG, FINGERPRINT_TAG = "cvpipe.stage", "cvpipe.output", "cvpipe.fingerprint"


def start_pipeline_run(config: Config, *, run_name: str | None = None, tags: Mapping[str, str] = {},
                       run_id: str | None = None) -> str:
    """Creates the RUNNING parent run of one pipeline run (or completes `run_id`, reserved by
    `reserve_pipeline_run`), with the whole config as params; returns its id.

    Stage runs attach to it with `log_stage(..., parent_run_id=...)`; `finish_run` ends it.
    """
    client = mlflow_client(config.tracking)
    if run_id:
        adopted = {**tags, "cvpipe.code_version": code_version(), **({"mlflow.runName": run_name} if run_name else {})}
        client.log_batch(run_id, tags=[RunTag(key, value) for key, value in safe_tags(adopted).items()])
    else:
        run_id = start_run(config, run_name=run_name, tags={KIND_TAG: PIPELINE_KIND, **tags})
    client.log_batch(run_id, params=config_params(config.to_dict()))
    logger.info("Started MLflow pipeline run %s in experiment %r at %s", run_id, config.tracking.experiment,
                ui_page(config.tracking, client.get_run(run_id).info.experiment_id, run_id)
                or tracking_uri(config.tracking))
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
    client = mlflow_client(config.tracking)
    search = [f"tags.`{KIND_TAG}` = '{PIPELINE_KIND}'"]
    if data_source is not None:
        search.append(f"tags.`{DATA_SOURCE_TAG}` = {search_string(source_tag(data_source))}")
    if kfp_run_id is not None:
        search.append(f"tags.`{KFP_RUN_ID_TAG}` = {search_string(kfp_run_id)}")
    return list(client.search_runs([experiment_id(client, config.tracking)], " and ".join(search),
                                   max_results=max_results, order_by=["attributes.start_time DESC"]))


def source_tag(data_source: str) -> str:
    """How a pipeline run records its data source: the path without a trailing slash."""
    return data_source.rstrip("/") or data_source


def child_runs(config: Config, parent_run_id: str) -> list[mlflow.entities.Run]:
    """The stage (child) runs of a pipeline run, oldest first."""
    client = mlflow_client(config.tracking)
    return list(client.search_runs([experiment_id(client, config.tracking)],
                                   f"tags.`mlflow.parentRunId` = {search_string(parent_run_id)}",
                                   order_by=["attributes.start_time ASC"]))


def start_run(config: Config, *, run_name: str | None = None, tags: Mapping[str, str] = {},
              parent_run_id: str | None = None) -> str:
    """Creates a RUNNING run (a child of `parent_run_id` when given) tagged with the code version."""
    client = mlflow_client(config.tracking)
    tags = {"cvpipe.code_version": code_version(), **tags}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    return client.create_run(experiment_id(client, config.tracking), run_name=run_name,
                             tags=safe_tags(tags)).info.run_id


def finish_run(run_id: str, config: Config, *, status: str = "FINISHED", if_running: bool = False) -> None:
    """Ends a run with `status` (FINISHED, FAILED or KILLED); with `if_running`, only a run not ended yet."""
    client = mlflow_client(config.tracking)
    if if_running and client.get_run(run_id).info.status not in ("RUNNING", "SCHEDULED"):
        return
    client.set_terminated(run_id, status)
    page = ui_page(config.tracking, client.get_run(run_id).info.experiment_id, run_id)
    logger.info("Ended MLflow run %s: %s%s", run_id, status, f"; {page}" if page else "")


def log_stage(stage: str, output: str, config: Config, *, parent_run_id: str | None = None,
              location: str | None = None, run_name: str | None = None) -> str:
    """Logs a finished stage output as a run named after the stage or `run_name` (a child of
    `parent_run_id` when given) spanning the stage's start and finish (its manifest's `span_ms`): params
    from its manifest's config, metrics, documents, artifacts, child outputs and the parent run's
    metrics and tags as its stage declares them (`stages`), the splits it was made from as dataset
    inputs (`datasets.stage_inputs`; those of ingest on the parent run too). `location` is where the
    output lives for good when `output` is a local copy (a pipeline step's artifact URI). Returns the
    run id."""
    tracked_outputs = stages.tracked_outputs(stage)
    output = output.rstrip("/")
    manifest = read_manifest(output, stage)
    log = tracked_outputs(output, manifest)
    tags = {
        STAGE_TAG: stage,
        "cvpipe.code_version": manifest.code_version,
        FINGERPRINT_TAG: manifest.fingerprint,
        OUTPUT_TAG: location or output,
    }
    if manifest.dataset_fingerprint:
        tags["cvpipe.dataset_fingerprint"] = manifest.dataset_fingerprint
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id

    client = mlflow_client(config.tracking)
    started, finished = manifest.span_ms()
    run_id = client.create_run(experiment_id(client, config.tracking), start_time=started, run_name=run_name or stage,
                               tags=safe_tags(tags)).info.run_id
    try:
        metrics = _metrics(log.metrics, log.history)
        client.log_batch(run_id, metrics=metrics, params=config_params(manifest.config))
        datasets = stage_inputs(stage, manifest)
        for run in (run_id, parent_run_id) if stage == "ingest" and parent_run_id else (run_id,):
            client.log_inputs(run, datasets=datasets)
        for name, document in log.documents.items():
            client.log_dict(run_id, document, name)
        with tempfile.TemporaryDirectory() as scratch:
            for path in _existing(output, (MANIFEST_FILE, *log.artifacts)):
                local = local_copy(path, scratch)
                if os.path.isdir(local):
                    client.log_artifacts(run_id, local, posixpath.basename(path))
                else:
                    client.log_artifact(run_id, local)
        for child_stage, child_output, child_name in log.children:
            log_stage(child_stage, child_output, config, parent_run_id=run_id, run_name=child_name)
        if parent_run_id and (log.parent_metrics or log.parent_tags):
            client.log_batch(parent_run_id, metrics=_metrics(log.parent_metrics),
                             tags=[RunTag(key, value) for key, value in safe_tags(log.parent_tags).items()])
    except BaseException:
        client.set_terminated(run_id, "FAILED", end_time=finished)
        raise
    client.set_terminated(run_id, end_time=finished)
    logger.info("Logged %s output %s to MLflow run %s: %d metric values%s", stage, output, run_id, len(metrics),
                f" (parent {parent_run_id})" if parent_run_id else "")
    return run_id


def stage_runs(stage: str, output: str, fingerprint: str, config: Config) -> list[str]:
    """The ids of the FINISHED runs that logged `output` of `stage` with this manifest fingerprint
    (see `log_stage`), newest first; none when the experiment does not exist."""
    client = mlflow_client(config.tracking)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        return []
    search = " and ".join([f"tags.`{STAGE_TAG}` = {search_string(stage)}",
                           f"tags.`{OUTPUT_TAG}` = {search_string(output)}",
                           f"tags.`{FINGERPRINT_TAG}` = {search_string(fingerprint)}",
                           "attributes.status = 'FINISHED'"])
    runs = client.search_runs([experiment.experiment_id], search, order_by=["attributes.start_time DESC"])
    return [run.info.run_id for run in runs]


def log_benchmark(results: Mapping[str, Any], files: Sequence[str], config: Config) -> str:
    """Logs `make bench` results as a run named `bench`: each row's numbers as metrics keyed
    `<benchmark>.<variant>.<figure>`, the result files as artifacts. Returns the run id."""
    figures: dict[str, float] = {}
    for row in results["rows"]:
        figures.update(numbers({key: value for key, value in row.items() if key not in ("benchmark", "variant")},
                               f"{row['benchmark']}.{row['variant']}."))
    metrics = _metrics(figures)
    client = mlflow_client(config.tracking)
    run_id = start_run(config, run_name="bench", tags={STAGE_TAG: "bench"})
    try:
        client.log_batch(run_id, metrics=metrics)
        for path in files:
            client.log_artifact(run_id, path)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id)
    logger.info("Logged %d benchmark figures to MLflow run %s", len(metrics), run_id)
    return run_id


def _metrics(at_step_0: Mapping[str, float], history: Sequence[tuple[int, Mapping[str, float]]] = ()
             ) -> list[Metric]:
    """Numbers at step 0 and at the steps of `history` as metrics under valid keys, timestamped now;
    of two names that become the same key at the same step, the later one's value."""
    values = {(safe_key(name), 0): value for name, value in at_step_0.items()}
    for step, numbers_at_step in history:
        values.update({(safe_key(name), step): value for name, value in numbers_at_step.items()})
    now = int(time.time() * 1000)
    return [Metric(key, value, now, step) for (key, step), value in values.items()]


def _existing(output: str, names: Sequence[str]) -> list[str]:
    """The paths of the files and directories `names` of `output` that exist; the others are
    logged at debug level."""
    found = []
    for path in (posixpath.join(output, name) for name in names):
        if tf.io.gfile.exists(path):
            found.append(path)
        else:
            logger.debug("%s is missing: not tracked", path)
    return found

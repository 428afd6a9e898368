"""The pipeline's steps: thin kfp components over the stage functions of `components`.

Each step is a lightweight Python component (`install_kfp_package=False`) that runs in the
project image, imports the stage code there and passes typed artifacts, so the same definition
runs in `kfp.local`'s SubprocessRunner and on a cluster. Cached steps (ingest, transform) take
only content-derived values (a data fingerprint, their config sections, upstream artifacts) and
no per-run ids, so their cache key is their content; their MLflow logging is the uncached
`track_stage` step. Annotations stay real types (no `from __future__ import annotations`): kfp
reads them to type the component interface.
"""

import functools
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from pipeline.image import PROJECT_IMAGE

component = functools.partial(dsl.component, base_image=PROJECT_IMAGE, install_kfp_package=False)


@component
def configure(config: dict, model_name: str, image_size: int, model: str, epochs: int, batch_size: int,
              learning_rate: float, tune: bool, tune_trials: int, tune_algorithm: str, min_accuracy: float, min_class_recall: float, max_accuracy_drop: float,
              beam_runner: str, beam_options: list, mlflow_tracking_uri: str
              ) -> NamedTuple("Outputs", [("config", dict), ("ingest_config", dict), ("transform_config", dict)]):
    """Sets the typed parameters on `config` and validates it; the cached steps get their sections only."""
    import collections

    from pipeline.parameters import resolve_config, step_config
    from pipeline.runtime import step_setup

    step_setup({})
    resolved = resolve_config(config, dict(
        model_name=model_name, image_size=image_size, model=model, epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, tune=tune, tune_trials=tune_trials, tune_algorithm=tune_algorithm,
        min_accuracy=min_accuracy, min_class_recall=min_class_recall,
        max_accuracy_drop=max_accuracy_drop, beam_runner=beam_runner, beam_options=beam_options,
        mlflow_tracking_uri=mlflow_tracking_uri))
    outputs = collections.namedtuple("Outputs", ["config", "ingest_config", "transform_config"])
    return outputs(resolved.to_dict(), step_config(resolved, "ingest"), step_config(resolved, "transform"))


@component
def start_run(data_source: str, config: dict, kfp_run_id: str, kfp_run_name: str, mlflow_run_id: str
              ) -> NamedTuple("Outputs", [("mlflow_run_id", str), ("data_fingerprint", str)]):
    """Fingerprints the data's content and opens this pipeline run's MLflow parent run (tagged with both),
    named `kfp_run_name` (the KFP job's name, that of its artifact folder); `mlflow_run_id` is a run
    reserved for it (by `python -m pipeline retrain`), or empty."""
    import collections

    from components.ingest.fingerprint import fingerprint_source
    from components.tracking.runs import (DATA_FINGERPRINT_TAG, DATA_INPUTS_TAG, DATA_SOURCE_TAG, KFP_RUN_ID_TAG,
                                          source_tag, start_pipeline_run)
    from pipeline.runtime import step_setup

    settings = step_setup(config)
    source = fingerprint_source(data_source)
    run_id = ""
    if settings.tracking.enabled:
        run_id = start_pipeline_run(settings, run_name=kfp_run_name, run_id=mlflow_run_id, tags={
            KFP_RUN_ID_TAG: kfp_run_id, DATA_SOURCE_TAG: source_tag(data_source),
            DATA_FINGERPRINT_TAG: source.sha256, DATA_INPUTS_TAG: str(source.inputs)})
    return collections.namedtuple("Outputs", ["mlflow_run_id", "data_fingerprint"])(run_id, source.sha256)


@component
def finish_run(kfp_run_id: str, mlflow_run_id: str, config: dict, mlflow_tracking_uri: str,
               status: dsl.PipelineTaskFinalStatus):
    """Ends the pipeline's MLflow run with the pipeline's final state (runs even when a step failed):
    the run tagged with `kfp_run_id`, else the reserved `mlflow_run_id` (the run failed before it
    was tagged)."""
    import logging

    from components.tracking import runs as mlflow_runs
    from pipeline.parameters import resolve_config
    from pipeline.runtime import step_setup

    step_setup({})
    settings = resolve_config(config, {"mlflow_tracking_uri": mlflow_tracking_uri})
    if not settings.tracking.enabled:
        return
    runs = [run.info.run_id for run in mlflow_runs.pipeline_runs(settings, kfp_run_id=kfp_run_id, max_results=1)]
    run_id = (runs or [mlflow_run_id])[0]
    if not run_id:
        logging.getLogger("pipeline").warning("No MLflow run is tagged with KFP run %s: nothing to end", kfp_run_id)
        return
    state = {"SUCCEEDED": "FINISHED", "CANCELED": "KILLED", "CANCELLED": "KILLED"}.get(status.state, "FAILED")
    mlflow_runs.finish_run(run_id, settings, status=state)


@component
def ingest(data_source: str, data_fingerprint: str, code_fingerprint: str, config: dict, records: Output[Dataset]):
    """Validated, split TFRecords of `data_source`; `data_fingerprint` (its content) and
    `code_fingerprint` (the stage code's) key the cache.

    Its counts are the records' metadata: a cached step's outputs must all be files, which a
    Metrics artifact is not."""
    from components.ingest.run import run_ingest
    from pipeline.runtime import step_setup

    result = run_ingest(data_source, records.path, step_setup(config), overwrite=True)
    stats = result.stats
    records.metadata.update({"source": data_source, "source_fingerprint": data_fingerprint,
                             "code_fingerprint": code_fingerprint, "fingerprint": result.fingerprint,
                             "inputs": stats.inputs, "accepted": stats.accepted, "rejected": stats.rejected,
                             **{f"{split}_images": images for split, images in stats.split_images().items()}})


@component
def track_stage(stage: str, output: Input[Artifact], config: dict, parent_run_id: str):
    """Logs a (possibly cached) stage output to this pipeline run in MLflow."""
    from pipeline.runtime import step_setup, track

    track(stage, output.path, output.uri, step_setup(config), parent_run_id)


@component
def transform(records: Input[Dataset], code_fingerprint: str, config: dict, transformed: Output[Dataset]):
    """Analyses the training split with tf.transform and writes the transform graph and transformed data;
    `code_fingerprint` (the stage code's) is part of the cache key."""
    from components.transform.run import run_transform
    from pipeline.runtime import step_setup

    result = run_transform(records.path, transformed.path, step_setup(config), overwrite=True)
    transformed.metadata.update({"fingerprint": result.fingerprint, "code_fingerprint": code_fingerprint})


@component
def tune(transformed: Input[Dataset], config: dict, parent_run_id: str, tuning: Output[Artifact]):
    """With `tune.enabled`: searches the train stage's hyperparameters (tune.space), and train uses the best
    trial's; a retried task resumes the search. Off: an empty output marked untuned, and no TensorFlow."""
    import os

    from pipeline.runtime import step_setup, track

    settings = step_setup(config)
    tuning.metadata["tuned"] = settings.tune.enabled
    if not settings.tune.enabled:
        os.makedirs(tuning.path, exist_ok=True)
        return
    from components.tune.search import run_tuning

    best = run_tuning(transformed.path, tuning.path, settings).tuning["best"]
    tuning.metadata.update({"best_trial": best["trial"], f"best_{settings.tune.objective}": best["objective"],
                            **{f"best.{key}": value for key, value in best["hyperparameters"].items()}})
    track("tune", tuning.path, tuning.uri, settings, parent_run_id)


@component
def train(transformed: Input[Dataset], tuning: Input[Artifact], config: dict, parent_run_id: str,
          model: Output[Model], metrics: Output[Metrics]):
    """Trains the configured Keras model, with the best hyperparameters of `tuning` when it is a search;
    a retried task resumes from its checkpoints."""
    import dataclasses

    from components.train.run import run_training
    from pipeline.runtime import step_setup, track

    settings = step_setup(config)
    record = None
    if tuning.metadata.get("tuned"):
        from components.tune.best import read_best_trial

        best = dataclasses.replace(read_best_trial(tuning.path), output=tuning.uri)
        settings, record = best.apply(settings), best.record()
    result = run_training(transformed.path, model.path, settings, tuning=record)
    for split, values in result.training["final"].items():
        for name, value in values.items():
            metrics.log_metric(f"{split}_{name}", value)
    metrics.log_metric("epochs_run", result.training["epochs_run"])
    model.metadata.update({"framework": "tensorflow", "model": settings.train.model,
                           "weights_sha256": result.training["weights_sha256"]})
    track("train", model.path, model.uri, settings, parent_run_id)


@component
def export(model: Input[Model], transformed: Input[Dataset], model_name: str, serving_base_path: str, config: dict,
           parent_run_id: str, saved_model: Output[Model]):
    """Exports the trained model with its transform graph: a serving SavedModel at NAME/<version>, the
    version the next free one in the registry and under `serving_base_path` (components.model_versions)."""
    import posixpath

    from components.export.run import run_export
    from components.model_versions import next_model_version
    from pipeline.runtime import step_setup, track

    settings = step_setup(config)
    result = run_export(model.path, transformed.path, posixpath.join(saved_model.path, model_name), settings,
                        version=next_model_version(settings, serving_base_path))
    saved_model.metadata.update({"model_name": model_name, "version": result.version, "framework": "tensorflow"})
    track("export", result.output, f"{saved_model.uri}/{model_name}/{result.version}", settings, parent_run_id)


@component
def evaluate(saved_model: Input[Model], records: Input[Dataset], config: dict, parent_run_id: str,
             evaluation: Output[Artifact], metrics: Output[Metrics], confusion_matrix: Output[ClassificationMetrics],
             report: Output[HTML]) -> bool:
    """Evaluates the exported model against thresholds and the registered champion; returns the blessing.

    A plain return value (output `Output`), not a NamedTuple: kfp.local resolves a condition on a
    sibling task's output only by that name."""
    import shutil
    import tempfile

    from components.artifacts import REPORT_FILE
    from components.evaluate.champion import registered_champion
    from components.evaluate.run import run_evaluate
    from pipeline.runtime import saved_model_base, step_setup, track

    settings = step_setup(config)
    with tempfile.TemporaryDirectory(prefix="cvpipe-champion-") as download:
        champion = registered_champion(settings, download) if settings.tracking.enabled else None
        result = run_evaluate(saved_model_base(saved_model.path, saved_model.metadata), records.path,
                              evaluation.path, settings, champion=champion, overwrite=True)
    first_split = settings.evaluate.splits[0]
    for split, values in result.evaluation["splits"].items():
        for name in ("accuracy", "log_loss", "ece"):
            metrics.log_metric(f"{split}_{name}", values[name])
        metrics.log_metric(f"{split}_macro_f1", values["macro"]["f1"])
    matrix = result.evaluation["splits"][first_split]["confusion_matrix"]
    confusion_matrix.log_confusion_matrix(matrix["labels"], matrix["matrix"])
    report.path += ".html"  # browsers and file managers open it as a page (the KFP UI shows it either way)
    shutil.copyfile(f"{evaluation.path}/{REPORT_FILE}", report.path)
    blessed = bool(result.blessing["blessed"])
    evaluation.metadata.update({"blessed": blessed, "reasons": result.blessing["reasons"]})
    track("evaluate", evaluation.path, evaluation.uri, settings, parent_run_id)
    return blessed


@component
def register(saved_model: Input[Model], evaluation: Input[Artifact], config: dict, parent_run_id: str
             ) -> NamedTuple("Outputs", [("model_uri", str)]):
    """Registers the exported model in the MLflow registry; a blessed one becomes the champion."""
    import collections

    from components.register import run_register
    from pipeline.runtime import saved_model_base, step_setup

    settings = step_setup(config)
    uri = ""
    if settings.tracking.enabled:
        uri = run_register(saved_model_base(saved_model.path, saved_model.metadata), evaluation.path, settings,
                           parent_run_id=parent_run_id or None).uri
    return collections.namedtuple("Outputs", ["model_uri"])(uri)


@component
def deploy(saved_model: Input[Model], evaluation: Input[Artifact], serving_base_path: str, model_name: str,
           serving_address: str, config: dict) -> NamedTuple("Outputs", [("version", int)]):
    """Pushes the blessed model into TF Serving's model base path as the new stable version, under the
    export's version number."""
    import collections

    from components.deploy.run import push
    from pipeline.runtime import saved_model_base, step_setup

    result = push(saved_model_base(saved_model.path, saved_model.metadata), serving_base_path, model_name,
                  step_setup(config), evaluation=evaluation.path, server=serving_address or None,
                  version=int(saved_model.metadata["version"]))
    return collections.namedtuple("Outputs", ["version"])(result.version)


@component
def batch_predict(saved_model: Input[Model], records: Input[Dataset], batch_input: str, config: dict,
                  parent_run_id: str, predictions: Output[Dataset], summary: Output[Metrics]):
    """Scores `batch_input` (images, a CSV or TFRecords; `split:NAME` is this run's split NAME) with Beam."""
    from components.batch_predict.run import run_batch_predict
    from pipeline.runtime import saved_model_base, step_setup, track

    settings = step_setup(config)
    source, splits = batch_input, ()
    if batch_input.startswith("split:"):
        source, splits = records.path, tuple(batch_input.removeprefix("split:").split(","))
    result = run_batch_predict(saved_model_base(saved_model.path, saved_model.metadata), source, predictions.path,
                               settings, splits=splits, overwrite=True)
    for name in ("inputs", "predictions", "errors", "images_per_second"):
        summary.log_metric(name, result.summary[name])
    predictions.metadata.update({"input": batch_input, "format": result.summary["format"]})
    track("batch_predict", predictions.path, predictions.uri, settings, parent_run_id)

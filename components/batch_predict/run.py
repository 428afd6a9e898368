"""The batch_predict stage: a model (SavedModel, registered MLflow version or TF Serving endpoint)
over many images (a glob, a CSV of URIs or an ingest output), with Beam RunInference.

Output directory:
  predictions-SSSSS-of-NNNNN.<jsonl|csv|parquet|tfrecord.gz>  one row per scored input (outputs.py)
  errors.jsonl    one line per input that has no prediction: uri, reason, detail
  summary.json    counts (inputs == predictions + errors), errors by reason, classes, model, images/s
  manifest.json   written last

Everything is written to `<output>.tmp-<id>` and renamed into place at the end (components.staging).
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import posixpath
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Sequence

import tensorflow as tf

from components.artifacts import DATASET_FINGERPRINT, ERRORS_FILE, MODEL_FINGERPRINT, SUMMARY_FILE, fingerprint
from components.batch_predict.handlers import EndpointHandler, SavedModelHandler
from components.batch_predict.inputs import list_inputs
from components.batch_predict.models import ModelInfo, resolve_model
from components.batch_predict.outputs import ROWS_PER_SHARD
from components.batch_predict.pipeline import SHARDS_SUMMARY_FILE, build_pipeline
from components.batch_predict.remote import EndpointError
from components.beam_runtime import beam_options, beam_pipeline
from components.config import BatchPredictConfig, Config
from components.files import read_json, write_json
from components.manifest import Manifest, write_manifest
from components.staging import staged_output

logger = logging.getLogger(__name__)

STAGE = "batch_predict"


class BatchPredictError(RuntimeError):
    """The run could not score its inputs; the message says why."""


@dataclass(frozen=True)
class BatchPredictResult:
    output: str
    summary: dict[str, Any]
    fingerprint: str


def run_batch_predict(
    model: str,
    input_path: str,
    output: str,
    config: Config,
    *,
    output_format: str | None = None,
    splits: Sequence[str] = (),
    labels: str | None = None,
    runner: str | None = None,
    beam_args: Sequence[str] = (),
    overwrite: bool = False,
) -> BatchPredictResult:
    """Scores every input of `input_path` with `model` and moves the complete output to `output`.

    `output_format` overrides batch_predict.format; `splits` selects splits of an ingest output;
    `labels` is a labels.txt for the top-k labels of an endpoint (a SavedModel has its own).
    """
    settings = config.batch_predict
    fmt = output_format or settings.format
    if fmt not in BatchPredictConfig.FORMATS:
        raise ValueError(f"format must be one of {BatchPredictConfig.FORMATS}, got {fmt!r}")
    started = time.monotonic()
    options = beam_options(config, runner, beam_args)
    local_workers = options.get_all_options()["runner"] in ("DirectRunner", "direct", None)

    with tempfile.TemporaryDirectory(prefix="cvpipe-batch-predict-") as scratch, \
            staged_output(output, overwrite) as work_dir:
        shared_model_dir = None if local_workers else posixpath.join(work_dir, "_model")
        info = resolve_model(model, config, scratch, labels=labels, shared_dir=shared_model_dir)
        if info.labels is None and settings.top_k > 1:
            raise ValueError(f"{model}: the class names are unknown, so top-k labels cannot be written; pass "
                             "--labels (the model's assets/labels.txt) or --set batch_predict.top_k=1")
        listing = list_inputs(input_path, splits)
        num_shards = settings.output_shards or max(1, math.ceil(listing.count / ROWS_PER_SHARD))
        handler = (EndpointHandler(info.endpoint, settings, info.model_id) if info.remote
                   else SavedModelHandler(info.saved_model, settings, info.model_id))
        # An endpoint gets `remote_max_concurrent_requests` requests of `batch_size` images per element.
        element_size = settings.batch_size * (settings.remote_max_concurrent_requests if info.remote else 1)
        logger.info("Scoring %d inputs (%s) from %s into %s (working in %s), %d %s file(s)", listing.count,
                    listing.kind, input_path, output, work_dir, num_shards, fmt)
        pipeline = beam_pipeline(options)
        build_pipeline(pipeline, listing, handler, settings, element_size=element_size, fmt=fmt, num_shards=num_shards,
                       labels=info.labels, model_name=info.name, model_version=info.version, output_dir=work_dir)
        try:
            result = pipeline.run()
            result.wait_until_finish()
        except Exception as e:
            raise BatchPredictError(f"scoring with {info.model_id} failed: {_last_line(e)}") from e
        seconds = time.monotonic() - started
        scoring_seconds = _scoring_seconds(result)
        summary, output_fingerprint = _reconcile(work_dir, listing.count, info, fmt)
        summary.update({
            "input": input_path,
            "seconds": round(seconds, 2),
            "images_per_second": round(listing.count / seconds, 1) if seconds else None,
            # From the first model call's start to the last one's end, over all workers: throughput
            # without worker start-up and model loading.
            "scoring_seconds": scoring_seconds,
            "scoring_images_per_second": round(listing.count / scoring_seconds, 1) if scoring_seconds else None,
            "batch_size": settings.batch_size,
        })
        tf.io.gfile.remove(posixpath.join(work_dir, SHARDS_SUMMARY_FILE))
        if shared_model_dir and tf.io.gfile.exists(shared_model_dir):
            tf.io.gfile.rmtree(shared_model_dir)
        write_json(posixpath.join(work_dir, SUMMARY_FILE), summary)
        write_manifest(work_dir, Manifest(
            stage=STAGE,
            fingerprint=output_fingerprint,
            inputs={"model": model, "input": input_path, MODEL_FINGERPRINT: info.fingerprint,
                    DATASET_FINGERPRINT: listing.fingerprint},
            config={STAGE: config.to_dict()[STAGE], "format": fmt},
            outputs={"files": summary["files"], "inputs": summary["inputs"], "predictions": summary["predictions"],
                     "errors": summary["errors"], "model": summary["model"]},
        ))
    logger.info("Scored %d inputs in %.1f s (%.0f images/s): %d predictions (%s), %d errors (%s)",
                summary["inputs"], seconds, summary["images_per_second"] or 0, summary["predictions"],
                ", ".join(f"{c} {n}" for c, n in summary["classes"].items()) or "none", summary["errors"],
                ", ".join(f"{r} {n}" for r, n in summary["errors_by_reason"].items()) or "none")
    return BatchPredictResult(output.rstrip("/"), summary, output_fingerprint)


def _reconcile(work_dir: str, inputs: int, info: ModelInfo, fmt: str) -> tuple[dict[str, Any], str]:
    """summary.json from the pipeline's reports; checks that every input is accounted for."""
    shards = read_json(posixpath.join(work_dir, SHARDS_SUMMARY_FILE))
    with tf.io.gfile.GFile(posixpath.join(work_dir, ERRORS_FILE), "rb") as f:
        errors_data = f.read()
    reasons = collections.Counter(json.loads(line)["reason"] for line in errors_data.decode().splitlines() if line)
    predictions = sum(s["rows"] for s in shards)
    errors = sum(reasons.values())
    if predictions + errors != inputs:
        raise BatchPredictError(f"internal error: {inputs} inputs but {predictions} predictions + {errors} errors")
    classes: collections.Counter = collections.Counter()
    for shard in shards:
        classes.update(shard["classes"])
    output_fingerprint = fingerprint(
        {"model": [info.name, info.version, info.fingerprint], "format": fmt,
         "files": [[s["file"], s["sha256"]] for s in shards],
         "errors": hashlib.sha256(errors_data).hexdigest()})
    summary = {
        "inputs": inputs,
        "predictions": predictions,
        "errors": errors,
        "errors_by_reason": dict(sorted(reasons.items())),
        "classes": dict(sorted(classes.items())),
        "model": info.describe(),
        "format": fmt,
        "files": [{k: s[k] for k in ("file", "rows", "bytes", "sha256")} for s in shards],
    }
    return summary, output_fingerprint


def _scoring_seconds(result) -> float | None:
    """Wall-clock seconds from the first model call to the end of the last (None when the runner
    reports no distribution metrics)."""
    from apache_beam.metrics.metric import MetricsFilter

    from components.batch_predict.handlers import SCORING_END, SCORING_NAMESPACE, SCORING_START

    try:
        found = result.metrics().query(MetricsFilter().with_namespace(SCORING_NAMESPACE))["distributions"]
    except Exception as e:  # a runner without metrics support
        logger.debug("no scoring metrics: %s", e)
        return None
    values = {m.key.metric.name: m.committed or m.attempted for m in found}
    start, end = values.get(SCORING_START), values.get(SCORING_END)
    if not start or not end or not start.count:
        return None
    return round(max(end.max - start.min, 1) / 1000, 2)


def _last_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


__all__ = ["BatchPredictError", "BatchPredictResult", "EndpointError", "run_batch_predict"]

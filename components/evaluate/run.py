"""The evaluate stage: the exported serving model on held-out splits, sliced, and its blessing.

It evaluates what will be served: the SavedModel's `serving_default` on the records' image bytes
(the tf.transform graph included), in process, in batches. Output directory:
  evaluation.json            metrics per split (components.evaluate.metrics), slices, the champion (its
                             version and run when registered: components.evaluate.champion) and its
                             metrics, the first split's most confident mistakes
  blessing.json              the decision, every check and the reasons (components.evaluate.blessing)
  predictions.jsonl          one row per image: split, uri, label, probabilities (the raw predictions)
  confusion_matrix_<split>.png, calibration_<split>.png
  evaluation.html            the report, images embedded (the mistakes as thumbnails)
  manifest.json              written last

Pass the ingest output as data to slice by the original image's size and format (the transform's
records hold resized images).
"""

from __future__ import annotations

import datetime
import json
import logging
import posixpath
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import tensorflow as tf

from components.artifacts import (BLESSING_FILE, DATASET_FINGERPRINT, EVALUATION_FILE, EXPORT_FILE, IMAGE_INPUT,
                                  MANIFEST_FILE,
                                  MODEL_LABELS_FILE, PREDICTIONS_FILE, PROBABILITIES, REPORT_FILE, SERVING_SIGNATURE,
                                  calibration_file, confusion_matrix_file, fingerprint, saved_model_dir)
from components.config import Config, EvaluateConfig
from components.dataset import read_split, split_files
from components.evaluate import report
from components.evaluate.blessing import bless
from components.evaluate.champion import Champion
from components.evaluate.metrics import classification_metrics, most_confident_mistakes, size_bucket, sliced_metrics
from components.files import exists, read_json, write_json
from components.manifest import Manifest, read_manifest, write_manifest
from components.records import FEATURE_TYPES
from components.staging import staged_output

logger = logging.getLogger(__name__)

SIZE_SLICE = "size"


@dataclass(frozen=True)
class EvaluateResult:
    output: str
    evaluation: dict[str, Any]
    blessing: dict[str, Any]


@dataclass(frozen=True)
class _Predictions:
    """One split's raw predictions and what is needed to slice them."""

    uris: list[str]
    label_ids: np.ndarray
    probabilities: np.ndarray
    slices: dict[str, list[str]]


def _export_record(model: str) -> dict[str, Any]:
    """The model's export.json (components.export), or {} for a SavedModel exported otherwise."""
    path = posixpath.join(model, EXPORT_FILE)
    return read_json(path) if exists(path) else {}


def run_evaluate(model: str, data: str, output: str, config: Config, *, champion: Champion | None = None,
                 overwrite: bool = False) -> EvaluateResult:
    """Evaluates the SavedModel `model` (and the `champion`'s, if given) on `data` and blesses it."""
    settings = config.evaluate
    model = saved_model_dir(model)
    champion_model = saved_model_dir(champion.model) if champion else None
    champion_identity = champion.describe(champion_model) if champion else None
    champion_name = champion_identity["model"] if champion_identity else None
    data_manifest = read_manifest(data, "ingest", "transform")
    _check_slices(settings)
    splits = [s for s in settings.splits if split_files(data, s)]
    if settings.splits[0] not in splits:
        raise ValueError(f"{data} has no {settings.splits[0]} records to evaluate on (evaluate.splits[0] decides "
                         f"the blessing)")
    started = time.monotonic()
    labels = _model_labels(model)
    serve = tf.saved_model.load(model).signatures[SERVING_SIGNATURE]
    predictions = {split: _predict(serve, data, split, labels, settings) for split in splits}
    seconds = time.monotonic() - started
    images = sum(len(p.uris) for p in predictions.values())
    candidate = {
        split: {**classification_metrics(p.label_ids, p.probabilities, labels, top_k=settings.top_k,
                                         calibration_bins=settings.calibration_bins),
                "slices": sliced_metrics(p.label_ids, p.probabilities, p.slices, top_k=settings.top_k)}
        for split, p in predictions.items()
    }
    champion_metrics = _champion_metrics(champion_model, data, splits, labels, settings)
    misclassified = _misclassified(settings.splits[0], predictions[settings.splits[0]], labels,
                                   settings.misclassified_examples)
    evaluation = {
        "model": model,
        "data": data,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "seconds": round(seconds, 2),
        "images_per_second": round(images / seconds, 1),
        "labels": labels,
        "splits": candidate,
        "champion": None if champion_metrics is None else {**champion_identity, "splits": champion_metrics},
        "misclassified": misclassified,
        "tuning": _export_record(model).get("tuning"),
    }
    blessing = bless(candidate, champion_metrics, settings,
                     champion=None if champion_metrics is None else champion_identity)
    logger.info("Evaluated %s on %d images in %.1f s (%.0f images/s): %s; %s", model, images, seconds,
                images / seconds, {s: m["accuracy"] for s, m in candidate.items()},
                ("BLESSED" if blessing["blessed"] else "NOT BLESSED") + ": " + "; ".join(blessing["reasons"]))

    with staged_output(output, overwrite) as work_dir:
        write_json(posixpath.join(work_dir, EVALUATION_FILE), evaluation)
        write_json(posixpath.join(work_dir, BLESSING_FILE), blessing)
        _write_predictions(posixpath.join(work_dir, PREDICTIONS_FILE), predictions, labels)
        figures: dict[str, dict[str, bytes]] = {}
        for split, metrics in candidate.items():
            matrix_png = posixpath.join(work_dir, confusion_matrix_file(split))
            report.plot_confusion_matrix(metrics["confusion_matrix"]["matrix"], labels, matrix_png,
                                         title=f"Confusion matrix ({split})")
            calibration_png = posixpath.join(work_dir, calibration_file(split))
            report.plot_calibration(metrics["calibration"], calibration_png, title=f"Calibration ({split})")
            figures[split] = {}
            for title, path in ((f"Confusion matrix ({split})", matrix_png), (f"Calibration ({split})", calibration_png)):
                with tf.io.gfile.GFile(path, "rb") as f:
                    figures[split][title] = f.read()
        images = _record_images(data, misclassified["split"], {m["uri"] for m in misclassified["examples"]},
                                settings.batch_size)
        report.write_report(posixpath.join(work_dir, REPORT_FILE), evaluation, blessing, figures,
                            {uri: report.thumbnail(encoded) for uri, encoded in images.items()})
        write_manifest(work_dir, Manifest(
            stage="evaluate",
            fingerprint=_fingerprint(model, data_manifest.fingerprint, champion_name, config),
            inputs={"model": model, "data": data, "champion": champion_name or "",
                    DATASET_FINGERPRINT: data_manifest.dataset_fingerprint},
            config={"evaluate": config.to_dict()["evaluate"]},
            outputs={"blessed": blessing["blessed"],
                     "accuracy": {split: m["accuracy"] for split, m in candidate.items()}},
        ))
    return EvaluateResult(output.rstrip("/"), evaluation, blessing)


def _check_slices(settings: EvaluateConfig) -> None:
    unknown = sorted(set(settings.slices) - set(FEATURE_TYPES) - {SIZE_SLICE})
    if unknown:
        raise ValueError(f"evaluate.slices: unknown record field(s) {unknown}; choose from "
                         f"{sorted(FEATURE_TYPES)} or {SIZE_SLICE!r}")


def _model_labels(model: str) -> list[str]:
    """The served model's class names in id order (its labels asset)."""
    with tf.io.gfile.GFile(posixpath.join(model, MODEL_LABELS_FILE)) as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def _batches(data: str, split: str, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    for batch in read_split(data, split, decode=False).batch(batch_size):
        yield {key: value.numpy() for key, value in batch.items()}


def _predict(serve: Callable[..., dict[str, tf.Tensor]], data: str, split: str, labels: list[str],
             settings: EvaluateConfig) -> _Predictions:
    """Runs a `serving_default` signature over one split in batches; label ids follow `labels`."""
    index = {label: i for i, label in enumerate(labels)}
    uris, label_ids, probabilities = [], [], []
    slices: dict[str, list[str]] = {name: [] for name in settings.slices}
    for batch in _batches(data, split, settings.batch_size):
        texts = batch["label/text"].astype(str)
        unknown = sorted(set(texts) - set(index))
        if unknown:
            raise ValueError(f"{data} {split}: labels {unknown} are not among the model's classes {labels}")
        probabilities.append(serve(**{IMAGE_INPUT: tf.constant(batch["image/encoded"])})[PROBABILITIES].numpy())
        label_ids.extend(index[t] for t in texts)
        uris.extend(batch["image/source"].astype(str))
        for name in settings.slices:
            slices[name].extend(
                [size_bucket(h, w) for h, w in zip(batch["image/height"], batch["image/width"])]
                if name == SIZE_SLICE else [_text(v) for v in batch[name]])
    return _Predictions(uris, np.asarray(label_ids), np.concatenate(probabilities), slices)


def _misclassified(split: str, predictions: _Predictions, labels: list[str], count: int) -> dict[str, Any]:
    """How many of `split` are misclassified, and the `count` most confident mistakes: uri, true label,
    predicted label and its probability."""
    chosen = most_confident_mistakes(predictions.label_ids, predictions.probabilities, count) if count else []
    return {"split": split,
            "total": int(np.sum(predictions.probabilities.argmax(axis=1) != predictions.label_ids)),
            "examples": [{"uri": predictions.uris[i], "label": labels[predictions.label_ids[i]],
                          "predicted": labels[int(predictions.probabilities[i].argmax())],
                          "confidence": round(float(predictions.probabilities[i].max()), 6)} for i in chosen]}


def _record_images(data: str, split: str, uris: set[str], batch_size: int) -> dict[str, bytes]:
    """The records' image bytes of the given source URIs."""
    images: dict[str, bytes] = {}
    if not uris:
        return images
    for batch in _batches(data, split, batch_size):
        for uri, encoded in zip(batch["image/source"].astype(str), batch["image/encoded"]):
            if uri in uris:
                images[uri] = bytes(encoded)
        if len(images) == len(uris):
            break
    return images


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _champion_metrics(champion: str | None, data: str, splits: list[str], labels: list[str],
                      settings: EvaluateConfig) -> dict[str, Any] | None:
    """The champion's metrics on the same splits, or None (no champion, or other classes)."""
    if champion is None:
        return None
    champion_labels = _model_labels(champion)
    if champion_labels != labels:
        logger.warning("The champion %s has other classes (%s) than the candidate (%s): no change thresholds",
                       champion, champion_labels, labels)
        return None
    no_slices = EvaluateConfig(**{**settings.__dict__, "slices": []})
    serve = tf.saved_model.load(champion).signatures[SERVING_SIGNATURE]
    return {split: classification_metrics(p.label_ids, p.probabilities, labels, top_k=settings.top_k,
                                          calibration_bins=settings.calibration_bins)
            for split in splits for p in [_predict(serve, data, split, labels, no_slices)]}


def _write_predictions(path: str, predictions: dict[str, _Predictions], labels: list[str]) -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        for split, p in predictions.items():
            for uri, label_id, row in zip(p.uris, p.label_ids, p.probabilities):
                f.write(json.dumps({"split": split, "uri": uri, "label": labels[label_id],
                                    "probabilities": [round(float(v), 7) for v in row]}) + "\n")


def _fingerprint(model: str, data_fingerprint: str, champion: str | None, config: Config) -> str:
    export = read_manifest(model, "export").fingerprint if tf.io.gfile.exists(
        posixpath.join(model, MANIFEST_FILE)) else model
    return fingerprint({"model": export, "data": data_fingerprint, "champion": champion or "",
                        "evaluate": config.to_dict()["evaluate"]})

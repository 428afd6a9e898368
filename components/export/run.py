"""The export stage: a trained model and its transform become a servable, versioned SavedModel.

Output `BASE/NAME/<version>/` (the next integer version; TF Serving's layout):
  saved_model.pb, variables/       the serving model (components.export.serving)
  assets/labels.txt                class names in id order, used by the graph
  assets.extra/tf_serving_warmup_requests
  tflite/model_<variant>.tflite    on-device variants (components.export.tflite)
  export.json                      signatures, labels, the pixel limit, TFLite sizes and accuracy
                                   against the SavedModel
  manifest.json                    written last

The graph refuses images whose header declares more than ingest.max_pixels pixels (the limit ingest
applies, taken from the configuration at export) before it decodes them; export.json and the
manifest record the limit.

The version appears whole: it is written under a non-integer name (which TF Serving ignores)
and renamed into place.
"""

from __future__ import annotations

import logging
import posixpath
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from components.artifacts import (DATASET_FINGERPRINT, EXPORT_FILE, IMAGE_INPUT, IMAGES_INPUT, IMAGES_SIGNATURE, LABEL,
                                  MANIFEST_FILE, MODEL_DIR, OUTPUT_KEYS, PROBABILITIES, SERVING_SIGNATURE, TFLITE_DIR,
                                  TRAIN_FINGERPRINT, TRAINING_FILE, TRANSFORM_FINGERPRINT, TransformStats, fingerprint,
                                  next_version, tflite_file)
from components.config import Config
from components.dataset import read_labels, read_split, split_files
from components.export import tflite
from components.export.serving import save_serving_model
from components.export.warmup import write_warmup_requests
from components.files import read_json, write_json
from components.manifest import Manifest, read_manifest, write_manifest
from components.staging import staged_output

logger = logging.getLogger(__name__)


class ExportError(ValueError):
    """The inputs cannot be exported together, or the exported model fails its own check."""


@dataclass(frozen=True)
class ExportResult:
    output: str  # the version directory
    version: int
    export: dict[str, Any]


def run_export(train_dir: str, transform_dir: str, output: str, config: Config,
               *, version: int | None = None) -> ExportResult:
    """Exports the model trained in `train_dir` with the transform it was trained on to `output/<version>`."""
    started = time.monotonic()
    train = read_manifest(train_dir, "train")
    transform = read_manifest(transform_dir, "transform")
    if train.inputs.get(TRANSFORM_FINGERPRINT) != transform.fingerprint:
        raise ExportError(f"{train_dir} was trained on another transform output than {transform_dir} "
                          f"(fingerprint {train.inputs.get(TRANSFORM_FINGERPRINT)} != {transform.fingerprint}); "
                          f"pass the transform directory the model was trained on")
    settings = config.export
    output = output.rstrip("/")
    model_name = posixpath.basename(output)
    version = version or next_version(output)
    target = posixpath.join(output, str(version))
    labels = read_labels(transform_dir)
    stats = TransformStats.read(transform_dir)
    max_pixels = config.ingest.max_pixels
    if max_pixels < stats.image_size ** 2:
        raise ExportError(f"ingest.max_pixels={max_pixels} is below the model's own input size "
                          f"{stats.image_size}x{stats.image_size}")

    with staged_output(target, overwrite=False) as work_dir:
        serving = save_serving_model(posixpath.join(train_dir, MODEL_DIR), transform_dir, work_dir, max_pixels,
                                     settings.filename_prefix)
        warmup_images = _test_images(transform, transform_dir, settings.warmup_requests, max_pixels)
        if warmup_images:
            write_warmup_requests(work_dir, model_name, warmup_images)
        loaded = tf.saved_model.load(work_dir)
        _check_serving(loaded, warmup_images, labels)
        variants = _export_tflite(serving.model, loaded, transform_dir, work_dir, stats, config) if settings.tflite else {}
        export = {
            "model_name": model_name,
            "version": version,
            "signatures": sorted(loaded.signatures.keys()),
            "outputs": list(OUTPUT_KEYS),
            "labels": labels,
            "image_size": stats.image_size,
            "max_pixels": max_pixels,
            "warmup_requests": len(warmup_images),
            "tflite": variants,
            "seconds": round(time.monotonic() - started, 1),
            # The search the training's hyperparameters came from (components.tune), or None.
            "tuning": read_json(posixpath.join(train_dir, TRAINING_FILE)).get("tuning"),
        }
        write_json(posixpath.join(work_dir, EXPORT_FILE), export)
        graph_config = {"export": config.to_dict()["export"], "ingest": {"max_pixels": max_pixels}}
        write_manifest(work_dir, Manifest(
            stage="export",
            fingerprint=fingerprint({"train": train.fingerprint, **graph_config}),
            inputs={"train": train_dir, TRAIN_FINGERPRINT: train.fingerprint, "transform": transform_dir,
                    DATASET_FINGERPRINT: transform.dataset_fingerprint},
            config=graph_config,
            outputs={"version": version, "signatures": export["signatures"], "labels": labels,
                     "max_pixels": max_pixels},
        ))
    logger.info("Exported %s version %d to %s in %.1f s: signatures %s; TFLite %s", model_name, version, target,
                export["seconds"], export["signatures"], variants)
    return ExportResult(target, version, export)


def _test_images(transform: Manifest, transform_dir: str, count: int, max_pixels: int) -> list[bytes]:
    """Up to `count` encoded test images of at most `max_pixels` pixels: the original bytes from the
    ingest output when it is still there (they also exercise resizing), else the transform's resized ones."""
    ingest_dir = transform.inputs.get("ingest", "")
    source = ingest_dir if ingest_dir and tf.io.gfile.exists(posixpath.join(ingest_dir, MANIFEST_FILE)) else transform_dir
    records = read_split(source, "test", decode=False).filter(
        lambda record: record["image/height"] * record["image/width"] <= max_pixels).take(count)
    return [record["image/encoded"].numpy() for record in records]


def _check_serving(loaded: tf.Module, images: list[bytes], labels: list[str]) -> None:
    """Runs `serving_default` on real images: shapes, probabilities and labels must be sane."""
    if not images:
        return
    outputs = loaded.signatures[SERVING_SIGNATURE](**{IMAGE_INPUT: tf.constant(images)})
    probabilities = outputs[PROBABILITIES].numpy()
    if probabilities.shape != (len(images), len(labels)) or not np.allclose(probabilities.sum(axis=1), 1, atol=1e-4):
        raise ExportError(f"the exported {SERVING_SIGNATURE} returned probabilities of shape {probabilities.shape} "
                          f"for {len(images)} images and {len(labels)} classes")
    unknown = set(outputs[LABEL].numpy().astype(str)) - set(labels)
    if unknown:
        raise ExportError(f"the exported {SERVING_SIGNATURE} returned unknown labels {sorted(unknown)}")


def _export_tflite(model, loaded: tf.Module, transform_dir: str, work_dir: str, stats: TransformStats,
                   config: Config) -> dict[str, dict[str, Any]]:
    """Writes each configured TFLite variant and measures it against the SavedModel on the test split
    (the validation split when there is no test split; only sizes when there is neither)."""
    calibration, _ = tflite.split_pixels(transform_dir, "train", config.export.representative_images)
    held_out = next((s for s in ("test", "valid") if split_files(transform_dir, s)), None)
    if held_out is None:
        logger.warning("%s has no test or valid images: TFLite accuracy is not measured", transform_dir)
    else:
        images, labels = tflite.split_pixels(transform_dir, held_out)
        reference = np.concatenate([
            loaded.signatures[IMAGES_SIGNATURE](**{IMAGES_INPUT: tf.constant(batch)})[PROBABILITIES].numpy()
            for batch in np.array_split(images, max(1, len(images) // 64))])
    tf.io.gfile.makedirs(posixpath.join(work_dir, TFLITE_DIR))
    results = {}
    for variant in config.export.tflite:
        flatbuffer = tflite.convert(model, stats.image_size, stats.channel_mean, stats.channel_std, variant, calibration)
        with tf.io.gfile.GFile(posixpath.join(work_dir, tflite_file(variant)), "wb") as f:
            f.write(flatbuffer)
        results[variant] = {"bytes": len(flatbuffer)} if held_out is None else {
            "split": held_out, **tflite.compare_accuracy(flatbuffer, images, labels, reference)}
        logger.info("TFLite %s: %s", variant, results[variant])
    return results

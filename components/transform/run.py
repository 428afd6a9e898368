"""The transform stage: ingest records -> tf.transform graph + materialised, resized pixels.

The Beam job analyses the **training split only** (per-channel mean and standard deviation,
label vocabulary) and writes `transform_fn/` and `transformed_metadata/`. For every split it runs
the analyzer-free front of the graph (decode, resize, round to uint8) and stores the result as a
lossless PNG in records of the ingest schema (components.records), so training reads small
SxS images and applies the same graph as serving (components.transform.preprocessing).

Output directory:
  transform_fn/, transformed_metadata/         the tf.transform graph (TFTransformOutput)
  train|valid|test-SSSSS-of-NNNNN.tfrecord.gz  records with image/encoded = SxS PNG
  labels.txt, stats.json, manifest.json
"""

from __future__ import annotations

import logging
import math
import posixpath
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import apache_beam as beam
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from apache_beam.io.filesystem import CompressionTypes
from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

from components import records
from components.artifacts import DATASET_FINGERPRINT, LABELS_FILE, IngestStats, TransformStats, fingerprint
from components.beam_runtime import beam_options, beam_pipeline
from components.config import Config, TransformConfig
from components.dataset import read_labels, split_files
from components.files import read_json, write_json
from components.manifest import Manifest, read_manifest, write_manifest
from components.staging import staged_output
from components.transform.preprocessing import IMAGE_KEY, LABEL_TEXT_KEY, make_preprocessing_fn, prepare_batch

logger = logging.getLogger(__name__)

_COUNTS_FILE = "_counts.json"
RAW_METADATA = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec({
    IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
    LABEL_TEXT_KEY: tf.io.FixedLenFeature([], tf.string),
}))


class TransformError(RuntimeError):
    """The ingest output cannot be transformed; the message says why."""


@dataclass(frozen=True)
class TransformResult:
    output: str
    stats: TransformStats
    fingerprint: str


def parse_record(serialized: bytes) -> dict[str, bytes | int]:
    """An ingest record as a dict of Python values (keys of components.records.FEATURE_TYPES)."""
    features = tf.train.Example.FromString(serialized).features.feature
    return {
        key: features[key].int64_list.value[0] if kind == "int64" else features[key].bytes_list.value[0]
        for key, kind in records.FEATURE_TYPES.items()
    }


class MaterializePixels(beam.DoFn):
    """Runs decode+resize of the graph on batches of records; emits records holding SxS PNGs."""

    def __init__(self, config: TransformConfig):
        self._size = config.image_size
        self._method = config.resize_method

    def setup(self) -> None:
        size, method = self._size, self._method

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def to_png(encoded: tf.Tensor) -> tf.Tensor:
            return tf.map_fn(tf.io.encode_png, prepare_batch(encoded, size, method), fn_output_signature=tf.string)

        self._to_png = to_png

    def process(self, batch: list[dict]) -> Iterator[bytes]:
        pngs = self._to_png(tf.constant([r[IMAGE_KEY] for r in batch])).numpy()
        for record, png in zip(batch, pngs):
            yield records.encode_example({
                **record, IMAGE_KEY: png, "image/format": "png", "image/height": self._size, "image/width": self._size,
            })


def run_transform(
    ingest_dir: str,
    output: str,
    config: Config,
    *,
    runner: str | None = None,
    beam_args: Sequence[str] = (),
    overwrite: bool = False,
) -> TransformResult:
    """Analyses the training split with tf.transform and materialises every split."""
    started = time.monotonic()
    ingest = read_manifest(ingest_dir, "ingest")
    labels = read_labels(ingest_dir)
    ingest_counts = IngestStats.read(ingest_dir).split_images()
    if not ingest_counts["train"]:
        raise TransformError(f"{ingest_dir} has no training image to analyse")
    settings = config.transform
    output_fingerprint = fingerprint({"ingest": ingest.fingerprint, "transform": config.to_dict()["transform"]})

    with staged_output(output, overwrite) as work_dir:
        logger.info("Transforming %s into %s: %s, analysing %d training images",
                    ingest_dir, output, settings, ingest_counts["train"])
        with beam_pipeline(beam_options(config, runner, beam_args)) as pipeline, \
                tft_beam.Context(temp_dir=posixpath.join(work_dir, "tmp"), force_tf_compat_v1=False):
            _build_pipeline(pipeline, ingest_dir, ingest_counts, labels, settings, work_dir)
        tf.io.gfile.rmtree(posixpath.join(work_dir, "tmp"))

        counts = read_json(posixpath.join(work_dir, _COUNTS_FILE))
        tf.io.gfile.remove(posixpath.join(work_dir, _COUNTS_FILE))
        if counts != ingest_counts:
            raise TransformError(f"internal error: transformed {counts} images, ingest has {ingest_counts}")
        tf.io.gfile.copy(posixpath.join(ingest_dir, LABELS_FILE), posixpath.join(work_dir, LABELS_FILE))
        mean, std = channel_statistics(work_dir, settings.image_size)
        record_bytes = sum(tf.io.gfile.stat(f).length for s in records.SPLITS for f in split_files(work_dir, s))
        seconds = time.monotonic() - started
        stats = TransformStats(
            images=counts,
            image_size=settings.image_size,
            resize_method=settings.resize_method,
            channel_mean=mean.tolist(),
            channel_std=std.tolist(),
            record_bytes=record_bytes,
            bytes_per_image=round(record_bytes / sum(counts.values())),
            seconds=round(seconds, 2),
            images_per_second=round(sum(counts.values()) / seconds, 1),
        )
        stats.write(work_dir)
        write_manifest(work_dir, Manifest(
            stage="transform",
            fingerprint=output_fingerprint,
            inputs={"ingest": ingest_dir, DATASET_FINGERPRINT: ingest.dataset_fingerprint},
            config={"transform": config.to_dict()["transform"]},
            outputs={"images": counts, "labels": labels},
        ))
    logger.info("Transform done in %.1f s (%.0f images/s): %s images, %d bytes per image, mean %s, std %s",
                seconds, stats.images_per_second, counts, stats.bytes_per_image,
                np.round(mean, 4).tolist(), np.round(std, 4).tolist())
    return TransformResult(output.rstrip("/"), stats, output_fingerprint)


def _build_pipeline(pipeline, ingest_dir: str, counts: dict[str, int], labels: list[str],
                    settings: TransformConfig, work_dir: str) -> None:
    raw = {}
    for split in records.SPLITS:
        if counts[split]:
            raw[split] = (
                pipeline
                | f"Read{split}" >> beam.io.ReadFromTFRecord(
                    posixpath.join(ingest_dir, f"{split}-*-of-*{records.SHARD_SUFFIX}"),
                    compression_type=CompressionTypes.GZIP)
                | f"Parse{split}" >> beam.Map(parse_record)
            )
    transform_fn = (
        (raw["train"] | "AnalysisInputs" >> beam.Map(lambda r: {IMAGE_KEY: r[IMAGE_KEY], LABEL_TEXT_KEY: r[LABEL_TEXT_KEY]}),
         RAW_METADATA)
        | "Analyze" >> tft_beam.AnalyzeDataset(make_preprocessing_fn(settings.image_size, settings.resize_method, labels))
    )
    _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(work_dir)

    # A lossless PNG of SxS pixels is at most ~3 bytes per pixel plus the record's metadata.
    per_image = 3 * settings.image_size ** 2 + 500
    materialized_counts = []
    for split, rows in raw.items():
        materialized = (
            rows
            | f"Batch{split}" >> beam.BatchElements(min_batch_size=min(8, settings.batch_size), max_batch_size=settings.batch_size)
            | f"Materialize{split}" >> beam.ParDo(MaterializePixels(settings))
        )
        _ = materialized | f"Write{split}" >> beam.io.WriteToTFRecord(
            posixpath.join(work_dir, split),
            file_name_suffix=records.SHARD_SUFFIX,
            num_shards=max(1, math.ceil(counts[split] * per_image / settings.target_shard_bytes)),
            shard_name_template="-SSSSS-of-NNNNN",
            compression_type=CompressionTypes.GZIP,
        )
        materialized_counts.append(
            materialized | f"Count{split}" >> beam.combiners.Count.Globally()
            | f"Key{split}" >> beam.Map(lambda n, s=split: (s, n)))
    _ = (
        materialized_counts
        | "AllCounts" >> beam.Flatten()
        | "CollectCounts" >> beam.combiners.ToDict()
        | "WriteCounts" >> beam.Map(
            lambda found, path: write_json(path, {s: found.get(s, 0) for s in records.SPLITS}),
            posixpath.join(work_dir, _COUNTS_FILE))
    )


def channel_statistics(transform_dir: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel mean and std (of pixels scaled to [0, 1]) that the graph applies.

    tf.transform bakes them into the graph as constants; they are read back by transforming a
    black and a white SxS image: the graph maps v to (v - mean) / std.
    """
    layer = tft.TFTransformOutput(transform_dir).transform_features_layer()
    images = [tf.io.encode_png(tf.fill([image_size, image_size, 3], tf.constant(v, tf.uint8))) for v in (0, 255)]
    out = layer({IMAGE_KEY: tf.stack(images)})["image"].numpy()[:, 0, 0, :].astype(np.float64)
    std = 1.0 / (out[1] - out[0])
    return -out[0] * std, std

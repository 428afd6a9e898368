"""The ingest stage: images (class folders or CSV) -> validated, split, sharded TFRecords.

Output directory:
  train|valid|test-SSSSS-of-NNNNN.tfrecord.gz   records (components.records)
  labels.txt                                    class names in id order
  rejects.jsonl                                 one line per rejected input: uri, reason, detail
  stats.json                                    counts that reconcile: inputs == accepted + rejected
  manifest.json                                 written last: the output is complete

Everything is written to `<output>.tmp-<id>` and renamed into place at the end
(components.staging), so a failed run never leaves an output that looks complete; what a killed
run leaves behind is removed by the next one.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import hashlib
import json
import logging
import posixpath
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import tensorflow as tf

from components import records
from components.artifacts import LABELS_FILE, REJECTS_FILE, STATS_FILE, IngestStats, SplitCounts
from components.beam_runtime import beam_options, beam_pipeline, runs_on_one_worker
from components.config import Config, IngestConfig
from components.files import read_json
from components.ingest.pipeline import INPUTS_FILE, SHARDS_SUMMARY_FILE, build_pipeline
from components.ingest.layout import EXPECTED_LAYOUT
from components.ingest.sources import list_inputs
from components.manifest import Manifest, Origin, write_manifest
from components.rejections import Reason, Rejection
from components.staging import staged_output

logger = logging.getLogger(__name__)


class IngestError(RuntimeError):
    """The run cannot produce a usable dataset; the message says why and what to do."""


@dataclass(frozen=True)
class IngestResult:
    output: str
    stats: IngestStats
    fingerprint: str


def run_ingest(
    input_path: str,
    output: str,
    config: Config,
    *,
    runner: str | None = None,
    beam_args: Sequence[str] = (),
    overwrite: bool = False,
) -> IngestResult:
    """Runs the ingest Beam pipeline and moves its complete output to `output`."""
    started = time.monotonic()
    inputs = list_inputs(input_path)
    vocabulary = config.ingest.labels or inputs.labels
    if not vocabulary:
        raise IngestError(f"no labelled image found in {input_path}: expected {EXPECTED_LAYOUT}")
    images, rejections = [], list(inputs.rejections)
    for image in inputs.images:
        if image.label in vocabulary:
            images.append(image)
        else:
            rejections.append(Rejection(image.uri, Reason.UNKNOWN_LABEL, f"label {image.label!r} is not in ingest.labels"))

    origin = Origin(inputs={"images": input_path}, config={"ingest": config.to_dict()["ingest"]})
    with staged_output(output, overwrite, keep_on=(IngestError,), origin=origin) as work_dir:
        logger.info("Ingesting %d images into %s (working in %s)", len(images), output, work_dir)
        options = beam_options(config, runner, beam_args, direct_running_mode="in_memory")
        with _untracked_by_gc(), beam_pipeline(options) as pipeline:
            build_pipeline(pipeline, images, rejections, {label: i for i, label in enumerate(vocabulary)},
                           config.ingest, work_dir, spread_checks=not runs_on_one_worker(options))
        counts, fingerprint = _reconcile(work_dir, inputs.count, vocabulary)
        seconds = round(time.monotonic() - started, 2)
        warnings = data_warnings(counts["classes"], config.ingest)
        for warning in warnings:
            logger.warning("Suspicious data: %s", warning)
        stats = IngestStats(**counts, seconds=seconds, images_per_second=round(inputs.count / seconds, 1),
                            warnings=warnings)
        with tf.io.gfile.GFile(posixpath.join(work_dir, LABELS_FILE), "w") as f:
            f.write("".join(f"{label}\n" for label in vocabulary))
        stats.write(work_dir)
        _check_usable(stats)
        shards = read_json(posixpath.join(work_dir, SHARDS_SUMMARY_FILE))
        for internal in (SHARDS_SUMMARY_FILE, INPUTS_FILE):
            tf.io.gfile.remove(posixpath.join(work_dir, internal))
        write_manifest(work_dir, Manifest(
            stage="ingest",
            fingerprint=fingerprint,
            inputs=origin.inputs,
            config=origin.config,
            outputs={"shards": shards, "labels": vocabulary},
        ))
    logger.info(
        "Ingest done in %.1f s: %d inputs -> %d accepted (%s), %d rejected (%s); records are %.3fx the source bytes",
        stats.seconds, stats.inputs, stats.accepted,
        ", ".join(f"{s} {n}" for s, n in stats.split_images().items()),
        stats.rejected, ", ".join(f"{r} {n}" for r, n in stats.rejects.items()) or "none",
        stats.bytes_ratio,
    )
    return IngestResult(output.rstrip("/"), stats, fingerprint)


@contextlib.contextmanager
def _untracked_by_gc() -> Iterator[None]:
    """Hides the objects alive now from Python's cyclic garbage collector until the block ends.

    With TensorFlow and Beam imported, about 500,000 objects are tracked: a full collection takes
    0.27 s here, and the job's allocations can trigger one mid-run (one 3,000-image ingest in
    three, here). Frozen, they are not scanned; cycles among them are collected by the first full collection after the job.
    A process that froze objects itself (before forking, say) keeps them as they are.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _reconcile(work_dir: str, inputs: int, vocabulary: list[str]) -> tuple[dict[str, Any], str]:
    """The counts of stats.json (IngestStats but the timings) from the pipeline's reports, and the
    output's fingerprint; checks that every input is accounted for."""
    shards = read_json(posixpath.join(work_dir, SHARDS_SUMMARY_FILE))
    with tf.io.gfile.GFile(posixpath.join(work_dir, REJECTS_FILE)) as f:
        reasons = collections.Counter(json.loads(line)["reason"] for line in f)
    splits = {s: {"images": 0, "shards": 0, "record_bytes": 0} for s in records.SPLITS}
    classes = {label: {s: 0 for s in records.SPLITS} for label in vocabulary}
    fingerprint = hashlib.sha256("\n".join(vocabulary).encode())
    for shard in shards:
        split = splits[shard["split"]]
        split["images"] += shard["records"]
        split["shards"] += 1
        split["record_bytes"] += shard["bytes"]
        for label, count in shard["classes"].items():
            classes[label][shard["split"]] += count
        fingerprint.update(f"{shard['file']}:{shard['digest']}\n".encode())
    accepted = sum(s["images"] for s in splits.values())
    rejected = sum(reasons.values())
    if accepted + rejected != inputs:
        raise IngestError(
            f"internal error: {inputs} inputs but {accepted} accepted + {rejected} rejected"
        )
    source_bytes = sum(s["source_bytes"] for s in shards)
    record_bytes = sum(s["record_bytes"] for s in splits.values())
    counts = {
        "inputs": inputs,
        "accepted": accepted,
        "rejected": rejected,
        "splits": {split: SplitCounts(**values) for split, values in splits.items()},
        "classes": {label: {**counts, "total": sum(counts.values())} for label, counts in classes.items()},
        "rejects": {reason.value: reasons[reason.value] for reason in Reason if reasons[reason.value]},
        "source_bytes": source_bytes,
        "record_bytes": record_bytes,
        "bytes_ratio": round(record_bytes / source_bytes, 4) if source_bytes else None,
    }
    return counts, fingerprint.hexdigest()


def data_warnings(classes: dict[str, dict[str, int]], config: IngestConfig) -> list[str]:
    """What looks wrong with the accepted images' classes (label -> split -> images) without stopping the run:
    a single class, classes with fewer than `min_class_train_images` training images, a largest/smallest
    training class ratio above `max_class_imbalance`."""
    train = {label: counts["train"] for label, counts in classes.items()}
    warnings = []
    if len(train) == 1:
        warnings.append(f"one class only ({next(iter(train))}): a classifier trained on it can only predict it")
    few = {label: n for label, n in train.items() if 0 < n < config.min_class_train_images}
    if few:
        warnings.append(f"class(es) with fewer than {config.min_class_train_images} training images "
                        f"(ingest.min_class_train_images): {_counts(few)}")
    present = {label: n for label, n in train.items() if n > 0}
    if len(present) > 1:
        largest, smallest = max(present, key=present.get), min(present, key=present.get)
        ratio = present[largest] / present[smallest]
        if ratio > config.max_class_imbalance:
            warnings.append(f"class imbalance {ratio:.1f}:1 above {config.max_class_imbalance:g} "
                            f"(ingest.max_class_imbalance): largest {_counts({largest: present[largest]})}, "
                            f"smallest {_counts({smallest: present[smallest]})} training images")
    return warnings


def _counts(per_label: dict[str, int]) -> str:
    return ", ".join(f"{label} {n}" for label, n in per_label.items())


def _check_usable(stats: IngestStats) -> None:
    kept = f"{STATS_FILE} and {REJECTS_FILE} are kept in the work directory named below"
    if stats.accepted == 0:
        raise IngestError(
            f"no image was accepted out of {stats.inputs} inputs (rejects: {stats.rejects}); {kept}"
        )
    untrained = [label for label, counts in stats.classes.items() if counts["train"] == 0]
    if untrained:
        raise IngestError(
            f"class(es) {untrained} have no training image: add images, fix their rejects or "
            f"drop the class (ingest.labels); {kept}"
        )

"""What was served, one row per image: read from prediction logs (TF Serving's PredictionLog records).

A Predict of N images is N observations: the time, model and version from `log_metadata`, the image's
sha256 and cheap statistics (components.monitor.images), the request key when the request has one
(`predict_with_key`), and the model's answer (`label`, `score`, `probabilities`). Every record is
accounted: a record that does not parse, a Predict of a signature without image bytes or without the
model's outputs, and torn file ends are counted with the file they were in, never dropped silently.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow_serving.apis import prediction_log_pb2

from components import prediction_logs
from components.artifacts import IMAGE_INPUT, KEY_INPUT, LABEL, PROBABILITIES, SCORE
from components.monitor.images import ImageFacts, image_facts

logger = logging.getLogger(__name__)

PROGRESS_EVERY = 10_000  # records between progress lines


@dataclass(frozen=True)
class Observation:
    """One served image and the model's answer to it."""

    time: int  # seconds since the epoch (log_metadata.timestamp_secs)
    model: str
    version: int
    sha256: str
    key: str
    facts: ImageFacts
    label: str
    score: float
    probabilities: np.ndarray
    image: bytes | None = None  # the file bytes, when kept (to export labelled images)


@dataclass
class LogReading:
    """What reading the logs found, beyond the observations: files, records and what could not be used."""

    files: int = 0
    records: int = 0
    observations: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> records
    torn_files: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"files": self.files, "records": self.records, "observations": self.observations,
                "skipped": dict(self.skipped), "torn_files": self.torn_files}


def read_observations(patterns: Iterable[str], model: str = "",
                      keep_images: bool = False) -> tuple[list[Observation], LogReading]:
    """The observations in the prediction log files `patterns` name (globs, files or directories), oldest
    first; only `model`'s when given; with their image bytes when `keep_images`."""
    reading = LogReading()
    observations: list[Observation] = []
    for path in prediction_logs.log_files(patterns):
        reading.files += 1
        file_reading = prediction_logs.FileReading(path)
        for record in prediction_logs.read_records(path, file_reading):
            reading.records += 1
            if reading.records % PROGRESS_EVERY == 0:
                logger.info("Read %d prediction log records (%d files)", reading.records, reading.files)
            try:
                log = prediction_log_pb2.PredictionLog.FromString(record)
            except DecodeError:
                reading.skipped["not a PredictionLog"] += 1
                continue
            if model and log.log_metadata.model_spec.name != model:
                reading.skipped[f"another model ({log.log_metadata.model_spec.name[:60]})"] += 1
                continue
            rows, reason = _observations(log, keep_images)
            if reason:
                reading.skipped[reason] += 1
            observations += rows
        if file_reading.torn:
            reading.torn_files.append(path)
    observations.sort(key=lambda o: o.time)
    reading.observations = len(observations)
    logger.info("Read %d observations from %d records in %d prediction log files", len(observations),
                reading.records, reading.files)
    return observations, reading


def _observations(log: prediction_log_pb2.PredictionLog, keep_images: bool) -> tuple[list[Observation], str]:
    """The observations of one record, or none and why."""
    if log.WhichOneof("log_type") != "predict_log":
        return [], f"not a Predict ({log.WhichOneof('log_type')})"
    request, response = log.predict_log.request, log.predict_log.response
    if IMAGE_INPUT not in request.inputs:
        return [], f"no {IMAGE_INPUT} input (signature {log.log_metadata.model_spec.signature_name})"
    if PROBABILITIES not in response.outputs:
        return [], f"no {PROBABILITIES} output"
    images = tf.make_ndarray(request.inputs[IMAGE_INPUT]).ravel()
    keys = tf.make_ndarray(request.inputs[KEY_INPUT]).ravel() if KEY_INPUT in request.inputs else None
    probabilities = tf.make_ndarray(response.outputs[PROBABILITIES]).astype(np.float64)
    labels = tf.make_ndarray(response.outputs[LABEL]).ravel() if LABEL in response.outputs else None
    scores = tf.make_ndarray(response.outputs[SCORE]).ravel() if SCORE in response.outputs else None
    if probabilities.ndim != 2 or len(probabilities) != len(images):
        return [], "outputs do not match the request's images"
    meta = log.log_metadata
    rows = []
    for i, image in enumerate(images):
        rows.append(Observation(
            time=meta.timestamp_secs, model=meta.model_spec.name, version=meta.model_spec.version.value,
            sha256=hashlib.sha256(image).hexdigest(), key=keys[i].decode(errors="replace") if keys is not None else "",
            facts=image_facts(image), label=labels[i].decode(errors="replace") if labels is not None else "",
            score=float(scores[i]) if scores is not None else float(probabilities[i].max()),
            probabilities=probabilities[i], image=bytes(image) if keep_images else None))
    return rows, ""

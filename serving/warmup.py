"""Model warm-up: replay a version's `assets.extra/tf_serving_warmup_requests` before it becomes AVAILABLE.

The file holds PredictionLog records (TFRecord format), as TF Serving reads it: predict, classify,
regress and multi-inference requests, each replayed `iterations` times. A failing warm-up request
fails the load, so a version that cannot answer its own requests is never served.
"""

from __future__ import annotations

import logging
import posixpath
import time

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from components.artifacts import WARMUP_FILE
from serving import inference
from serving.errors import invalid_argument, unimplemented
from serving.servable import Servable

logger = logging.getLogger(__name__)

MAX_RECORDS = 1000  # TF Serving's limit


def _replay(servable: Servable, log: prediction_log_pb2.PredictionLog) -> None:
    kind = log.WhichOneof("log_type")
    if kind == "predict_log":
        inference.run_predict(inference.prepare_predict_request(servable, log.predict_log.request))
    elif kind == "classify_log":
        request = log.classify_log.request
        inference.classify(servable, request.model_spec.signature_name, request.input)
    elif kind == "regress_log":
        request = log.regress_log.request
        inference.regress(servable, request.model_spec.signature_name, request.input)
    elif kind == "multi_inference_log":
        inference.multi_inference(servable, log.multi_inference_log.request)
    else:
        raise unimplemented(f"Unsupported log_type for warmup: {kind}")


def warm_up(servable: Servable, iterations: int = 1) -> int:
    """Replays the servable's warm-up requests; returns how many records there were."""
    path = posixpath.join(servable.path, WARMUP_FILE)
    if not tf.io.gfile.exists(path):
        return 0
    started, count = time.monotonic(), 0
    for record in tf.data.TFRecordDataset(path):
        count += 1
        if count > MAX_RECORDS:
            raise invalid_argument(f"Number of warmup records exceeds the maximum ({MAX_RECORDS}) at {path}")
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        for _ in range(iterations):
            _replay(servable, log)
    logger.info("Finished reading warmup data for model at %s. Number of warmup records read: %d. Elapsed time "
                "(microseconds): %d.", servable.path, count, int((time.monotonic() - started) * 1e6))
    return count

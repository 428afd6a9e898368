"""TF Serving warm-up requests: `assets.extra/tf_serving_warmup_requests` in PredictionLog format.

TF Serving replays these records when it loads a version, so the first real request does not pay
for graph initialisation. The deploy stage's servability check sends the same requests.
"""

from __future__ import annotations

import posixpath
from typing import Sequence

import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from components.artifacts import IMAGE_INPUT, SERVING_SIGNATURE, WARMUP_FILE


def warmup_request(model_name: str, image_bytes: Sequence[bytes]) -> predict_pb2.PredictRequest:
    """A `serving_default` PredictRequest for a batch of encoded images."""
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name=SERVING_SIGNATURE))
    request.inputs[IMAGE_INPUT].CopyFrom(tf.make_tensor_proto(list(image_bytes), dtype=tf.string))
    return request


def write_warmup_requests(saved_model_dir: str, model_name: str, images: Sequence[bytes]) -> str:
    """Writes one single-image request per image and one batch of all; returns the file's path."""
    path = posixpath.join(saved_model_dir, WARMUP_FILE)
    tf.io.gfile.makedirs(posixpath.dirname(path))
    requests = [warmup_request(model_name, [image]) for image in images]
    if len(images) > 1:
        requests.append(warmup_request(model_name, images))
    with tf.io.TFRecordWriter(path) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(saved_model_dir: str) -> list[predict_pb2.PredictRequest]:
    """The PredictRequests of a SavedModel's warm-up file (empty when it has none)."""
    path = posixpath.join(saved_model_dir, WARMUP_FILE)
    if not tf.io.gfile.exists(path):
        return []
    return [prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
            for record in tf.data.TFRecordDataset(path)]

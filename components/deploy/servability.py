"""The servability check before a push (TFX's InfraValidator idea).

The version is loaded by the project's TF Serving-compatible server, in this process, on free
loopback ports, and each of its own warm-up requests is sent over gRPC with the
tensorflow-serving-api stub: loading, the signature and the network path are all exercised
before TF Serving ever sees the version.
"""

from __future__ import annotations

import logging
import os
import posixpath
import tempfile

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_service_pb2_grpc

from components.artifacts import IMAGE_INPUT, PROBABILITIES, WARMUP_FILE
from components.export.warmup import read_warmup_requests
from components.staging import copy_tree

logger = logging.getLogger(__name__)

TIMEOUT_SECONDS = 60.0


class NotServableError(ValueError):
    """The version does not load or does not answer its warm-up requests."""


def check_servable(saved_model: str, name: str) -> None:
    """Serves `saved_model` as model `name` and replays its warm-up requests; raises NotServableError."""
    from serving.errors import ServingError
    from serving.options import ServerOptions
    from serving.model_server import ModelServer

    requests = read_warmup_requests(saved_model)
    if not requests:
        raise NotServableError(f"{saved_model} has no warm-up requests ({WARMUP_FILE}) "
                               f"to check it with; export it with export.warmup_requests > 0")
    with tempfile.TemporaryDirectory(prefix="cvpipe-servability-") as base:
        version_dir = posixpath.join(base, name, "1")
        tf.io.gfile.makedirs(posixpath.dirname(version_dir))
        if "://" in saved_model:  # a remote path: the server loads a local copy
            copy_tree(saved_model, version_dir)
        else:
            os.symlink(os.path.abspath(saved_model), version_dir)
        options = ServerOptions(port=0, rest_api_port=None, model_name=name, model_base_path=posixpath.dirname(version_dir),
                                file_system_poll_wait_seconds=0)
        try:
            with ModelServer(options) as server, grpc.insecure_channel(f"127.0.0.1:{server.ports.grpc}") as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                for request in requests:
                    request.model_spec.name = name
                    response = stub.Predict(request, timeout=TIMEOUT_SECONDS)
                    _check_response(saved_model, request, response)
        except (ServingError, grpc.RpcError) as e:
            raise NotServableError(f"{saved_model} is not servable: {e}") from e
    logger.info("Servability check of %s passed: %d warm-up requests answered over gRPC", saved_model, len(requests))


def _check_response(saved_model: str, request, response) -> None:
    images = len(request.inputs[IMAGE_INPUT].string_val)
    probabilities = tf.make_ndarray(response.outputs[PROBABILITIES])
    if probabilities.shape[0] != images or not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4):
        raise NotServableError(f"{saved_model} answered {images} warm-up images with probabilities of shape "
                               f"{probabilities.shape}")

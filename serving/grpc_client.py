"""A small client of TF Serving's gRPC API (this server's or tensorflow_model_server's): tensors in and out as
numpy arrays.

    grpc_client = GrpcClient("127.0.0.1:8500")
    grpc_client.predict("flowers", {"image_bytes": np.array([jpeg], dtype=object)})
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

MAX_MESSAGE_BYTES = 2**31 - 1


class GrpcClient:
    """TF Serving's gRPC API; tensors in and out as numpy arrays."""

    def __init__(self, target: str, timeout: float = 60.0):
        self.channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                                              ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.timeout = timeout

    def predict_request(self, model: str, inputs: Mapping[str, Any], signature_name: str = "",
                        version: int | None = None, label: str | None = None,
                        output_filter: Sequence[str] = ()) -> predict_pb2.PredictRequest:
        request = predict_pb2.PredictRequest(model_spec=model_spec(model, version, label, signature_name),
                                             output_filter=list(output_filter))
        for alias, value in inputs.items():
            request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
        return request

    def predict(self, model: str, inputs: Mapping[str, Any], **kwargs: Any) -> dict[str, np.ndarray]:
        """Predict; returns the outputs as numpy arrays."""
        response = self.prediction.Predict(self.predict_request(model, inputs, **kwargs), self.timeout)
        return {alias: tf.make_ndarray(proto) for alias, proto in response.outputs.items()}

    def status(self, model: str, version: int | None = None) -> get_model_status_pb2.GetModelStatusResponse:
        return self.models.GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec=model_spec(model, version)), self.timeout)

    def metadata(self, model: str, version: int | None = None) -> get_model_metadata_pb2.SignatureDefMap:
        response = self.prediction.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=model_spec(model, version), metadata_field=["signature_def"]), self.timeout)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return signature_map

    def close(self) -> None:
        self.channel.close()


def model_spec(model: str, version: int | None = None, label: str | None = None,
               signature_name: str = "") -> model_pb2.ModelSpec:
    """A ModelSpec naming a version, a label or (neither) the latest version."""
    spec = model_pb2.ModelSpec(name=model, signature_name=signature_name)
    if version is not None:
        spec.version.value = version
    if label is not None:
        spec.version_label = label
    return spec

"""The project's exported vision model (tiny_export) served over REST and gRPC: same answers as in-process."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from components.artifacts import WARMUP_FILE
from serving.client import RestClient
from serving.errors import ServingError
from serving.grpc_client import GrpcClient
from serving.model_server import ModelServer
from serving.options import ServerOptions
from serving.servable import load_servable, read_meta_graph
from serving.warmup import warm_up

MODEL = "tiny"


@pytest.fixture(scope="module")
def server(tiny_export):
    options = ServerOptions(model_name=MODEL, model_base_path=str(Path(tiny_export).parent), port=0, rest_api_port=0)
    with ModelServer(options) as running:
        yield running


@pytest.fixture(scope="module")
def in_process(tiny_export):
    return tf.saved_model.load(tiny_export)


@pytest.fixture(scope="module")
def jpegs(tiny_run) -> list[bytes]:
    return [path.read_bytes() for path in sorted(tiny_run.images.rglob("*.jpg"))[:4]]


def _b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def test_rest_b64_jpeg_gives_the_in_process_label_and_probabilities(server, in_process, jpegs):
    rest = RestClient(f"http://127.0.0.1:{server.ports.rest}")
    expected = in_process.signatures["serving_default"](image_bytes=tf.constant(jpegs))
    predictions = rest.predict(MODEL, instances=[_b64(jpeg) for jpeg in jpegs])
    assert [p["label"] for p in predictions] == [s.decode() for s in expected["label"].numpy()]
    assert [p["class_id"] for p in predictions] == expected["class_id"].numpy().tolist()
    np.testing.assert_allclose([p["probabilities"] for p in predictions], expected["probabilities"].numpy(),
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose([p["score"] for p in predictions], expected["score"].numpy(), rtol=0, atol=1e-6)

    columnar = rest.predict(MODEL, inputs=[_b64(jpegs[0])])
    assert columnar["label"] == [predictions[0]["label"]]
    np.testing.assert_allclose(columnar["probabilities"], expected["probabilities"].numpy()[:1], atol=1e-6)

    keyed = rest.predict(MODEL, signature_name="predict_with_key",
                         instances=[{"image_bytes": _b64(jpeg), "key": f"k{i}"} for i, jpeg in enumerate(jpegs[:2])])
    assert [p["key"] for p in keyed] == ["k0", "k1"]
    assert [p["label"] for p in keyed] == [p["label"] for p in predictions[:2]]

    pixels = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    outputs = rest.predict(MODEL, signature_name="predict_images", inputs={"images": pixels.tolist()})
    np.testing.assert_allclose(outputs["probabilities"],
                               in_process.signatures["predict_images"](images=tf.constant(pixels))["probabilities"],
                               atol=1e-6)
    rest.close()


def test_grpc_predict_metadata_and_status(server, tiny_export, in_process, jpegs):
    client = GrpcClient(f"127.0.0.1:{server.ports.grpc}")
    outputs = client.predict(MODEL, {"image_bytes": np.array(jpegs, dtype=object)})
    expected = in_process.signatures["serving_default"](image_bytes=tf.constant(jpegs))
    assert set(outputs) == {"probabilities", "class_id", "label", "score"}
    np.testing.assert_allclose(outputs["probabilities"], expected["probabilities"].numpy(), atol=1e-6)
    np.testing.assert_array_equal(outputs["label"], expected["label"].numpy())
    np.testing.assert_array_equal(outputs["class_id"], expected["class_id"].numpy())

    signature_map = client.metadata(MODEL)
    assert dict(signature_map.signature_def) == dict(read_meta_graph(tiny_export, ["serve"]).signature_def)
    assert {"serving_default", "predict_with_key", "predict_images", "predict_images_float"} <= set(
        signature_map.signature_def)
    inputs = signature_map.signature_def["serving_default"].inputs["image_bytes"]
    assert inputs.dtype == tf.string.as_datatype_enum and [d.size for d in inputs.tensor_shape.dim] == [-1]

    status = client.status(MODEL).model_version_status
    assert [(s.version, s.state, s.status.error_code) for s in status] == [(1, 30, 0)]  # AVAILABLE, OK
    client.close()


def test_warmup_replays_the_exported_requests_and_a_failing_one_fails_the_load(tiny_export, tmp_path):
    servable = load_servable(MODEL, 1, tiny_export)
    assert warm_up(servable) == 4  # three single images and one batch of them (export.warmup_requests=3)

    broken = tmp_path / MODEL / "2"
    shutil.copytree(tiny_export, broken)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["pixels"].CopyFrom(tf.make_tensor_proto([1.0]))
    with tf.io.TFRecordWriter(str(broken / WARMUP_FILE)) as writer:
        writer.write(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString())
    options = ServerOptions(model_name=MODEL, model_base_path=str(tmp_path / MODEL), port=0, rest_api_port=None)
    server = ModelServer(options)
    with pytest.raises(ServingError, match="1 servable\\(s\\) did not become available.*input tensor alias not found"):
        server.start()

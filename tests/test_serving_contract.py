"""TF Serving's REST and gRPC contract on its own test model, half_plus_two, over real sockets.

Version 123 is half_plus_two (the latest), version 1 "half plus three"; labels stable -> 123 and
canary -> 1 (given at start-up, which needs --allow_version_labels_for_unavailable_models).
"""

from __future__ import annotations

import base64
import json
import re

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, inference_pb2, input_pb2,
                                     regression_pb2)

from half_plus_two import build_half_plus_two
from serving.client import RestClient
from serving.grpc_client import GrpcClient, model_spec
from serving.options import ServerOptions
from serving.model_server import ModelServer

MODEL = "half_plus_two"
MAX_BODY = 2**20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    build_half_plus_two(str(root / MODEL / "123"))
    build_half_plus_two(str(root / MODEL / "00000001"), b=3.0)
    (root / MODEL / "3.tmp-abc").mkdir()  # not a version
    (root / "models.config").write_text(f"""
model_config_list {{
  config {{
    name: "{MODEL}"  base_path: "{root / MODEL}"  model_platform: "tensorflow"
    model_version_policy {{ all {{}} }}
    version_labels {{ key: "stable" value: 123 }}  version_labels {{ key: "canary" value: 1 }}
  }}
}}""")
    (root / "monitoring.config").write_text('prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }')
    options = ServerOptions(model_config_file=str(root / "models.config"), port=0, rest_api_port=0,
                            monitoring_config_file=str(root / "monitoring.config"),
                            allow_version_labels_for_unavailable_models=True, rest_api_max_body_bytes=MAX_BODY,
                            file_system_poll_wait_seconds=0)
    with ModelServer(options) as running:
        yield running


@pytest.fixture()
def rest(server):
    client = RestClient(f"http://127.0.0.1:{server.ports.rest}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def stub(server):
    client = GrpcClient(f"127.0.0.1:{server.ports.grpc}")
    yield client
    client.close()


def _example(x: float) -> bytes:
    return tf.train.Example(features=tf.train.Features(feature={
        "x": tf.train.Feature(float_list=tf.train.FloatList(value=[x]))})).SerializeToString()


def test_the_reference_exchanges_over_rest(rest):
    assert rest.json("POST", f"/v1/models/{MODEL}:predict", '{"instances": [1.0, 2.0, 5.0]}') == {
        "predictions": [2.5, 3.0, 4.5]}
    assert rest.json("POST", f"/v1/models/{MODEL}:predict", '{"inputs": [2.0, 3.0, 4.0]}') == {
        "outputs": [3.0, 3.5, 4.0]}
    # The raw bytes too: whole numbers as 3.0, the row format of TF Serving's own tests.
    status, body = rest.call("POST", f"/v1/models/{MODEL}:predict", '{"instances": [[1.0, 2.0], [3.0, 4.0]]}')
    assert status == 200 and json.loads(body) == {"predictions": [[2.5, 3.0], [3.5, 4.0]]}
    assert re.fullmatch(rb'\{"predictions": \[\[2\.5,\s*3\.0\],\s*\[3\.5,\s*4\.0\]\]\}', body)
    assert rest.predict(MODEL, instances=[1, 2]) == [2.5, 3.0]  # JSON integers are exact floats


def test_the_reference_exchange_over_grpc(stub):
    request = stub.predict_request(MODEL, {"x": np.array([2.0], np.float32)})
    response = stub.prediction.Predict(request, 10)
    assert list(response.outputs["y"].float_val) == [3.0]
    assert response.outputs["y"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in response.outputs["y"].tensor_shape.dim] == [1]
    assert response.model_spec.name == MODEL
    assert response.model_spec.version.value == 123
    assert response.model_spec.signature_name == "serving_default"


def test_versions_and_labels_address_the_versions(rest, stub):
    assert rest.predict(MODEL, instances=[1.0], version=1) == [3.5]
    assert rest.predict(MODEL, instances=[1.0], version=123) == [2.5]
    assert rest.predict(MODEL, instances=[1.0], label="canary") == [3.5]
    assert rest.predict(MODEL, instances=[1.0], label="stable") == [2.5]
    np.testing.assert_allclose(stub.predict(MODEL, {"x": np.array([[1.0]], np.float32)}, label="canary")["y"], [[3.5]])
    np.testing.assert_allclose(stub.predict(MODEL, {"x": np.array([[1.0]], np.float32)}, version=1)["y"], [[3.5]])


def test_classify_and_regress_over_rest_and_grpc(rest, stub):
    assert rest.json("POST", f"/v1/models/{MODEL}:regress",
                     {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}) == {"results": [42.0]}
    assert rest.json("POST", f"/v1/models/{MODEL}/labels/stable:classify",
                     {"signature_name": "classify_x_to_y", "examples": [{"x": 20.0}, {"x": 10.0}]}) == {
        "results": [[["", 12.0]], [["", 7.0]]]}
    assert rest.json("POST", f"/v1/models/{MODEL}:regress", {"signature_name": "regress_x_to_y2", "context": {"x": 1.0},
                                                             "examples": [{}, {"x": 4.0}]}) == {"results": [3.5, 5.0]}

    examples = input_pb2.Input()
    examples.example_list.examples.add().ParseFromString(_example(80.0))
    regression = stub.prediction.Regress(regression_pb2.RegressionRequest(
        model_spec=model_spec(MODEL, signature_name="regress_x_to_y"), input=examples), 10)
    assert [r.value for r in regression.result.regressions] == [42.0]
    assert regression.model_spec.version.value == 123
    classification = stub.prediction.Classify(classification_pb2.ClassificationRequest(
        model_spec=model_spec(MODEL, version=1, signature_name="classify_x_to_y"), input=examples), 10)
    assert classification.result.classifications[0].classes[0].score == 43.0

    multi = inference_pb2.MultiInferenceRequest(input=examples)
    for signature, method in (("classify_x_to_y", "classify"), ("regress_x_to_y2", "regress")):
        multi.tasks.add(model_spec=model_spec(MODEL, signature_name=signature), method_name=f"tensorflow/serving/{method}")
    results = stub.prediction.MultiInference(multi, 10).results
    assert results[0].classification_result.classifications[0].classes[0].score == 42.0
    assert results[1].regression_result.regressions[0].value == 43.0


def test_b64_feeds_any_string_input(rest):
    """{"b64": ...} is accepted for a DT_STRING input whatever its name (here `inputs`)."""
    body = {"signature_name": "classify_x_to_y", "instances": [{"b64": base64.b64encode(_example(6.0)).decode()}]}
    assert rest.json("POST", f"/v1/models/{MODEL}:predict", body) == {"predictions": [[5.0]]}


def test_status_and_metadata_as_tf_serving_prints_them(rest, stub):
    assert rest.json("GET", f"/v1/models/{MODEL}") == {"model_version_status": [
        {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert rest.json("GET", f"/v1/models/{MODEL}/versions/1")["model_version_status"][0]["version"] == "1"

    metadata = rest.metadata(MODEL)
    assert metadata["model_spec"] == {"name": MODEL, "signature_name": "", "version": "123"}
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    assert sorted(signatures) == ["classify_x_to_y", "regress_x_to_y", "regress_x_to_y2", "serving_default"]
    assert signatures["serving_default"] == {
        "inputs": {"x": {"dtype": "DT_FLOAT", "name": "x:0", "tensor_shape": {
            "dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}], "unknown_rank": False}}},
        "outputs": {"y": {"dtype": "DT_FLOAT", "name": "y:0", "tensor_shape": {
            "dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}], "unknown_rank": False}}},
        "method_name": "tensorflow/serving/predict", "defaults": {}}
    assert signatures["classify_x_to_y"]["inputs"]["inputs"]["tensor_shape"] == {"dim": [], "unknown_rank": True}
    assert rest.metadata(MODEL, label="canary")["model_spec"]["version"] == "1"

    signature_map = stub.metadata(MODEL, version=1)
    assert signature_map.signature_def["regress_x_to_y2"].method_name == "tensorflow/serving/regress"
    assert [s.version for s in stub.status(MODEL).model_version_status] == [123, 1]


# (method, path, body, HTTP status, message fragment): client mistakes are never 500.
REST_ERRORS = [
    ("POST", "/v1/models/foo:predict", '{"instances": [1]}', 404, "Servable not found for request: Latest(foo)"),
    ("POST", f"/v1/models/{MODEL}/versions/50:predict", '{"instances": [1]}', 404,
     f"Servable not found for request: Specific({MODEL}, 50)"),
    ("POST", f"/v1/models/{MODEL}/labels/nope:predict", '{"instances": [1]}', 400,
     "Unrecognized servable version label: nope"),
    ("POST", f"/v1/models/{MODEL}:predict", '{"signature_name": "foo", "instances": [1]}', 400,
     'Serving signature name: "foo" not found in signature def'),
    ("POST", f"/v1/models/{MODEL}:predict", "instances = [1, 2]", 400, "JSON Parse error: Invalid value"),
    ("POST", "/v1/models/foo:predict", "{oops", 400, "JSON Parse error"),  # parsed before the model lookup
    ("POST", f"/v1/models/{MODEL}:predict", "", 400, "JSON Parse error: The document is empty"),
    ("POST", f"/v1/models/{MODEL}:predict", "[1, 2]", 400, "Is not object"),
    ("POST", f"/v1/models/{MODEL}:predict", '{"instances": ["x", "y"]}', 400, "is not of expected type: float"),
    ("POST", f"/v1/models/{MODEL}:predict", '{"instances": [[1.0], [2.0, 3.0]]}', 400, "Expecting tensor size: 1"),
    ("POST", f"/v1/models/{MODEL}:predict", '{"inputs": [[1.0], [2.0, 3.0]]}', 400,
     "Encountered list at unexpected size: 2 at level: 1 expected size: 1"),
    ("POST", f"/v1/models/{MODEL}:predict", '{"instances": [1e39]}', 400, "to float without loss of precision"),
    ("POST", f"/v1/models/{MODEL}:predict", '{"instances": []}', 400, "No values in 'instances' array"),
    ("POST", f"/v1/models/{MODEL}:predict", '{"instances": 1.0}', 400, "Excepting 'instances' to be an list/array"),
    ("POST", f"/v1/models/{MODEL}:predict", '{"instances": [1.0], "inputs": [1.0]}', 400,
     "expecting only one of 'inputs' or 'instances' keys to exist"),
    ("POST", f"/v1/models/{MODEL}:predict", '{"signature_name": "serving_default"}', 400,
     "Missing 'inputs' or 'instances' key"),
    ("POST", f"/v1/models/{MODEL}:predict", '{"signature_name": 100, "instances": [1.0]}', 400,
     "'signature_name' key must be a string value."),
    ("POST", f"/v1/models/{MODEL}:predict", '{"inputs": {"z": [1.0]}}', 400, "Missing named input: x in 'inputs' object."),
    ("POST", f"/v1/models/{MODEL}:predict", '{"instances": [{"b64": "AAAA"}]}', 400, "is not of expected type: float"),
    ("POST", f"/v1/models/{MODEL}:classify", '{"examples": [{"x": 1.0}]}', 400,
     "Expected classification signature method_name to be tensorflow/serving/classify. Was: tensorflow/serving/predict"),
    ("POST", f"/v1/models/{MODEL}:regress", '{"signature_name": "regress_x_to_y"}', 400, "'examples' is expected"),
    ("POST", f"/v1/models/{MODEL}:regress", '{"signature_name": "regress_x_to_y", "examples": [{"x": [1.0, "a"]}]}',
     400, "Unexpected element type in feature: x expecting type: float"),
    ("POST", f"/v1/models/{MODEL}:regress", '{"signature_name": "nope", "examples": [{"x": 1.0}]}', 400,
     "No signature was found with the name: nope"),
    ("GET", "/v1/models/foo", None, 404, "Could not find any versions of model foo"),
    ("GET", f"/v1/models/{MODEL}/versions/7", None, 404, f"Could not find version 7 of model {MODEL}"),
    ("GET", "/v1/models/foo/metadata", None, 404, "Servable not found for request: Latest(foo)"),
    ("GET", "/v1/models", None, 400, "Missing model name in request."),
    ("GET", "/v1/foo", None, 400, "Malformed request: GET /v1/foo"),
    ("POST", "/v1/models", "{}", 400, "Malformed request"),
    ("GET", f"/v1/models/{MODEL}:predict", None, 400, "Malformed request"),
    ("POST", f"/v1/models/{MODEL}/metadata", "{}", 400, "Malformed request"),
    ("PUT", f"/v1/models/{MODEL}", "{}", 400, "Malformed request"),
    ("POST", "/v1/models/foo/versions/18446744073709551615:regress", "{}", 400, "Failed to convert version"),
    ("GET", "/index.html", None, 404, "/v1/models/"),
]


@pytest.mark.parametrize("method,path,body,status,message", REST_ERRORS,
                         ids=[f"{m} {p} {b}"[:70] for m, p, b, *_ in REST_ERRORS])
def test_rest_errors_have_tf_serving_codes_and_messages(rest, method, path, body, status, message):
    code, answer = rest.call(method, path, body)
    assert (code, message in json.loads(answer)["error"]) == (status, True), answer


def test_an_oversized_body_is_413_and_the_connection_still_works(rest):
    code, answer = rest.call("POST", f"/v1/models/{MODEL}:predict", b'{"instances": [' + b"1.0," * MAX_BODY + b"1.0]}")
    assert code == 413 and "--rest_api_max_body_bytes" in json.loads(answer)["error"]
    rest.close()
    assert rest.predict(MODEL, instances=[1.0]) == [2.5]


def _grpc_code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code(), error.value.details()


def test_grpc_errors_have_tf_serving_codes(stub):
    x = {"x": np.array([[1.0]], np.float32)}
    predict = stub.prediction.Predict
    cases = [
        (lambda: stub.predict("foo", x), grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(foo)"),
        (lambda: stub.predict(MODEL, x, version=9), grpc.StatusCode.NOT_FOUND, f"Specific({MODEL}, 9)"),
        (lambda: stub.predict(MODEL, x, label="nope"), grpc.StatusCode.INVALID_ARGUMENT,
         "Unrecognized servable version label: nope"),
        (lambda: stub.predict(MODEL, x, signature_name="foo"), grpc.StatusCode.FAILED_PRECONDITION,
         'Serving signature key "foo" not found.'),
        (lambda: stub.predict(MODEL, {"z": x["x"]}), grpc.StatusCode.INVALID_ARGUMENT,
         "input tensor alias not found in signature: z. Inputs expected to be in the set {x}."),
        (lambda: stub.predict(MODEL, {**x, "z": x["x"]}), grpc.StatusCode.INVALID_ARGUMENT,
         "input size does not match signature: 2!=1 len({x,z}) != len({x}). Sent extra: {z}. Missing but required: {}."),
        (lambda: stub.predict(MODEL, {"x": np.array([["a"]])}), grpc.StatusCode.INVALID_ARGUMENT,
         "input tensor alias x is DT_STRING but signature serving_default takes DT_FLOAT"),
        (lambda: stub.predict(MODEL, x, output_filter=["nope"]), grpc.StatusCode.INVALID_ARGUMENT,
         "output tensor alias not found in signature: nope"),
        (lambda: stub.predict(MODEL, x, output_filter=["y", "y"]), grpc.StatusCode.INVALID_ARGUMENT,
         "duplicate output tensor alias: y"),
        (lambda: predict(stub.predict_request(MODEL, x).__class__(), 10), grpc.StatusCode.INVALID_ARGUMENT,
         "Missing ModelSpec"),
        (lambda: stub.prediction.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=model_spec(MODEL)), 10), grpc.StatusCode.INVALID_ARGUMENT, "at least one metadata_field"),
        (lambda: stub.prediction.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=model_spec(MODEL), metadata_field=["graph"]), 10), grpc.StatusCode.INVALID_ARGUMENT,
         "Metadata field graph is not supported"),
        (lambda: stub.status("foo"), grpc.StatusCode.NOT_FOUND, "Could not find any versions of model foo"),
        (lambda: stub.prediction.Regress(regression_pb2.RegressionRequest(
            model_spec=model_spec(MODEL, signature_name="regress_x_to_y")), 10), grpc.StatusCode.INVALID_ARGUMENT,
         "Input is empty."),
    ]
    for call, code, message in cases:
        got_code, details = _grpc_code(call)
        assert got_code == code and message in details, (code, message, got_code, details)


def test_output_filter_and_response_fields(stub):
    response = stub.prediction.Predict(stub.predict_request(
        MODEL, {"inputs": np.array([_example(2.0)], dtype=object)}, signature_name="classify_x_to_y",
        output_filter=["scores"]), 10)
    assert list(response.outputs) == ["scores"] and list(response.outputs["scores"].float_val) == [3.0]
    assert response.model_spec.signature_name == "classify_x_to_y"


def test_prometheus_metrics_count_requests_by_status_and_versions(rest):
    rest.predict(MODEL, instances=[1.0])
    rest.call("POST", "/v1/models/foo:predict", '{"instances": [1]}')
    status, body = rest.call("GET", "/monitoring/prometheus/metrics")
    text = body.decode()
    assert status == 200
    assert re.search(r':tensorflow:serving:request_count\{model_name="half_plus_two",signature_name="serving_default",'
                     r'API="predict",entrypoint="REST",status="OK"\} [1-9]', text)
    # Names no model has are counted without them: made-up names must not grow the metrics without bound.
    assert 'model_name="",signature_name="",API="predict",entrypoint="REST",status="NOT_FOUND"' in text
    assert "foo" not in text
    assert ':tensorflow:serving:request_latency_bucket{model_name="half_plus_two",API="predict",entrypoint="REST",' \
           'le="+Inf"}' in text
    assert ':cvpipe:serving:model_version_available{model_name="half_plus_two",version="123"} 1' in text

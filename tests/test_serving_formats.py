"""Pure pieces of the server: JSON numbers and tensors, response tensors, version directories, flags."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.config import file_system_storage_path_source_pb2

from components.artifacts import version_directories
from serving import json_tensor, policy
from serving.errors import ServingError
from serving.cli import parse_command_line
from serving.options import ServerOptions
from serving.tensors import to_tensor_proto


def _outputs(**arrays) -> dict:
    return json.loads(json_tensor.predict_response(arrays, row_format=False))["outputs"]


@pytest.mark.parametrize("value,text", [
    (0.1, "0.1"), (3.0, "3.0"), (2.5, "2.5"), (1e-5, "1e-05"), (1234567.0, "1234567.0"), (0.123456789, "0.123456791"),
    (16777216.0, "16777216.0"), (-0.0, "-0.0"), (float("nan"), "NaN"), (float("inf"), "Infinity"),
    (float("-inf"), "-Infinity"), (3.4028234663852886e38, "3.40282347e+38")])
def test_floats_are_written_as_tf_serving_writes_them(value, text):
    body = json_tensor.predict_response({"y": np.array([value], np.float32)}, row_format=False).decode()
    assert body == '{"outputs": [' + text + "]}"
    if np.isfinite(value):
        assert np.float32(json.loads(body)["outputs"][0]) == np.float32(value)  # round-trips


def test_doubles_ints_bools_strings_and_bytes_outputs():
    assert _outputs(d=np.array([0.1, 1 / 3])) == [0.1, 1 / 3]  # one output: its value alone
    body = json_tensor.predict_response({"d": np.array([1 / 3])}, row_format=False)
    assert b"0.33333333333333331" in body  # %.17g when %.6g does not round-trip
    outputs = _outputs(i=np.array([[1, -2]], np.int64), b=np.array([True, False]),
                       label=np.array(["ch\u00e2t".encode()], dtype=object), image_bytes=np.array([b"\x00\xff"], dtype=object))
    assert outputs == {"i": [[1, -2]], "b": [True, False], "label": ["ch\u00e2t"], "image_bytes": [{"b64": "AP8="}]}
    rows = json.loads(json_tensor.predict_response({"p": np.array([[0.5, 0.25], [1.0, 0.0]], np.float32),
                                                    "k": np.array([b"a", b"b"], dtype=object)}, row_format=True))
    assert rows == {"predictions": [{"k": "a", "p": [0.5, 0.25]}, {"k": "b", "p": [1.0, 0.0]}]}
    with pytest.raises(ServingError, match="inconsistent batch size: 1 expecting: 2"):
        json_tensor.predict_response({"a": np.zeros(2), "b": np.zeros(1)}, row_format=True)


def _infos(**dtypes) -> dict:
    return {name: meta_graph_pb2.TensorInfo(dtype=dtype) for name, dtype in dtypes.items()}


def test_request_tensors_from_rows_and_columns():
    inputs, row = json_tensor.predict_inputs({"instances": [[1, 2], [3, 4]]}, _infos(x=types_pb2.DT_FLOAT), "")
    assert row and inputs["x"].dtype == np.float32 and inputs["x"].tolist() == [[1, 2], [3, 4]]
    inputs, row = json_tensor.predict_inputs(
        {"instances": [{"a": {"b64": "aGk="}, "n": 1}, {"a": "yo", "n": 2}]},
        _infos(a=types_pb2.DT_STRING, n=types_pb2.DT_INT64), "")
    assert inputs["a"].tolist() == [b"hi", b"yo"] and inputs["n"].dtype == np.int64
    inputs, row = json_tensor.predict_inputs({"inputs": {"a": [[True]], "n": 7}},
                                             _infos(a=types_pb2.DT_BOOL, n=types_pb2.DT_UINT8), "")
    assert not row and inputs["a"].tolist() == [[True]] and inputs["n"].shape == ()
    with pytest.raises(ServingError, match="must only have keys: a,n"):
        json_tensor.predict_inputs({"instances": [{"a": "x"}]}, _infos(a=types_pb2.DT_STRING, n=types_pb2.DT_INT64), "")
    with pytest.raises(ServingError, match="is out of the range of uint8"):
        json_tensor.predict_inputs({"inputs": [300]}, _infos(n=types_pb2.DT_UINT8), "")
    with pytest.raises(ServingError, match="JSON Value: true Type: True is not of expected type: float"):
        json_tensor.predict_inputs({"inputs": [1.0, True]}, _infos(x=types_pb2.DT_FLOAT), "")
    with pytest.raises(ServingError, match="found at incorrect level: 2 in the JSON DOM. Expected at level: 2"):
        json_tensor.predict_inputs({"inputs": [[1.0], 2.0]}, _infos(x=types_pb2.DT_FLOAT), "")
    with pytest.raises(ServingError, match="Unable to base64 decode"):
        json_tensor.predict_inputs({"inputs": [{"b64": "!!"}]}, _infos(x=types_pb2.DT_STRING), "")
    with pytest.raises(ServingError) as unimplemented:
        json_tensor.predict_inputs({"inputs": [1.0]}, _infos(x=types_pb2.DT_HALF), "")
    assert unimplemented.value.http_status == 501


def test_response_tensors_use_the_typed_value_fields():
    proto = to_tensor_proto(np.array([[3.0]], np.float32))
    assert list(proto.float_val) == [3.0] and not proto.tensor_content
    assert [d.size for d in proto.tensor_shape.dim] == [1, 1]
    assert list(to_tensor_proto(np.array([b"a"], dtype=object)).string_val) == [b"a"]
    assert list(to_tensor_proto(np.array([7], np.int64)).int64_val) == [7]


def test_version_directories_and_policies(tmp_path):
    for name in ("1", "00000123", "3.tmp-abc", "x", "7"):
        (tmp_path / name).mkdir()
    (tmp_path / "9").write_text("a file, not a version")
    versions = version_directories(str(tmp_path))
    assert sorted(versions) == [1, 7, 123] and versions[123].endswith("00000123")
    Policy = file_system_storage_path_source_pb2.FileSystemStoragePathSourceConfig.ServableVersionPolicy
    assert policy.aspired_versions(Policy(), versions) == {123}
    latest = Policy()
    latest.latest.num_versions = 2
    assert policy.aspired_versions(latest, versions) == {7, 123}
    every = Policy()
    every.all.SetInParent()
    assert policy.aspired_versions(every, versions) == {1, 7, 123}
    specific = Policy()
    specific.specific.versions.extend([1, 42])
    assert policy.aspired_versions(specific, versions) == {1}
    assert version_directories(str(tmp_path / "missing")) == {}


def test_flags_are_tf_serving_flags():
    options, verbose = parse_command_line(["--model_name=m", "--model_base_path=/models/m", "--rest_api_port=0",
                                           "--enable_batching", "--port=9000", "--enable_model_warmup=false"])
    assert (options.model_name, options.port, options.rest_api_port, options.enable_batching,
            options.enable_model_warmup, options.bind_address, verbose) == ("m", 9000, None, True, False, "127.0.0.1",
                                                                            False)
    assert parse_command_line(["--model_base_path=/m"])[0].rest_api_port == 8501
    with pytest.raises(SystemExit):
        parse_command_line(["--model_name=m"])  # nothing to serve
    with pytest.raises(ValueError, match="--batching_parameters_file needs --enable_batching"):
        ServerOptions(model_base_path="/m", batching_parameters_file="/b")

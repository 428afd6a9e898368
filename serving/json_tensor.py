"""TF Serving's REST JSON <-> tensors, as tensorflow_serving/util/json_tensor.cc does it.

Requests: `instances` (row format: one entry per batch row; objects keyed by input name when the
signature has several inputs) or `inputs` (columnar: a value, or an object keyed by input name);
`{"b64": "..."}` for any DT_STRING value; classify/regress `examples` (+ `context`) as tf.Examples.
Responses: `{"predictions": [...]}` for row requests, `{"outputs": ...}` for columnar ones,
`{"results": ...}` for classify/regress. Floats are written with the fewest digits that round-trip
(six significant digits when they do, else 9 for float and 17 for double), whole numbers with a
trailing `.0`, NaN and +-Infinity as such; DT_STRING outputs whose alias ends in `_bytes` as
`{"b64": ...}`, others as UTF-8 strings. Error messages are TF Serving's; quoted JSON is cut at
2,000 characters.

Beyond TF Serving, `parse_json` enforces `JsonLimits` on the text before parsing it (nesting depth,
number of values, digits per number), and tensors are built only up to `MAX_RANK` dimensions, so no
body can exhaust the stack or the memory, or reach TensorFlow with a shape it cannot hold.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import classification_pb2, input_pb2, regression_pb2

from serving.errors import ServingError, invalid_argument, unimplemented
from serving.tensors import MAX_RANK, dtype_string, numpy_dtype

_MAX_QUOTED = 2000
_FLOAT_MAX = float(np.finfo(np.float32).max)
_INT_RANGES = {
    types_pb2.DT_INT8: (-2**7, 2**7 - 1), types_pb2.DT_UINT8: (0, 2**8 - 1),
    types_pb2.DT_INT16: (-2**15, 2**15 - 1), types_pb2.DT_UINT16: (0, 2**16 - 1),
    types_pb2.DT_INT32: (-2**31, 2**31 - 1), types_pb2.DT_INT64: (-2**63, 2**63 - 1),
    types_pb2.DT_UINT32: (0, 2**32 - 1), types_pb2.DT_UINT64: (0, 2**64 - 1),
}
_FLOATS = {types_pb2.DT_FLOAT: 2**24 - 1, types_pb2.DT_DOUBLE: 2**53 - 1}  # largest exact integer
# rapidjson's wording of the parse errors Python's json reports differently.
_PARSE_ERRORS = {
    "Expecting value": "Invalid value.",
    "Extra data": "The document root must not be followed by other values.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
}

InfoMap = Mapping[str, meta_graph_pb2.TensorInfo]

_ESCAPED = re.compile(rb"\\.", re.DOTALL)
_STRING = re.compile(rb'"[^"]*"')
_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b"[]{},")))
_EXPONENT_NUMBER = re.compile(rb"-?[0-9][0-9.]*[eE][-+]?[0-9]+")


@dataclass(frozen=True)
class JsonLimits:
    """What a REST body may hold: JSON nesting depth, values (array elements and object members) and digits per
    number; checked on the text before it is parsed, so no body can exhaust the stack or blow up in memory
    (each parsed value costs 30-60 bytes of Python objects, many times its text)."""

    max_depth: int = 32
    max_values: int = 4 * 2**20
    max_number_digits: int = 40


# ---- requests -------------------------------------------------------------------------------------------

def check_json_limits(body: bytes, limits: JsonLimits) -> None:
    """Refuses a JSON text deeper, with more values or longer numbers than `limits`, or with a number beyond the
    range of a double (`1e999`: rapidjson's "Number too big"), counted outside strings without parsing it (regular expressions and numpy: an 8 MiB body of floats takes about 0.1 s)."""
    outside_strings = _STRING.sub(b"", _ESCAPED.sub(b"", body))
    text = np.frombuffer(outside_strings, np.uint8)
    breaks = np.flatnonzero((text < ord("0")) | (text > ord("9")))  # the runs between them are digits
    longest = int(np.diff(breaks, prepend=-1, append=text.size).max(initial=1)) - 1
    if longest > limits.max_number_digits:
        raise invalid_argument(f"JSON Parse error: a number of {longest} digits, more than the "
                               f"{limits.max_number_digits} this server accepts (--rest_api_max_number_digits)")
    if b"e" in outside_strings or b"E" in outside_strings:
        for number in _EXPONENT_NUMBER.finditer(outside_strings):
            if math.isinf(float(number.group())):  # rapidjson refuses what Python reads as infinity
                raise invalid_argument(f"JSON Parse error: Number too big to be stored in double: "
                                       f"{number.group()[:40].decode()}")
    structure = np.frombuffer(outside_strings.translate(None, _NOT_STRUCTURE), np.uint8)
    commas = structure == ord(",")
    if commas.sum() >= limits.max_values:
        raise invalid_argument(f"JSON Parse error: more than {limits.max_values} values, more than this server "
                               f"accepts (--rest_api_max_json_values): send smaller batches, or image bytes as "
                               f"{{\"b64\": ...}} instead of pixel arrays")
    brackets = structure[~commas]
    if brackets.size:
        # '[' and '{' have bit 1 set, ']' and '}' do not
        depth = int(np.cumsum(np.where(brackets & 2, 1, -1)).max())
        if depth > limits.max_depth:
            raise invalid_argument(f"JSON Parse error: arrays and objects nested {depth} deep, more than the "
                                   f"{limits.max_depth} this server accepts (--rest_api_max_json_depth)")


def utf8(text: str, where: str) -> bytes:
    """A JSON string as UTF-8 bytes; a lone UTF-16 surrogate (`\\ud800`) is an INVALID_ARGUMENT."""
    try:
        return text.encode()
    except UnicodeEncodeError as e:
        raise invalid_argument(f"{where}: the string holds a lone UTF-16 surrogate at character {e.start}, which "
                               f"is not text; send binary data as {{\"b64\": ...}}") from e

def quote(value: Any) -> str:
    """A JSON value as error messages show it (JsonValueToString), cut to a readable length."""
    text = json.dumps(value, indent=4, ensure_ascii=False)
    return text if len(text) <= _MAX_QUOTED else text[:_MAX_QUOTED] + "...(truncated)"


def json_type(value: Any) -> str:
    """rapidjson's type name of a JSON value."""
    if value is None:
        return "Null"
    if value is True or value is False:
        return "True" if value else "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def _format_error(doc: Any, text: str) -> ServingError:
    return invalid_argument(f"JSON Value: {quote(doc)} {text}")


def parse_json(body: bytes, limits: JsonLimits = JsonLimits()) -> dict:
    """The request body as a JSON object (`JSON Parse error: ...` otherwise), within `limits`."""
    if not body.strip():
        raise invalid_argument("JSON Parse error: The document is empty")
    check_json_limits(body, limits)
    try:
        doc = json.loads(body)
    except UnicodeDecodeError as e:
        raise invalid_argument(f"JSON Parse error: Invalid encoding in string. at offset: {e.start}") from e
    except json.JSONDecodeError as e:
        message = next((v for k, v in _PARSE_ERRORS.items() if e.msg.startswith(k)), e.msg)
        raise invalid_argument(f"JSON Parse error: {message} at offset: {e.pos}") from e
    except RecursionError as e:  # malformed JSON whose nesting the count above could not see
        raise invalid_argument("JSON Parse error: arrays and objects nested too deep") from e
    except ValueError as e:  # Python's own limit on integer digits, if --rest_api_max_number_digits is above it
        raise invalid_argument(f"JSON Parse error: {str(e)[:200]}") from e
    if not isinstance(doc, dict):
        raise _format_error(doc, "Is not object")
    return doc


def signature_name(doc: dict) -> str:
    """The request's optional `signature_name` ('' when absent)."""
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid_argument(f"JSON Value: {quote(doc)} not formatted correctly. 'signature_name' key must be a "
                               f"string value.")
    return name


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _b64decode(value: Any) -> bytes:
    if not _is_b64(value):
        raise invalid_argument(f"JSON Value: {quote(value)} not formatted correctly for base64 data")
    text = value["b64"]
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as e:
        raise invalid_argument("Unable to base64 decode") from e


def _type_error(value: Any, dtype: int) -> ServingError:
    return invalid_argument(f"JSON Value: {quote(value)} Type: {json_type(value)} is not of expected type: "
                            f"{dtype_string(dtype)}")


def _scalar(value: Any, dtype: int) -> Any:
    """One JSON leaf as a value of `dtype` (AddValueToTensor)."""
    if isinstance(value, dict):
        if dtype == types_pb2.DT_STRING:
            return _b64decode(value)
        raise _type_error(value, dtype)
    kind = type(value)
    if dtype in _FLOATS:
        if kind not in (int, float):
            raise _type_error(value, dtype)
        name = "float" if dtype == types_pb2.DT_FLOAT else "double"
        lossy = abs(value) > _FLOATS[dtype] if kind is int else (
            dtype == types_pb2.DT_FLOAT and math.isfinite(value) and abs(value) > _FLOAT_MAX)
        if lossy:
            raise invalid_argument(f"Cannot convert JSON value: {quote(value)} to {name} without loss of precision.")
        return value
    if dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        if kind is not int:
            raise _type_error(value, dtype)
        if not low <= value <= high:
            raise invalid_argument(f"JSON Value: {quote(value)} is out of the range of {dtype_string(dtype)}")
        return value
    if dtype == types_pb2.DT_BOOL:
        if kind is not bool:
            raise _type_error(value, dtype)
        return value
    if dtype == types_pb2.DT_STRING:
        if kind is not str:
            raise _type_error(value, dtype)
        return utf8(value, "JSON string value")
    raise unimplemented(f"Conversion of JSON Value: {quote(value)} to type: {dtype_string(dtype)}")


def _leaves(values: list, dtype: int) -> list | None:
    """A whole innermost list converted at once when its types need no per-value checks (the fast path)."""
    kinds = set(map(type, values))
    if dtype == types_pb2.DT_FLOAT and kinds <= {float}:
        finite = [v for v in values if math.isfinite(v)]
        return values if not finite or max(map(abs, finite)) <= _FLOAT_MAX else None
    if dtype == types_pb2.DT_DOUBLE and kinds <= {float}:
        return values
    if dtype == types_pb2.DT_STRING and kinds <= {str}:
        return [utf8(v, "JSON string value") for v in values]
    return None


def _dense_shape(value: Any) -> list[int]:
    """The shape a JSON value implies, following first elements (GetDenseTensorShape)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value: Any, level: int, shape: list[int], dtype: int, out: list) -> None:
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid_argument(f"JSON Value: {quote(value)} found at incorrect level: {level + 1} in the JSON "
                                   f"DOM. Expected at level: {rank}")
        out.append(_scalar(value, dtype))
        return
    if level >= rank:
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid_argument(f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: "
                               f"{shape[level]}")
    if level == rank - 1:
        fast = _leaves(value, dtype)
        if fast is not None:
            out.extend(fast)
            return
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def tensor_from_json(value: Any, dtype: int) -> np.ndarray:
    """A JSON value (scalar or nested lists) as an array of `dtype`, validated like FillTensorProto."""
    shape = _dense_shape(value)
    if len(shape) > MAX_RANK:
        raise invalid_argument(f"JSON value nests lists {len(shape)} deep: a tensor has at most {MAX_RANK} "
                               f"dimensions")
    flat: list = []
    _fill(value, 0, shape, dtype, flat)
    array = np.empty(len(flat), dtype=numpy_dtype(dtype))
    array[:] = flat
    return array.reshape(shape)


def _instances(doc: dict, instances: Any, infos: InfoMap) -> dict[str, np.ndarray]:
    """Row format: one tensor per input, its first dimension the number of instances."""
    if not isinstance(instances, list):
        raise _format_error(doc, "Excepting 'instances' to be an list/array")
    if not instances:
        raise _format_error(doc, "No values in 'instances' array")
    objects = isinstance(instances[0], dict) and not _is_b64(instances[0])
    if not objects and len(infos) > 1:
        raise invalid_argument("instances is a plain list, but expecting list of objects as multiple input tensors "
                               "required as per tensorinfo_map")
    if not objects:
        name = next(iter(infos))
        if all(not isinstance(item, dict) or _is_b64(item) for item in instances):
            try:  # the whole list as one tensor: same checks, one pass
                return {name: tensor_from_json(instances, infos[name].dtype)}
            except ServingError:
                pass  # per-instance below, for the precise message
    rows: dict[str, list[np.ndarray]] = {}
    names = sorted(infos)
    for index, item in enumerate(instances):
        if objects:
            if not isinstance(item, dict) or _is_b64(item):
                raise invalid_argument(f"Expecting object but got list at item {index} of input list")
            for key, value in item.items():
                try:
                    _add_instance_item(value, key, infos, rows)
                except ServingError as e:
                    raise invalid_argument(f"Failed to process element: {index} key: {key} of 'instances' list. "
                                           f"Error: {e}") from e
            if sorted(item) != names:
                raise invalid_argument(f"Failed to process element: {index} of 'instances' list. JSON object: "
                                       f"{quote(item)} must only have keys: {','.join(names)}")
        else:
            if isinstance(item, dict) and not _is_b64(item):
                raise invalid_argument(f"Expecting value/list but got object at item {index} of input list")
            try:
                _add_instance_item(item, names[0], infos, rows)
            except ServingError as e:
                raise invalid_argument(f"Failed to process element: {index} of 'instances' list. Error: {e}") from e
    return {name: np.stack(items) for name, items in rows.items()}


def _add_instance_item(value: Any, name: str, infos: InfoMap, rows: dict[str, list[np.ndarray]]) -> None:
    if name not in infos:
        raise invalid_argument(f"JSON object: does not have named input: {name}")
    tensor = tensor_from_json(value, infos[name].dtype)
    previous = rows.setdefault(name, [])
    if previous and previous[0].size != tensor.size:
        raise invalid_argument(f"Expecting tensor size: {previous[0].size} but got: {tensor.size}")
    if previous and previous[0].shape != tensor.shape:
        raise invalid_argument(f"Expecting shape [{','.join(map(str, previous[0].shape))}] but got: "
                               f"[{','.join(map(str, tensor.shape))}]")
    previous.append(tensor)


def _columns(inputs: Any, infos: InfoMap) -> dict[str, np.ndarray]:
    """Columnar format: `inputs` is the only input's value, or an object keyed by input name."""
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(infos) > 1:
            raise invalid_argument("inputs is a plain value/list, but expecting an object as multiple input tensors "
                                   "required as per tensorinfo_map")
        name = next(iter(infos))
        return {name: tensor_from_json(inputs, infos[name].dtype)}
    tensors = {}
    for name in sorted(infos):
        if name not in inputs:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        tensors[name] = tensor_from_json(inputs[name], infos[name].dtype)
    return tensors


def predict_inputs(doc: dict, infos: InfoMap, signature: str) -> tuple[dict[str, np.ndarray], bool]:
    """The input tensors of a :predict body, and whether it used the row (`instances`) format."""
    if not infos:
        raise invalid_argument(f"Failed to get input map for signature: {signature or 'DEFAULT'}")
    infos = dict(infos)  # a protobuf map raises UnicodeEncodeError on a key holding a lone surrogate
    if "instances" in doc and "inputs" in doc:
        raise _format_error(doc, "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to "
                                 "exist ")
    if "instances" in doc:
        return _instances(doc, doc["instances"], infos), True
    if "inputs" in doc:
        return _columns(doc["inputs"], infos), False
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _feature_kind(feature: feature_pb2.Feature, name: str, kind: str) -> None:
    current = feature.WhichOneof("kind")
    if current is not None and current != kind:
        raise invalid_argument(f"Unexpected element type in feature: {name} expecting type: "
                               f"{current.replace('_list', '')}")


def _add_feature_value(value: Any, name: str, feature: feature_pb2.Feature) -> None:
    """One JSON value into a tf.train.Feature (AddValueToFeature)."""
    if value is None or isinstance(value, list) or (isinstance(value, dict) and not _is_b64(value)):
        raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: {json_type(value)}")
    if isinstance(value, bool):
        _feature_kind(feature, name, "int64_list")
        feature.int64_list.value.append(int(value))
    elif isinstance(value, dict):
        _feature_kind(feature, name, "bytes_list")
        feature.bytes_list.value.append(_b64decode(value))
    elif isinstance(value, str):
        _feature_kind(feature, name, "bytes_list")
        feature.bytes_list.value.append(utf8(value, f"Feature: {name}"))
    elif isinstance(value, float):
        _feature_kind(feature, name, "float_list")
        if math.isfinite(value) and abs(value) > _FLOAT_MAX:
            raise invalid_argument(f"Cannot convert JSON value: {quote(value)} to float without loss of precision.")
        feature.float_list.value.append(value)
    else:
        _feature_kind(feature, name, "int64_list")
        if value >= 2**63:
            raise invalid_argument(f"Feature: {name} has uint64 element. Only int64 is supported.")
        if value < -2**63:
            raise invalid_argument(f"Feature: {name} has an element below the int64 range: {quote(value)}")
        feature.int64_list.value.append(value)


def _example(value: Any) -> example_pb2.Example:
    if not isinstance(value, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {json_type(value)}")
    example = example_pb2.Example()
    for name, content in value.items():
        utf8(name, "Feature name")
        feature = example.features.feature[name]
        for item in content if isinstance(content, list) else [content]:
            _add_feature_value(item, name, feature)
    return example


def examples_input(doc: dict) -> input_pb2.Input:
    """The tf.Examples of a :classify or :regress body (`examples`, optional `context`)."""
    model_input = input_pb2.Input()
    if "examples" not in doc:
        raise _format_error(doc, "When method is classify, key 'examples' is expected and was not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise _format_error(doc, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise _format_error(doc, "'examples' value is an empty array")
    if "context" in doc:
        with_context = model_input.example_list_with_context
        with_context.context.CopyFrom(_example(doc["context"]))
        with_context.examples.extend(_example(e) for e in examples)
    else:
        model_input.example_list.examples.extend(_example(e) for e in examples)
    return model_input


# ---- responses ------------------------------------------------------------------------------------------

def _decimal(value: float, single: bool) -> str:
    """WriteDecimal: shortest of %.6g or full precision that round-trips; `.0` on whole numbers."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    text = "%.6g" % value
    back = float(np.float32(text)) if single else float(text)
    if back != value:
        text = "%.*g" % (9 if single else 17, value)
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def _values(array: np.ndarray, as_bytes: bool) -> list[str]:
    """Every element of `array` (flattened) as JSON text."""
    flat = array.reshape(-1)
    kind = array.dtype.kind
    if kind == "f":
        single = array.dtype != np.float64
        return [_decimal(v, single) for v in flat.astype(np.float64).tolist()]
    if kind == "b":
        return ["true" if v else "false" for v in flat.tolist()]
    if kind in "iu":
        return [str(v) for v in flat.tolist()]
    if as_bytes:
        return ['{"b64": "' + base64.b64encode(v).decode() + '"}' for v in flat.tolist()]
    return [json.dumps(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v), ensure_ascii=False)
            for v in flat.tolist()]


def _nested(texts: list[str], shape: tuple[int, ...]) -> str:
    """Flat element texts nested as JSON arrays of `shape` (a scalar when shape is ())."""
    if not shape:
        return texts[0]
    if len(shape) == 1:
        return "[" + ",".join(texts) + "]"
    step = len(texts) // shape[0] if shape[0] else 0
    return "[" + ",".join(_nested(texts[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])) + "]"


def _tensor_json(name: str, array: np.ndarray) -> str:
    return _nested(_values(array, name.endswith("_bytes") and array.dtype.kind in "OSU"), array.shape)


def predict_response(outputs: Mapping[str, np.ndarray], row_format: bool) -> bytes:
    """The :predict response body: `predictions` (row format) or `outputs` (columnar)."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if not row_format:
        if len(names) == 1:
            body = _tensor_json(names[0], outputs[names[0]])
        else:
            body = "{" + ",".join(f"{json.dumps(n)}: {_tensor_json(n, outputs[n])}" for n in names) + "}"
        return ('{"outputs": ' + body + "}").encode()
    batch = 0
    for name in names:
        shape = outputs[name].shape
        if not shape:
            raise invalid_argument(f"Tensor name: {name} has no shape information ")
        if shape[0] < 1:
            raise invalid_argument(f"Tensor name: {name} has invalid batch size: {shape[0]}")
        if batch and shape[0] != batch:
            raise invalid_argument(f"Tensor name: {name} has inconsistent batch size: {shape[0]} expecting: {batch}")
        batch = shape[0]
    columns = {name: _values(outputs[name], name.endswith("_bytes") and outputs[name].dtype.kind in "OSU")
               for name in names}
    rows = []
    for i in range(batch):
        items = {}
        for name in names:
            row_shape = outputs[name].shape[1:]
            step = len(columns[name]) // batch
            items[name] = _nested(columns[name][i * step:(i + 1) * step], row_shape)
        rows.append(items[names[0]] if len(names) == 1
                    else "{" + ",".join(f"{json.dumps(n)}: {items[n]}" for n in names) + "}")
    return ('{"predictions": [' + ",".join(rows) + "]}").encode()


def classify_response(result: classification_pb2.ClassificationResult) -> bytes:
    """`{"results": [[[label, score], ...], ...]}`."""
    if not result.classifications:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    rows = ("[" + ",".join(f"[{json.dumps(c.label, ensure_ascii=False)}, {_decimal(c.score, True)}]"
                           for c in classifications.classes) + "]"
            for classifications in result.classifications)
    return ('{"results": [' + ",".join(rows) + "]}").encode()


def regress_response(result: regression_pb2.RegressionResult) -> bytes:
    """`{"results": [value, ...]}`."""
    if not result.regressions:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    return ('{"results": [' + ",".join(_decimal(r.value, True) for r in result.regressions) + "]}").encode()


def error_body(message: str) -> bytes:
    """`{"error": "<message>"}`."""
    return json.dumps({"error": message}, ensure_ascii=False).encode()

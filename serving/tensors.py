"""Tensors between TensorProto (gRPC), numpy (the server's working form) and TensorFlow dtype names.

A request TensorProto is checked before any memory is allocated for it (`check_tensor_proto`): its
dimensions, its dtype, and that the values it carries fit its declared shape. Like TensorFlow, a
proto may carry fewer values than its shape holds (the last one repeats), but only while the filled
tensor stays within `MAX_FILL_BYTES`; a declared shape of 2^40 strings is refused, not allocated.
"""

from __future__ import annotations

import math

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving.errors import ServingError, invalid_argument

# The most dimensions a request tensor may have (TensorFlow's kernels are built for at most 8).
MAX_RANK = 32
# The largest tensor a request may declare beyond the values it sends (TensorFlow's fill of the last value).
MAX_FILL_BYTES = 16 * 2**20
_POINTER_BYTES = 8  # per string element, held as a Python object

# TensorProto's typed value fields, as TF Serving fills them (Tensor::AsProtoField).
_VALUE_FIELDS = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
}


def dtype_name(dtype: int) -> str:
    """`DT_FLOAT`, `DT_STRING`, ... for a DataType enum value."""
    return types_pb2.DataType.Name(dtype)


def dtype_string(dtype: int) -> str:
    """TensorFlow's short name (DataTypeString): `float`, `string`, `int64`, ..."""
    return dtype_name(dtype)[3:].lower()


def datatype_of(array: np.ndarray) -> int:
    """The DataType enum of a numpy array (object and bytes arrays are DT_STRING)."""
    if array.dtype.kind in "OSU":
        return types_pb2.DT_STRING
    return tf.as_dtype(array.dtype).as_datatype_enum


def numpy_dtype(dtype: int) -> np.dtype:
    """The numpy dtype the server holds a tensor of this DataType in (object for strings)."""
    if dtype == types_pb2.DT_STRING:
        return np.dtype(object)
    return np.dtype(tf.dtypes.as_dtype(dtype).as_numpy_dtype)


def proto_shape(proto: tensor_pb2.TensorProto, alias: str) -> tuple[int, ...]:
    """The shape a request TensorProto declares; INVALID_ARGUMENT for an unknown rank, a negative dimension or
    more than MAX_RANK dimensions."""
    dims = proto.tensor_shape.dim
    if proto.tensor_shape.unknown_rank:
        raise invalid_argument(f"input tensor {alias} has an unknown rank: send its shape")
    if len(dims) > MAX_RANK:
        raise invalid_argument(f"input tensor {alias} has {len(dims)} dimensions; at most {MAX_RANK} are supported")
    shape = tuple(d.size for d in dims)
    if any(size < 0 for size in shape):
        raise invalid_argument(f"input tensor {alias} has a negative dimension: shape {list(shape)}")
    return shape


def check_tensor_proto(proto: tensor_pb2.TensorProto, alias: str) -> tuple[int, ...]:
    """Checks that a request TensorProto's values fit its declared dtype and shape before it is converted;
    returns the shape. INVALID_ARGUMENT for a malformed proto, RESOURCE_EXHAUSTED for a fill too large."""
    shape = proto_shape(proto, alias)
    if proto.dtype == types_pb2.DT_INVALID or proto.dtype not in types_pb2.DataType.values() \
            or proto.dtype >= 100 or proto.dtype in (types_pb2.DT_RESOURCE, types_pb2.DT_VARIANT):
        raise invalid_argument(f"input tensor {alias} has dtype {proto.dtype}, which a request cannot carry")
    elements = math.prod(shape)
    if proto.dtype == types_pb2.DT_STRING:
        sent = len(proto.string_val)
        element_bytes = _POINTER_BYTES + (len(proto.string_val[-1]) if sent else 0)
    else:
        element_bytes = numpy_dtype(proto.dtype).itemsize
        if proto.tensor_content:
            if len(proto.tensor_content) != elements * element_bytes:
                raise invalid_argument(f"input tensor {alias}: tensor_content holds {len(proto.tensor_content)} bytes "
                                       f"but shape {list(shape)} of {dtype_string(proto.dtype)} needs "
                                       f"{elements * element_bytes}")
            return shape
        field = _VALUE_FIELDS.get(proto.dtype)
        sent = len(getattr(proto, field)) if field else elements
    if sent > elements:
        raise invalid_argument(f"input tensor {alias} carries {sent} values but its shape {list(shape)} holds "
                               f"{elements}")
    if sent < elements and elements * element_bytes > MAX_FILL_BYTES:
        raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"input tensor {alias} declares shape {list(shape)} but carries {sent} values: filling "
                           f"it would take {elements * element_bytes} bytes, more than the {MAX_FILL_BYTES} this "
                           f"server fills; send every value")
    return shape


def to_ndarray(proto: tensor_pb2.TensorProto, alias: str) -> np.ndarray:
    """A request tensor as numpy, checked first (`check_tensor_proto`); a malformed proto is an
    INVALID_ARGUMENT naming the input."""
    check_tensor_proto(proto, alias)
    try:
        return tf.make_ndarray(proto)
    except (TypeError, ValueError, KeyError) as e:
        raise invalid_argument(f"tensor parsing error: {alias} ({e})") from e


def to_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A response tensor with its values in the typed fields (`float_val`, ...), as TF Serving sends them."""
    datatype = datatype_of(array)
    field = _VALUE_FIELDS.get(datatype)
    if field is None:  # half, bfloat16, complex: tensor_content
        return tf.make_tensor_proto(array)
    proto = tensor_pb2.TensorProto(dtype=datatype)
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    values = array.ravel()
    if datatype == types_pb2.DT_STRING:
        getattr(proto, field).extend(v if isinstance(v, bytes) else str(v).encode() for v in values)
    else:
        getattr(proto, field).extend(values.tolist())
    return proto

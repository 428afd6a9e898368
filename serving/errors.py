"""Errors as TF Serving reports them: a canonical status code plus a message.

The same `ServingError` becomes a gRPC status (`grpc.StatusCode`), an HTTP status with a
`{"error": message}` body (the mapping of TF Serving's http_server.cc) and a `StatusProto`.
"""

from __future__ import annotations

import re

import grpc
import tensorflow as tf
from tensorflow_serving.apis import status_pb2

# http_server.cc: ToHTTPStatusCode.
_HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
# Messages are cut here: gRPC clients refuse status metadata over 8 KiB, and no one reads more.
MAX_MESSAGE_CHARS = 2000
# TensorFlow's additions to an op's own message: the node, the function, the Python stack that built it.
_TF_NOISE = re.compile(r"\s*\[\[\{\{node [^}]*\}\}\]\]|\s*\[Op:[^\]]*\]|\s*\(defined at [^)]*\)")


class ServingError(Exception):
    """A failed request or load, with the canonical code TF Serving would return."""

    def __init__(self, code: grpc.StatusCode, message: str):
        message = message.encode("utf-8", "backslashreplace").decode()  # a lone surrogate as \\ud800
        if len(message) > MAX_MESSAGE_CHARS:
            message = f"{message[:MAX_MESSAGE_CHARS]}...({len(message) - MAX_MESSAGE_CHARS} more characters)"
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        """The HTTP status TF Serving's REST API answers with for this code."""
        return _HTTP_STATUS[self.code]

    @property
    def code_name(self) -> str:
        """The code's name as in tensorflow.error.Code: `NOT_FOUND`, `INVALID_ARGUMENT`, ..."""
        return self.code.name

    def to_status_proto(self) -> status_pb2.StatusProto:
        return status_pb2.StatusProto(error_code=self.code.value[0], error_message=self.message)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


def invalid_argument(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def failed_precondition(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.FAILED_PRECONDITION, message)


def permission_denied(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.PERMISSION_DENIED, message)


def unimplemented(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.UNIMPLEMENTED, message)


def unavailable(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.UNAVAILABLE, message)


def internal(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INTERNAL, message)


def model_message(message: str) -> str:
    """What a TensorFlow runtime error says about the input, without the graph's internals (`Graph execution
    error`, `Detected at node ... defined at`, the Python stack, `[[{{node ...}}]]`, `[Op:__inference_...]`)
    and without the data an assertion prints after its message."""
    lines = _TF_NOISE.sub("", message).splitlines()
    if lines and lines[0].startswith("Graph execution error"):
        lines = [line for line in lines[1:] if line.strip() and not line[:1].isspace()
                 and not line.startswith(("Detected at node", "<stack traces unavailable>"))]
    text = "\n".join(lines).strip() or "the model failed on this input"
    assertion = re.match(r"assertion failed: \[(.*?)\](?: \[|$)", text, re.DOTALL)
    return assertion.group(1) if assertion else text


def from_tf_error(error: tf.errors.OpError) -> ServingError:
    """A TensorFlow runtime error with its own canonical code (TF and gRPC share the numbering)."""
    return ServingError(_BY_NUMBER.get(error.error_code, grpc.StatusCode.UNKNOWN), model_message(error.message))


def as_serving_error(error: BaseException) -> ServingError:
    """Any exception raised while serving a request, as the status the client gets."""
    if isinstance(error, ServingError):
        return error
    if isinstance(error, tf.errors.OpError):
        return from_tf_error(error)
    return ServingError(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")

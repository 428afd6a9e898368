"""Scoring images on a TF Serving endpoint (REST or gRPC: TF Serving's predict and metadata APIs, as
serving/ implements them): image bytes in batches, bounded concurrency, retries with exponential
backoff, per-request timeouts. `RestScorer` and `GrpcScorer` turn a batch of images into predictions;
serving.client's RestClient and GrpcClient, by contrast, make one plain API call each (no retries, no
isolation) for tests, benches and its command line.

- REST: `POST .../v1/models/NAME/versions/V:predict` with `{"instances": [{"b64": ...}, ...]}`
  (TensorFlow-free: requests, json, base64).
- gRPC: `PredictionService.Predict` with a DT_STRING TensorProto (tensorflow_serving.apis; its protos
  import TensorFlow).

Retryable: connection errors and timeouts, HTTP 429/503/504, gRPC UNAVAILABLE, RESOURCE_EXHAUSTED and
DEADLINE_EXCEEDED. A 400 / INVALID_ARGUMENT is about the inputs: the batch is bisected down to the
images that fail (`results.isolate`). Anything else, or a retryable failure that outlasts the retries,
fails the job with the endpoint's message: an endpoint that is down is not an input error.

The version is pinned: the driver resolves the endpoint's version once (a label or "latest" too) and
every request names it, so all rows of a run come from one model version.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from components.artifacts import IMAGE_INPUT, OUTPUT_KEYS, PROBABILITIES, SERVING_SIGNATURE
from components.batch_predict.results import InputError, isolate, predictions_from_outputs
from components.config import BatchPredictConfig

logger = logging.getLogger(__name__)

RETRYABLE_HTTP = {429, 503, 504}
RETRYABLE_GRPC = ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED")
_REST = re.compile(r"^(?P<scheme>https?)://(?P<host>[^/]+)/v1/models/(?P<name>[^/:]+)"
                   r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?/?$")
_GRPC = re.compile(r"^(?P<scheme>grpcs?)://(?P<host>[^/]+)/(?P<name>[^/:]+)"
                   r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?/?$")

T = TypeVar("T")


class EndpointError(RuntimeError):
    """The endpoint failed in a way no retry or input isolation fixes; the message says how."""


class RetryableError(Exception):
    """A failure worth retrying (connection, overload, timeout)."""


@dataclass(frozen=True)
class Endpoint:
    """A served model: protocol, host:port, name, and the version (pinned) or label requested."""

    protocol: str  # "rest" | "grpc"
    host: str
    name: str
    version: str = ""
    label: str = ""
    secure: bool = False
    input_name: str = IMAGE_INPUT

    @property
    def url(self) -> str:
        """The REST model URL: .../v1/models/NAME[/versions/V | /labels/L]."""
        scheme = "https" if self.secure else "http"
        suffix = f"/versions/{self.version}" if self.version else f"/labels/{self.label}" if self.label else ""
        return f"{scheme}://{self.host}/v1/models/{self.name}{suffix}"

    def describe(self) -> str:
        if self.protocol == "rest":
            return self.url
        suffix = f"/versions/{self.version}" if self.version else f"/labels/{self.label}" if self.label else ""
        return f"{'grpcs' if self.secure else 'grpc'}://{self.host}/{self.name}{suffix}"


def parse_endpoint(uri: str) -> Endpoint | None:
    """An Endpoint for http(s)://host:port/v1/models/NAME[/versions/N|/labels/L] or
    grpc(s)://host:port/NAME[/versions/N|/labels/L]; None for anything else."""
    for protocol, pattern in (("rest", _REST), ("grpc", _GRPC)):
        match = pattern.match(uri)
        if match:
            return Endpoint(protocol, match["host"], match["name"], match["version"] or "", match["label"] or "",
                            secure=match["scheme"] in ("https", "grpcs"))
    return None


def with_retries(call: Callable[[], T], settings: BatchPredictConfig, what: str) -> T:
    """`call()`, retried on RetryableError with exponential backoff (jittered, capped)."""
    for attempt in range(settings.remote_retries + 1):
        try:
            return call()
        except RetryableError as e:
            if attempt == settings.remote_retries:
                raise EndpointError(f"{what}: still failing after {attempt + 1} attempts: {e}") from e
            delay = min(settings.remote_max_backoff_seconds, settings.remote_backoff_seconds * 2 ** attempt)
            delay *= random.uniform(0.5, 1.0)
            logger.warning("%s failed (%s); retry %d/%d in %.2f s", what, e, attempt + 1, settings.remote_retries,
                           delay)
            _count("remote_retries")
            time.sleep(delay)
    raise AssertionError("unreachable")


def resolve(endpoint: Endpoint, settings: BatchPredictConfig) -> Endpoint:
    """Asks the endpoint for its model metadata (driver side): checks that `serving_default` takes
    one string input and has our outputs, and pins the version it serves. A clear error otherwise."""
    version, inputs, outputs = (_rest_metadata if endpoint.protocol == "rest" else _grpc_metadata)(endpoint, settings)
    if len(inputs) != 1 or next(iter(inputs.values())) != "DT_STRING":
        raise EndpointError(f"{endpoint.describe()}: {SERVING_SIGNATURE} must take one DT_STRING input (image bytes), "
                            f"it takes {inputs}")
    missing = sorted(set(OUTPUT_KEYS) - set(outputs))
    if missing:
        raise EndpointError(f"{endpoint.describe()}: {SERVING_SIGNATURE} has no output(s) {missing} "
                            f"(outputs: {sorted(outputs)}); serve a cvpipe export")
    return replace(endpoint, version=version or endpoint.version, label="" if version else endpoint.label,
                   input_name=next(iter(inputs)))


class _Scorer:
    """Splits a batch into requests of `batch_size` images, sends them on a per-process pool of
    `remote_max_concurrent_requests` threads, retries and isolates failures."""

    def __init__(self, endpoint: Endpoint, settings: BatchPredictConfig, top_k: int, probabilities: bool):
        self._endpoint = endpoint
        self._settings = settings
        self._top_k = top_k
        self._probabilities = probabilities
        self._pool = ThreadPoolExecutor(settings.remote_max_concurrent_requests, thread_name_prefix="cvpipe-remote")

    def score(self, images: Sequence[bytes]) -> list:
        size = self._settings.batch_size
        chunks = [list(images[i:i + size]) for i in range(0, len(images), size)]
        pending = [self._pool.submit(self._score_chunk, chunk) for chunk in chunks]
        try:
            return [result for future in pending for result in future.result()]
        except BaseException:
            for future in pending:  # a failed element sends no more requests
                future.cancel()
            raise

    def _score_chunk(self, images: list[bytes]) -> list:
        return isolate(images, lambda batch: with_retries(lambda: self._predict(batch), self._settings,
                                                          f"predict on {self._endpoint.describe()}"))

    def _predictions(self, outputs: dict[str, np.ndarray], count: int) -> list:
        missing = sorted(set(OUTPUT_KEYS) - set(outputs))
        if missing:
            raise EndpointError(f"{self._endpoint.describe()} answered without the output(s) {missing}")
        predictions = predictions_from_outputs(outputs, self._top_k, self._probabilities)
        if len(predictions) != count:
            raise EndpointError(f"{self._endpoint.describe()} returned {len(predictions)} predictions for "
                                f"{count} images")
        return predictions

    def _predict(self, images: list[bytes]) -> list:
        raise NotImplementedError


class RestScorer(_Scorer):
    """TF Serving's REST predict API, through one keep-alive connection pool per process."""

    def __init__(self, endpoint: Endpoint, settings: BatchPredictConfig, top_k: int, probabilities: bool):
        import requests
        from requests.adapters import HTTPAdapter

        super().__init__(endpoint, settings, top_k, probabilities)
        self._requests = requests
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=settings.remote_max_concurrent_requests, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._url = endpoint.url + ":predict"

    def _predict(self, images: list[bytes]) -> list:
        body = ('{"signature_name":"%s","instances":[' % SERVING_SIGNATURE
                + ",".join('{"b64":"%s"}' % base64.b64encode(image).decode("ascii") for image in images) + "]}")
        try:
            response = self._session.post(self._url, data=body.encode("ascii"),
                                          headers={"Content-Type": "application/json"},
                                          timeout=self._settings.remote_timeout_seconds)
        except (self._requests.ConnectionError, self._requests.Timeout) as e:
            raise RetryableError(f"{type(e).__name__}: {e}") from e
        if response.status_code != 200:
            message = _rest_error(response)
            if response.status_code in RETRYABLE_HTTP:
                raise RetryableError(f"HTTP {response.status_code}: {message}")
            if response.status_code == 400:
                raise InputError(message)
            raise EndpointError(f"{self._url} answered HTTP {response.status_code}: {message}")
        try:
            rows = json.loads(response.content)["predictions"]
            outputs = {key: np.asarray([row[key] for row in rows]) for key in OUTPUT_KEYS}
        except (ValueError, KeyError, TypeError) as e:
            raise EndpointError(f"{self._url}: unexpected predict response ({e}): {response.text[:200]}") from e
        outputs[PROBABILITIES] = outputs[PROBABILITIES].astype(np.float32)
        return self._predictions(outputs, len(images))


class GrpcScorer(_Scorer):
    """TF Serving's gRPC PredictionService, one channel per process (message size limits raised)."""

    def __init__(self, endpoint: Endpoint, settings: BatchPredictConfig, top_k: int, probabilities: bool):
        import grpc
        import tensorflow as tf  # the serving protos import it anyway; make_tensor_proto/make_ndarray
        from tensorflow_serving.apis import predict_pb2

        super().__init__(endpoint, settings, top_k, probabilities)
        self._grpc, self._tf, self._predict_pb2 = grpc, tf, predict_pb2
        self._stub = _grpc_stub(endpoint)

    def _predict(self, images: list[bytes]) -> list:
        request = self._predict_pb2.PredictRequest()
        _model_spec(request.model_spec, self._endpoint)
        request.model_spec.signature_name = SERVING_SIGNATURE
        request.inputs[self._endpoint.input_name].CopyFrom(
            self._tf.make_tensor_proto(images, dtype=self._tf.string, shape=[len(images)]))
        try:
            response = self._stub.Predict(request, timeout=self._settings.remote_timeout_seconds)
        except self._grpc.RpcError as e:
            code = e.code().name if e.code() else "UNKNOWN"
            if code in RETRYABLE_GRPC:
                raise RetryableError(f"{code}: {e.details()}") from e
            if code == "INVALID_ARGUMENT":
                raise InputError(e.details() or code) from e
            raise EndpointError(f"{self._endpoint.describe()} answered {code}: {e.details()}") from e
        outputs = {key: self._tf.make_ndarray(tensor) for key, tensor in response.outputs.items()}
        return self._predictions(outputs, len(images))


def make_scorer(endpoint: Endpoint, settings: BatchPredictConfig, top_k: int, probabilities: bool) -> _Scorer:
    """The scorer of the endpoint's protocol."""
    return (RestScorer if endpoint.protocol == "rest" else GrpcScorer)(endpoint, settings, top_k, probabilities)


def _rest_error(response) -> str:
    try:
        return str(json.loads(response.content)["error"])
    except (ValueError, KeyError, TypeError):
        return response.text[:500]


def _rest_metadata(endpoint: Endpoint, settings: BatchPredictConfig) -> tuple[str, dict[str, str], set[str]]:
    import requests

    url = endpoint.url + "/metadata"

    def get() -> dict[str, Any]:
        try:
            response = requests.get(url, timeout=settings.remote_timeout_seconds)
        except (requests.ConnectionError, requests.Timeout) as e:
            raise RetryableError(f"{type(e).__name__}: {e}") from e
        if response.status_code in RETRYABLE_HTTP:
            raise RetryableError(f"HTTP {response.status_code}: {_rest_error(response)}")
        if response.status_code != 200:
            raise EndpointError(f"{url} answered HTTP {response.status_code}: {_rest_error(response)}")
        return response.json()

    metadata = with_retries(get, settings, f"model metadata from {url}")
    try:
        signature = metadata["metadata"]["signature_def"]["signature_def"][SERVING_SIGNATURE]
        inputs = {name: spec.get("dtype", "") for name, spec in signature["inputs"].items()}
        outputs = set(signature.get("outputs", {}))
    except (KeyError, TypeError, AttributeError) as e:
        raise EndpointError(f"{url}: no {SERVING_SIGNATURE} signature in the model metadata ({e})") from e
    return str(metadata.get("model_spec", {}).get("version", "") or ""), inputs, outputs


def _grpc_metadata(endpoint: Endpoint, settings: BatchPredictConfig) -> tuple[str, dict[str, str], set[str]]:
    import grpc
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2

    stub = _grpc_stub(endpoint)
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    _model_spec(request.model_spec, endpoint)
    request.metadata_field.append("signature_def")

    def get():
        try:
            return stub.GetModelMetadata(request, timeout=settings.remote_timeout_seconds)
        except grpc.RpcError as e:
            code = e.code().name if e.code() else "UNKNOWN"
            if code in RETRYABLE_GRPC:
                raise RetryableError(f"{code}: {e.details()}") from e
            raise EndpointError(f"{endpoint.describe()}: GetModelMetadata answered {code}: {e.details()}") from e

    response = with_retries(get, settings, f"model metadata from {endpoint.describe()}")
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    if SERVING_SIGNATURE not in signatures.signature_def:
        raise EndpointError(f"{endpoint.describe()}: no {SERVING_SIGNATURE} signature in the model metadata")
    signature = signatures.signature_def[SERVING_SIGNATURE]
    inputs = {name: types_pb2.DataType.Name(info.dtype) for name, info in signature.inputs.items()}
    version = response.model_spec.version.value if response.model_spec.HasField("version") else 0
    return (str(version) if version else ""), inputs, set(signature.outputs)


def _grpc_stub(endpoint: Endpoint):
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    channel = (grpc.secure_channel(endpoint.host, grpc.ssl_channel_credentials(), options) if endpoint.secure
               else grpc.insecure_channel(endpoint.host, options))
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _model_spec(spec, endpoint: Endpoint) -> None:
    spec.name = endpoint.name
    if endpoint.version:
        spec.version.value = int(endpoint.version)
    elif endpoint.label:
        spec.version_label = endpoint.label


def _count(name: str) -> None:
    try:
        import apache_beam as beam

        beam.metrics.Metrics.counter("batch_predict", name).inc()
    except Exception:  # outside a pipeline
        pass

"""TF Serving's HTTP/REST API on aiohttp (http_rest_api_handler.cc, http_rest_api_util.cc, http_server.cc).

  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]            status
  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata   metadata (SignatureDefMap)
  POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict|:classify|:regress
  GET  <prometheus path>                                         metrics, when a monitoring config enables them

Errors are `{"error": message}` with TF Serving's HTTP mapping of the status code. Beyond TF
Serving: bodies over `--rest_api_max_body_bytes` (counted after decompression) get 413, a
Content-Encoding other than gzip, deflate or identity 415, a body that does not decompress 400, a body
stalled for `--rest_api_body_timeout_seconds` 408; JSON is parsed within `JsonLimits`; paths outside
/v1/ get 404 JSON; a status request by label answers for the labelled version.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import urllib.parse
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, Callable

import grpc
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from google.protobuf import json_format
from tensorflow_serving.apis import model_pb2

from serving import inference, json_tensor, request_logging
from serving.core import RequestTimer, ServingCore, deadline, result
from serving.errors import ServingError, as_serving_error, invalid_argument
from serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from serving.servable import Servable

logger = logging.getLogger(__name__)

_PREDICTION = re.compile(r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
                         re.IGNORECASE)
_STATUS = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
                     re.IGNORECASE)
_API_PATH = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
_JSON = "application/json"
_ENCODINGS = ("", "identity", "gzip", "deflate")  # Content-Encodings a body may have (aiohttp decodes them)
_BODY_STATUS_CODES = {413: grpc.StatusCode.RESOURCE_EXHAUSTED, 408: grpc.StatusCode.DEADLINE_EXCEEDED}


class _BodyError(Exception):
    """A request body that cannot be read: its HTTP status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Route:
    """A parsed REST path: model, optional version or label, and what is asked of it."""

    action: str  # predict | classify | regress | status | metadata | "" (malformed)
    model: str = ""
    version: int | None = None
    label: str | None = None

    def model_spec(self) -> model_pb2.ModelSpec:
        spec = model_pb2.ModelSpec(name=self.model)
        if self.version is not None:
            spec.version.value = self.version
        if self.label is not None:
            spec.version_label = self.label
        return spec


def parse_route(method: str, path: str) -> Route:
    """The route of a /v1/ request (ParseModelInfo); `action` is '' when TF Serving calls it malformed."""
    if method == "POST":
        match = _PREDICTION.fullmatch(path)
        action = match and match.group(4)
    elif method == "GET":
        match = _STATUS.fullmatch(path)
        action = match and ("metadata" if match.group(4) == "metadata" else "status")
    else:
        match = action = None
    if not match:
        return Route("")
    name, version, label = match.group(1), match.group(2), match.group(3)
    if version is not None:
        number = int(version)
        if number >= 2**63:
            raise invalid_argument(f"Failed to convert version: {version} to numeric.")
        version = number
    return Route(action if action in ("predict", "classify", "regress", "status", "metadata") else "",
                 urllib.parse.unquote(name or ""), version,
                 urllib.parse.unquote(label) if label is not None else None)


def _json_response(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type=_JSON)


class RestApi:
    """The request handlers; `app()` is the aiohttp application serving them."""

    def __init__(self, core: ServingCore, executor: Executor, timeout_seconds: float | None, max_body_bytes: int,
                 metrics_path: str | None, *, body_timeout_seconds: float = 10.0,
                 json_limits: json_tensor.JsonLimits = json_tensor.JsonLimits(), max_instances: int | None = None):
        self._core = core
        self._executor = executor
        self._timeout = timeout_seconds
        self._max_body = max_body_bytes
        self._metrics_path = metrics_path
        self._body_timeout = body_timeout_seconds
        self._json_limits = json_limits
        self._max_instances = max_instances

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self._max_body)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    async def _read_body(self, request: web.Request) -> bytes:
        """The whole (decoded) body; _BodyError when too large, stalled, badly encoded or undecodable."""
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in _ENCODINGS:
            raise _BodyError(415, f"Unsupported Content-Encoding: {encoding[:40]!r}: send the body as it is, "
                                  f"or gzip or deflate it")
        too_big = _BodyError(413, f"Request body larger than {self._max_body} bytes: send smaller batches, image "
                                  f"bytes instead of pixel arrays, or raise --rest_api_max_body_bytes")
        if (request.content_length or 0) > self._max_body:
            raise too_big
        body = bytearray()
        try:
            while True:
                chunk = await asyncio.wait_for(request.content.readany(), self._body_timeout)
                if not chunk:
                    return bytes(body)
                body += chunk
                if len(body) > self._max_body:
                    raise too_big
        except TimeoutError as e:
            raise _BodyError(408, f"Request body stalled: nothing received for {self._body_timeout:g} s after "
                                  f"{len(body)} bytes (--rest_api_body_timeout_seconds)") from e
        except (HttpProcessingError, RequestPayloadError) as e:  # does not decompress, broken chunked encoding
            detail = " ".join(str(getattr(e, "message", "") or e).split())[:200] or type(e).__name__
            raise _BodyError(400, f"Request body cannot be read: {detail} (Content-Encoding "
                                  f"{encoding or 'identity'})") from e

    async def _dispatch(self, request: web.Request) -> web.Response:
        path = request.rel_url.raw_path
        if self._metrics_path is not None and path == self._metrics_path:
            return web.Response(text=self._core.metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})
        if not _API_PATH.fullmatch(path):
            return _json_response(json_tensor.error_body(
                f"No handler for {request.method} {path[:200]}: the REST API is under /v1/models/"), 404)
        timer = RequestTimer(self._core.metrics, "", "REST")
        try:
            body = await self._read_body(request)
        except _BodyError as e:
            timer.api = "rejected"
            timer.done(ServingError(_BODY_STATUS_CODES.get(e.status, grpc.StatusCode.INVALID_ARGUMENT), e.message))
            response = _json_response(json_tensor.error_body(e.message), e.status)
            response.force_close()  # the body was not read whole: the connection cannot be reused
            if e.status in (400, 408):  # nothing more of this body will be read: close now, do not linger
                request.content.feed_eof()
            return response
        try:
            route = parse_route(request.method, path)
            timer.api = route.action or "malformed"
            if not route.action:
                raise invalid_argument(f"Malformed request: {request.method} {path[:200]}")
            handler = {
                "predict": self._predict, "status": self._status, "metadata": self._metadata,
                "classify": functools.partial(self._examples, inference.classify, json_tensor.classify_response),
                "regress": functools.partial(self._examples, inference.regress, json_tensor.regress_response),
            }[route.action]
            response = await handler(route, body, timer)
        except Exception as e:  # every failure is a JSON error with its status code
            error = as_serving_error(e)
            if error.http_status >= 500:
                logger.warning("REST %s %s failed: %s", request.method, path[:200], error,
                               exc_info=not isinstance(e, ServingError))
            timer.done(error)
            return _json_response(json_tensor.error_body(error.message), error.http_status)
        timer.done()
        return response

    def _resolve(self, route: Route, timer: RequestTimer) -> Servable:
        """The servable the route names; counted under its model from then on (made-up names never become
        metric labels)."""
        if not route.model:
            raise invalid_argument("Missing model name in request.")
        servable = self._core.manager.resolve(route.model_spec())
        timer.model = servable.name
        return servable

    def _decode_predict(self, route: Route, body: bytes, timer: RequestTimer) -> tuple[inference.PredictCall, bool, str]:
        """The prepared call, whether the body was in the row format, and the request's signature_name."""
        doc = json_tensor.parse_json(body, self._json_limits)
        name = json_tensor.signature_name(doc)
        servable = self._resolve(route, timer)
        key = inference.signature_key(name)
        signature = servable.signatures.get(key)
        if signature is None:
            raise invalid_argument(f'Serving signature name: "{key}" not found in signature def')
        timer.signature = key
        inputs, row_format = json_tensor.predict_inputs(doc, signature.definition.inputs, name)
        call = inference.prepare_predict(servable, name, inputs, max_instances=self._max_instances)
        return call, row_format, name

    def _start_predict(self, route: Route, body: bytes, timer: RequestTimer) -> bytes | tuple[Future, Callable]:
        """Decodes a :predict; runs and encodes it here, or enqueues it for batching (its future, and what
        encodes its outputs)."""
        call, row_format, signature_name = self._decode_predict(route, body, timer)

        def encode(outputs: dict) -> bytes:
            spec = route.model_spec()
            spec.signature_name = signature_name
            self._core.log_predict(call, lambda: request_logging.predict_request(spec, call.inputs),
                                   lambda: inference.predict_response(call, outputs))
            return json_tensor.predict_response(outputs, row_format)

        batch = self._core.enqueue(call)
        if batch is None:
            return encode(inference.run_predict(call))
        return batch, encode

    async def _predict(self, route: Route, body: bytes, timer: RequestTimer) -> web.Response:
        until = deadline(self._timeout)
        started = await result(self._executor.submit(self._start_predict, route, body, timer), until)
        if isinstance(started, bytes):
            return _json_response(started)
        batch, encode = started
        return _json_response(encode(await result(batch, until)))

    async def _examples(self, method: Callable, encode: Callable[[Any], bytes], route: Route, body: bytes,
                        timer: RequestTimer) -> web.Response:
        """:classify or :regress: `method` (inference.classify/regress) on the body's examples."""
        def run() -> bytes:
            doc = json_tensor.parse_json(body, self._json_limits)
            name = json_tensor.signature_name(doc)
            examples = json_tensor.examples_input(doc)
            servable = self._resolve(route, timer)
            if inference.signature_key(name) in servable.signatures:
                timer.signature = inference.signature_key(name)
            return encode(method(servable, name, examples).result)
        return _json_response(await result(self._executor.submit(run), deadline(self._timeout)))

    async def _status(self, route: Route, body: bytes, timer: RequestTimer) -> web.Response:
        if not route.model:
            raise invalid_argument("Missing model name in request.")
        response = self._core.manager.model_status(route.model, route.version, route.label)
        timer.model = route.model
        return _json_response(json_format.MessageToJson(
            response, always_print_fields_with_no_presence=True, indent=1).encode())

    async def _metadata(self, route: Route, body: bytes, timer: RequestTimer) -> web.Response:
        servable = self._resolve(route, timer)
        return _json_response(metadata_json(servable))


def metadata_json(servable: Servable) -> bytes:
    """The REST metadata body: model_spec and the SignatureDefMap, proto field names kept (ToJsonString)."""
    spec = model_pb2.ModelSpec(name=servable.name)
    spec.version.value = servable.version
    signature_map = servable.signature_def_map()
    options = {"always_print_fields_with_no_presence": True, "preserving_proto_field_name": True, "indent": 1}
    return ('{\n"model_spec":' + json_format.MessageToJson(spec, **options) + ',\n"metadata": {"signature_def": '
            + json_format.MessageToJson(signature_map, **options) + "}\n}\n").encode()

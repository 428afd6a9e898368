"""TF Serving's gRPC API: `tensorflow.serving.PredictionService` and `ModelService` on grpc.aio.

The servicers subclass the generated ones of tensorflow-serving-api; statuses and messages are
TF Serving's (prediction_service_impl.cc, get_model_metadata_impl.cc, model_service_impl.cc).
Request tensors are read with `tf.make_ndarray`; response tensors carry their values in the typed
fields (`float_val`, ...), as TF Serving's do.
"""

from __future__ import annotations

import functools
import logging
from concurrent.futures import Executor, Future
from typing import Any, Awaitable, Callable

import grpc
from google.protobuf import message
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2, inference_pb2,
                                     model_management_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)
from tensorflow_serving.config import model_server_config_pb2

from serving import inference
from serving.core import RequestTimer, ServingCore, deadline, in_thread, result
from serving.errors import ServingError, as_serving_error, invalid_argument
from serving.servable import Servable

logger = logging.getLogger(__name__)

SIGNATURE_DEF_FIELD = "signature_def"
MAX_MESSAGE_BYTES = 2**31 - 1  # TF Serving: builder.SetMaxMessageSize(kint32max)

Handler = Callable[[Any, Any, grpc.aio.ServicerContext, RequestTimer], Awaitable[Any]]


class _Undecodable:
    """A request whose bytes are not its message (gRPC itself would end the call with UNKNOWN)."""

    def __init__(self, kind: str, error: Exception):
        self.message = f"the request is not a valid {kind}: {str(error)[:200]}"


def _parser(cls: type[message.Message]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except (message.DecodeError, UnicodeDecodeError, ValueError) as e:
            return _Undecodable(cls.DESCRIPTOR.full_name, e)
    return parse


def _rpc(api: str) -> Callable[[Handler], Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]]:
    """Counts and times the RPC; any failure ends it with its canonical status and message."""
    def decorate(method: Handler):
        @functools.wraps(method)
        async def handler(self, request, context: grpc.aio.ServicerContext):
            timer = RequestTimer(self._core.metrics, api, "GRPC")
            try:
                if isinstance(request, _Undecodable):
                    raise invalid_argument(request.message)
                response = await method(self, request, context, timer)
            except Exception as e:  # reported to the client, never raised in the server
                error = as_serving_error(e)
                if error.http_status >= 500:
                    logger.warning("gRPC %s failed: %s", api, error, exc_info=not isinstance(e, ServingError))
                timer.done(error)
                await context.abort(error.code, error.message)
            timer.done()
            return response
        return handler
    return decorate


def _spec_of(request: Any) -> Any:
    if not request.HasField("model_spec"):
        raise invalid_argument("Missing ModelSpec")
    return request.model_spec


def _resolve(core: ServingCore, spec: Any, timer: RequestTimer, signature: str | None = "") -> Servable:
    """The servable `spec` names; the timer counts the request under its model (and signature) from then on,
    so names a client makes up never become metric labels."""
    servable = core.manager.resolve(spec)
    timer.model = servable.name
    if signature is not None and inference.signature_key(signature) in servable.signatures:
        timer.signature = inference.signature_key(signature)
    return servable


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, Classify, Regress, MultiInference and GetModelMetadata."""

    def __init__(self, core: ServingCore, executor: Executor, max_instances: int | None = None):
        self._core = core
        self._executor = executor
        self._max_instances = max_instances

    def _prepare_predict(self, request: predict_pb2.PredictRequest, timer: RequestTimer) -> inference.PredictCall:
        spec = _spec_of(request)
        servable = _resolve(self._core, spec, timer, spec.signature_name)
        return inference.prepare_predict_request(servable, request, self._max_instances)

    def _start_predict(self, request: predict_pb2.PredictRequest,
                       timer: RequestTimer) -> predict_pb2.PredictResponse | tuple[Future, inference.PredictCall]:
        """Decodes a Predict; runs it here, or enqueues it for batching (its future and call)."""
        call = self._prepare_predict(request, timer)
        batch = self._core.enqueue(call)
        if batch is None:
            return self._logged(request, call, inference.predict_response(call, inference.run_predict(call)))
        return batch, call

    def _logged(self, request: predict_pb2.PredictRequest, call: inference.PredictCall,
                response: predict_pb2.PredictResponse) -> predict_pb2.PredictResponse:
        self._core.log_predict(call, lambda: request, lambda: response)
        return response

    @_rpc("predict")
    async def Predict(self, request, context, timer):
        until = deadline(context.time_remaining())
        started = await result(self._executor.submit(self._start_predict, request, timer), until)
        if isinstance(started, predict_pb2.PredictResponse):
            return started
        batch, call = started
        return self._logged(request, call, inference.predict_response(call, await result(batch, until)))

    def _run(self, request: Any, timer: RequestTimer, run: Callable[[Servable], Any]) -> Any:
        spec = _spec_of(request)
        return run(_resolve(self._core, spec, timer, spec.signature_name))

    @_rpc("classify")
    async def Classify(self, request, context, timer):
        return await result(self._executor.submit(self._run, request, timer, lambda servable: inference.classify(
            servable, request.model_spec.signature_name, request.input)), deadline(context.time_remaining()))

    @_rpc("regress")
    async def Regress(self, request, context, timer):
        return await result(self._executor.submit(self._run, request, timer, lambda servable: inference.regress(
            servable, request.model_spec.signature_name, request.input)), deadline(context.time_remaining()))

    @_rpc("multi_inference")
    async def MultiInference(self, request, context, timer):
        def run():
            if not request.tasks:
                raise invalid_argument("MultiInferenceRequest has no tasks: add at least one")
            spec = request.tasks[0].model_spec
            return inference.multi_inference(_resolve(self._core, spec, timer, None), request)
        return await result(self._executor.submit(run), deadline(context.time_remaining()))

    @_rpc("get_model_metadata")
    async def GetModelMetadata(self, request, context, timer):
        spec = _spec_of(request)
        if not request.metadata_field:
            raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != SIGNATURE_DEF_FIELD:
                raise invalid_argument(f"Metadata field {field} is not supported")
        servable = _resolve(self._core, spec, timer, None)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.metadata[SIGNATURE_DEF_FIELD].Pack(servable.signature_def_map())
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus and HandleReloadConfigRequest."""

    def __init__(self, core: ServingCore, executor: Executor,
                 reload_config: Callable[[model_server_config_pb2.ModelServerConfig], None]):
        self._core = core
        self._executor = executor
        self._reload_config = reload_config

    @_rpc("get_model_status")
    async def GetModelStatus(self, request, context, timer):
        spec = _spec_of(request)
        choice = spec.WhichOneof("version_choice")
        response = self._core.manager.model_status(spec.name, spec.version.value if choice == "version" else None,
                                                    spec.version_label if choice == "version_label" else None)
        timer.model = spec.name
        return response

    @_rpc("reload_config")
    async def HandleReloadConfigRequest(self, request, context, timer):
        await in_thread(self._executor, self._reload_config, request.config)
        return model_management_pb2.ReloadConfigResponse()


# Each service's methods with their request and response messages, as the generated add_*_to_server has them.
_METHODS = {
    "PredictionService": {
        "Classify": (classification_pb2.ClassificationRequest, classification_pb2.ClassificationResponse),
        "Regress": (regression_pb2.RegressionRequest, regression_pb2.RegressionResponse),
        "Predict": (predict_pb2.PredictRequest, predict_pb2.PredictResponse),
        "MultiInference": (inference_pb2.MultiInferenceRequest, inference_pb2.MultiInferenceResponse),
        "GetModelMetadata": (get_model_metadata_pb2.GetModelMetadataRequest,
                             get_model_metadata_pb2.GetModelMetadataResponse),
    },
    "ModelService": {
        "GetModelStatus": (get_model_status_pb2.GetModelStatusRequest, get_model_status_pb2.GetModelStatusResponse),
        "HandleReloadConfigRequest": (model_management_pb2.ReloadConfigRequest,
                                      model_management_pb2.ReloadConfigResponse),
    },
}


def _generic_handler(service: str, servicer: Any) -> grpc.GenericRpcHandler:
    """The service's methods on `servicer`, registered as the generated add_*_to_server does, except that a
    request that does not parse reaches the method (as `_Undecodable`) to be refused with INVALID_ARGUMENT."""
    handlers = {name: grpc.unary_unary_rpc_method_handler(getattr(servicer, name), request_deserializer=_parser(request),
                                                          response_serializer=response.SerializeToString)
                for name, (request, response) in _METHODS[service].items()}
    return grpc.method_handlers_generic_handler(f"tensorflow.serving.{service}", handlers)


def add_services(server: grpc.aio.Server, core: ServingCore, executor: Executor,
                 reload_config: Callable[[model_server_config_pb2.ModelServerConfig], None],
                 max_instances: int | None = None) -> None:
    """Registers both services on `server`; `reload_config` serves (or refuses) HandleReloadConfigRequest."""
    server.add_generic_rpc_handlers((
        _generic_handler("PredictionService", PredictionService(core, executor, max_instances)),
        _generic_handler("ModelService", ModelService(core, executor, reload_config)),
    ))

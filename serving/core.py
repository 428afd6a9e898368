"""What the REST and gRPC front ends share: the model manager, batching, metrics, deadlines.

Front ends run on one asyncio loop. A request is decoded on a worker thread of its front end's
pool, which also runs and encodes it when it is not batched (one thread hop); a batched request
waits for its batch thread, then is encoded on the loop. The loop itself only moves bytes.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor, Future
from typing import Any, Callable, TypeVar

import grpc
from tensorflow_serving.apis import predict_pb2

from serving.batching import BatchScheduler
from serving.errors import ServingError, invalid_argument
from serving.inference import PredictCall, model_spec
from serving.manager import ModelManager
from serving.metrics import ServingMetrics
from serving.request_logging import RequestLogging

T = TypeVar("T")


class ServingCore:
    """The model manager, the optional batch scheduler, the request logs and the metrics, behind one interface."""

    def __init__(self, manager: ModelManager, metrics: ServingMetrics, batcher: BatchScheduler | None,
                 request_logging: RequestLogging | None = None):
        self.manager = manager
        self.metrics = metrics
        self._batcher = batcher
        self._request_logging = request_logging

    def log_predict(self, call: PredictCall, request: Callable[[], predict_pb2.PredictRequest],
                    response: Callable[[], predict_pb2.PredictResponse]) -> None:
        """Offers a successful Predict to its model's request log (sampled; the protos are built off the
        request path)."""
        if self._request_logging is not None:
            self._request_logging.log_predict(model_spec(call.servable, call.signature.name), request, response)

    def enqueue(self, call: PredictCall) -> Future | None:
        """Hands a prepared Predict to the batch scheduler when batching is on and its signature has a batch
        dimension; returns the future of its outputs, or None when the caller is to run it unbatched."""
        if self._batcher is None or not call.signature.batchable:
            return None
        values = list(call.inputs.values())
        if any(value.ndim == 0 for value in values):
            raise invalid_argument("Batching Run() input tensors must have at least one dimension")
        if len({value.shape[0] for value in values}) > 1:
            raise invalid_argument("Batching Run() input tensors must have equal 0th-dimension size")
        return self._batcher.submit(call, values[0].shape[0])


async def in_thread(executor: Executor, function: Callable[..., T], *args: Any) -> T:
    """Runs blocking work on `executor` from the event loop."""
    return await asyncio.get_running_loop().run_in_executor(executor, function, *args)


def deadline(seconds: float | None) -> float | None:
    """The monotonic time a request started now must be answered by (None: no limit)."""
    return None if seconds is None else time.monotonic() + seconds


async def result(future: Future, until: float | None) -> Any:
    """Awaits a worker's future; past the `until` deadline the request fails with DEADLINE_EXCEEDED (and
    is dropped if it has not started running)."""
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future),
                                      None if until is None else max(0.0, until - time.monotonic()))
    except TimeoutError as e:
        raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from e


class RequestTimer:
    """Times one request and counts it, by model, signature, API, front end and final status."""

    def __init__(self, metrics: ServingMetrics, api: str, entrypoint: str):
        self._metrics, self.api, self.entrypoint = metrics, api, entrypoint
        self.model = self.signature = ""
        self._started = time.monotonic()

    def done(self, error: ServingError | None = None) -> None:
        self._metrics.observe_request(self.model, self.signature, self.api, self.entrypoint,
                                      error.code_name if error else "OK", time.monotonic() - self._started)

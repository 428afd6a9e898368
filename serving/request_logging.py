"""Request logging as TF Serving configures it: `logging_config` of a model in models.config.

    logging_config {
      log_collector_config { type: "file" filename_prefix: "/logs/cvpipe-classifier/predictions" }
      sampling_config { sampling_rate: 0.1 }
    }

A sampled successful Predict (REST or gRPC) is written as a `tensorflow.serving.PredictionLog`
(`predict_log { request response }`, `log_metadata { model_spec sampling_config saved_model_tags
timestamp_secs }`) by `components.prediction_logs.PredictionLogWriter` to rotated TFRecord files at the
prefix; a REST request is logged as the PredictRequest it stands for, as TF Serving's HTTP handler
converts it. As in TF Serving's RequestLogger: one logger per distinct logging_config (shared by the
models that name the same one), `sampling_rate` in [0, 1] (0, or no sampling_config: nothing logged),
and logging is updated after the models of a new config are. Serialization runs on the writer's thread: the request path only samples
and enqueues. Classify, Regress and MultiInference are not logged.

tensorflow_model_server's open-source build has no log collector: it refuses a config with a
logging_config ("No request-logger-creator provided."). This server registers the collector type `file`.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import numpy as np
from tensorflow_serving.apis import logging_pb2, model_pb2, predict_pb2, prediction_log_pb2
from tensorflow_serving.config import logging_config_pb2, model_server_config_pb2

from components.prediction_logs import PredictionLogWriter
from serving.errors import invalid_argument
from serving.tensors import to_tensor_proto

logger = logging.getLogger(__name__)

FILE_COLLECTOR = "file"
COLLECTOR_TYPES = (FILE_COLLECTOR,)


@dataclass(frozen=True)
class WriterOptions:
    """How each prediction log's files are bounded (`--prediction_log_*` flags)."""

    max_file_bytes: int = 64 * 1024 * 1024
    max_files: int = 1000
    queue_records: int = 10_000


class _RequestLogger:
    """One logging_config: its sampling rate and the writer of its prefix."""

    def __init__(self, config: logging_config_pb2.LoggingConfig, writer: PredictionLogWriter,
                 saved_model_tags: list[str]):
        self.sampling_config = logging_config_pb2.SamplingConfig()
        self.sampling_config.CopyFrom(config.sampling_config)
        self.rate = config.sampling_config.sampling_rate
        self.writer = writer
        self.saved_model_tags = saved_model_tags
        self._random = random.Random()

    def sample(self) -> bool:
        return self.rate >= 1.0 or (self.rate > 0.0 and self._random.random() < self.rate)


def check_logging_config(model: str, config: logging_config_pb2.LoggingConfig) -> None:
    """INVALID_ARGUMENT when a model's logging_config cannot be served here, naming the field."""
    collector = config.log_collector_config
    where = f"model {model}: logging_config"
    if collector.type not in COLLECTOR_TYPES:
        raise invalid_argument(f"{where}: Cannot find LogCollector::Factory for type: {collector.type!r} (this server "
                               f"writes prediction logs with type {FILE_COLLECTOR!r})")
    prefix = collector.filename_prefix
    if not prefix or not os.path.isabs(prefix) or prefix.endswith("/"):
        raise invalid_argument(f"{where}: log_collector_config.filename_prefix must be an absolute path ending in a "
                               f"file name prefix (e.g. /logs/{model}/predictions), got {prefix[:200]!r}")
    rate = config.sampling_config.sampling_rate
    if not 0.0 <= rate <= 1.0:
        raise invalid_argument(f"{where}: sampling_config.sampling_rate must be in [0, 1], got {rate}")


class RequestLogging:
    """The request loggers of the served models; `update()` on every config, `log_predict()` per request."""

    def __init__(self, saved_model_tags: Iterable[str] = ("serve",), options: WriterOptions = WriterOptions(),
                 on_logged: Callable[[str, str], None] | None = None):
        self._tags = list(saved_model_tags)
        self._options = options
        self._on_logged = on_logged or (lambda model, status: None)
        self._by_model: Mapping[str, _RequestLogger] = {}
        self._by_config: dict[bytes, _RequestLogger] = {}
        self._lock = threading.Lock()  # one update at a time; requests read `_by_model` without it

    @staticmethod
    def check(config: model_server_config_pb2.ModelServerConfig) -> None:
        """Raises INVALID_ARGUMENT when any model's logging_config cannot be served (before anything changes)."""
        for model in config.model_config_list.config:
            if model.HasField("logging_config"):
                check_logging_config(model.name, model.logging_config)

    def update(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Logs for the models of `config` from now on: keeps the loggers of unchanged logging_configs, starts
        new ones and closes those no model names any more. An empty config changes nothing (as for models)."""
        if config.WhichOneof("config") != "model_config_list":
            return
        self.check(config)
        with self._lock:
            by_config: dict[bytes, _RequestLogger] = {}
            by_model: dict[str, _RequestLogger] = {}
            for model in config.model_config_list.config:
                if not model.HasField("logging_config"):
                    continue
                key = model.logging_config.SerializeToString(deterministic=True)
                request_logger = by_config.get(key) or self._by_config.get(key) or self._start(model)
                by_config[key] = by_model[model.name] = request_logger
            kept = {id(r.writer) for r in by_config.values()}
            stale = {id(r.writer): r.writer for r in self._by_config.values() if id(r.writer) not in kept}
            self._by_model, self._by_config = by_model, by_config
        for writer in stale.values():
            logger.info("Closing prediction log %s", writer.prefix)
            writer.close()

    def _start(self, model: model_server_config_pb2.ModelConfig) -> _RequestLogger:
        config = model.logging_config
        prefix = config.log_collector_config.filename_prefix
        writer = next((r.writer for r in self._by_config.values() if r.writer.prefix == prefix), None)
        if writer is None:
            options = self._options
            try:
                writer = PredictionLogWriter(prefix, max_file_bytes=options.max_file_bytes,
                                             max_files=options.max_files, queue_records=options.queue_records)
            except OSError as e:
                raise invalid_argument(f"model {model.name}: cannot write prediction logs at {prefix[:200]}: "
                                       f"{e.strerror or e}") from e
        request_logger = _RequestLogger(config, writer, self._tags)
        logger.info("Logging %g of the predictions of model %s to %s-*.tfrecord", request_logger.rate, model.name,
                    prefix)
        return request_logger

    def log_predict(self, model_spec: model_pb2.ModelSpec, request: Callable[[], predict_pb2.PredictRequest],
                    response: Callable[[], predict_pb2.PredictResponse]) -> None:
        """Samples one successful Predict and queues its PredictionLog; `request` and `response` build the
        protos (on the writer's thread), `model_spec` is the one the response echoes (name, version,
        signature)."""
        request_logger = self._by_model.get(model_spec.name)
        if request_logger is None or not request_logger.sample():
            return
        timestamp = int(time.time())

        def serialize() -> bytes:
            log = prediction_log_pb2.PredictionLog(log_metadata=logging_pb2.LogMetadata(
                model_spec=model_spec, sampling_config=request_logger.sampling_config,
                saved_model_tags=request_logger.saved_model_tags, timestamp_secs=timestamp))
            log.predict_log.request.CopyFrom(request())
            log.predict_log.response.CopyFrom(response())
            return log.SerializeToString()

        queued = request_logger.writer.log(serialize)
        self._on_logged(model_spec.name, "OK" if queued else "RESOURCE_EXHAUSTED")

    def close(self) -> None:
        """Writes what is queued and closes every log (server shutdown)."""
        with self._lock:
            loggers, self._by_model, self._by_config = list(self._by_config.values()), {}, {}
        for writer in {id(r.writer): r.writer for r in loggers}.values():
            writer.close()


def predict_request(model_spec: model_pb2.ModelSpec, inputs: Mapping[str, np.ndarray],
                    output_filter: Iterable[str] = ()) -> predict_pb2.PredictRequest:
    """The PredictRequest a REST :predict stands for (as TF Serving's HTTP handler builds it)."""
    request = predict_pb2.PredictRequest(model_spec=model_spec, output_filter=list(output_filter))
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(to_tensor_proto(value))
    return request


"""Beam RunInference model handlers for the served model's `serving_default` signature
(image_bytes string [N] -> probabilities [N, C], class_id, label, score).

- `SavedModelHandler`: the SavedModel in process, loaded once per worker process (or once per
  machine with `batch_predict.share_model`); image bytes go straight into the graph, which decodes.
- `EndpointHandler`: a TF Serving endpoint (REST or gRPC) through Beam's RemoteModelHandler; the
  scorer (remote.py: connection pool, thread pool) is created once per worker process.

Both return one `PredictionResult` per image whose `inference` is a `Prediction` or a `Failure`: a
batch the model refuses because of an input (a corrupt image fails the whole batched call) is
bisected down to the failing images, so one bad image is one error row, never a failed job.
Elements are keyed by URI (KeyedModelHandler) and pre-batched (fixed batches, see inputs.py).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable, Optional, Sequence

from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RemoteModelHandler

from components.artifacts import SERVING_SIGNATURE
from components.batch_predict.remote import Endpoint, make_scorer
from components.batch_predict.results import InputError, isolate, predictions_from_outputs
from components.config import BatchPredictConfig

logger = logging.getLogger(__name__)

METRICS_NAMESPACE = "cvpipe_batch_predict"
# Distributions of the wall-clock times (ms since the epoch) model calls start and end: their min and
# max over all workers give the scoring time without worker start-up (run.py reports it).
SCORING_NAMESPACE = "batch_predict"
SCORING_START, SCORING_END = "scoring_start_ms", "scoring_end_ms"


def _score(model, batch: Sequence[bytes], model_id: str) -> list[PredictionResult]:
    started = time.time()
    results = model.score(list(batch))
    Metrics.distribution(SCORING_NAMESPACE, SCORING_START).update(int(started * 1000))
    Metrics.distribution(SCORING_NAMESPACE, SCORING_END).update(int(time.time() * 1000))
    return [PredictionResult(None, result, model_id) for result in results]


class SavedModelScorer:
    """The loaded SavedModel's `serving_default`: `score(images)` -> a Prediction or Failure per image."""

    def __init__(self, model_dir: str, top_k: int, probabilities: bool):
        import tensorflow as tf

        self._tf = tf
        self._loaded = tf.saved_model.load(model_dir)
        self._serve = self._loaded.signatures[SERVING_SIGNATURE]
        (self._input,) = self._serve.structured_input_signature[1].keys()
        self._top_k = top_k
        self._probabilities = probabilities
        logger.info("loaded %s in this worker", model_dir)

    def score(self, images: Sequence[bytes]) -> list:
        return isolate(list(images), self._call)

    def _call(self, images: Sequence[bytes]) -> list:
        tf = self._tf
        try:
            outputs = self._serve(**{self._input: tf.constant(images, dtype=tf.string)})
        except tf.errors.InvalidArgumentError as e:  # decoding (or another input check) failed in the graph
            raise InputError(e.message) from None
        return predictions_from_outputs({key: value.numpy() for key, value in outputs.items()}, self._top_k,
                                        self._probabilities)


class SavedModelHandler(ModelHandler[bytes, PredictionResult, SavedModelScorer]):
    """Runs `serving_default` of a SavedModel (any tf.io.gfile path) in the worker."""

    def __init__(self, model_dir: str, settings: BatchPredictConfig, model_id: str):
        super().__init__(large_model=settings.share_model)
        self._model_dir = model_dir
        self._top_k = settings.top_k
        self._probabilities = settings.probabilities
        self._model_id = model_id

    def load_model(self) -> SavedModelScorer:
        return SavedModelScorer(self._model_dir, self._top_k, self._probabilities)

    def run_inference(self, batch: Sequence[bytes], model: SavedModelScorer,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[PredictionResult]:
        return _score(model, batch, self._model_id)

    def get_num_bytes(self, batch: Sequence[bytes]) -> int:
        return sum(len(image) for image in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE


def _never(_: Exception) -> bool:
    return False


class EndpointHandler(RemoteModelHandler[bytes, PredictionResult, Any]):
    """Calls a TF Serving endpoint. Retries, backoff and timeouts are the scorer's (remote.py), per
    request and configurable; RemoteModelHandler's own whole-batch retry is off."""

    def __init__(self, endpoint: Endpoint, settings: BatchPredictConfig, model_id: str):
        super().__init__(namespace=METRICS_NAMESPACE, num_retries=0, retry_filter=_never)
        self._endpoint = endpoint
        self._settings = settings
        self._model_id = model_id

    def create_client(self):
        return make_scorer(self._endpoint, self._settings, self._settings.top_k, self._settings.probabilities)

    def request(self, batch: Sequence[bytes], model, inference_args: Optional[dict[str, Any]] = None
                ) -> Iterable[PredictionResult]:
        return _score(model, batch, self._model_id)

    def get_num_bytes(self, batch: Sequence[bytes]) -> int:
        return sum(len(image) for image in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE


def keyed_prebatched(handler: ModelHandler) -> ModelHandler:
    """The handler for elements that are whole batches [(uri, image bytes), ...]."""
    return KeyedModelHandler(handler).with_no_batching()


"""Server-side batching: the scheduler's rules on a stand-in model, then merged requests on the real one."""

from __future__ import annotations

import base64
import re
import threading
import time
from concurrent.futures import CancelledError, ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

from serving.batching import BatchScheduler
from serving.client import RestClient
from serving.config import BatchingOptions
from serving.errors import ServingError
from serving.grpc_client import GrpcClient
from serving.inference import PredictCall
from serving.model_server import ModelServer
from serving.options import ServerOptions
from serving.servable import Signature


class Doubler:
    """A stand-in servable: outputs twice its input, records batch sizes, can be held mid-run."""

    name = "doubler"

    def __init__(self):
        self.batches: list[int] = []
        self.release = threading.Event()
        self.release.set()
        self.running = threading.Event()

    def run(self, signature, inputs, outputs):
        self.running.set()
        self.release.wait(10)
        self.batches.append(len(inputs["x"]))
        return {"y": inputs["x"] * 2}


def _signature() -> Signature:
    definition = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    for infos, alias in ((definition.inputs, "x"), (definition.outputs, "y")):
        infos[alias].dtype = tf.float32.as_datatype_enum
        infos[alias].tensor_shape.dim.add(size=-1)
    return Signature("serving_default", definition, None)


def _call(model: Doubler, rows) -> PredictCall:
    return PredictCall(model, _signature(), {"x": np.asarray(rows, np.float32)}, ("y",))


def test_concurrent_requests_merge_pad_to_an_allowed_size_and_split_back():
    model, observed = Doubler(), []
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=8, batch_timeout_micros=200_000, num_batch_threads=1,
                                               allowed_batch_sizes=(2, 8)),
                               lambda *args: observed.append(args))
    futures = [scheduler.submit(_call(model, rows), len(rows)) for rows in ([1], [2, 3], [4])]
    other_shape = scheduler.submit(_call(model, [[5, 5]]), 1)  # [1, 2] rows cannot join [n] rows
    results = [f.result(5)["y"].tolist() for f in futures]
    assert results == [[2], [4, 6], [8]]
    assert other_shape.result(5)["y"].tolist() == [[10, 10]]
    assert sorted(model.batches) == [2, 8]  # 4 rows padded to 8; the other shape alone, padded to 2
    assert sorted(size for _, _, size, _ in observed) == [2, 8]
    scheduler.stop()


def test_a_full_queue_and_an_oversized_request_are_refused():
    model = Doubler()
    model.release.clear()
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=2, max_enqueued_batches=1, num_batch_threads=1))
    running = scheduler.submit(_call(model, [1, 2]), 2)
    assert model.running.wait(5)  # the thread is busy with the first batch
    queued = scheduler.submit(_call(model, [3, 4]), 2)
    with pytest.raises(ServingError) as full:
        scheduler.submit(_call(model, [5]), 1)
    assert (full.value.code, full.value.message) == (
        grpc.StatusCode.UNAVAILABLE, "The batch scheduling queue to which this task was submitted is full")
    assert full.value.http_status == 503
    with pytest.raises(ServingError, match="Task size 3 is larger than maximum input batch size 2"):
        scheduler.submit(_call(model, [1, 2, 3]), 3)
    model.release.set()
    assert running.result(5)["y"].tolist() == [2, 4] and queued.result(5)["y"].tolist() == [6, 8]
    scheduler.stop()
    with pytest.raises(ServingError, match="shutting down"):
        scheduler.submit(_call(model, [1]), 1)


def test_requests_whose_caller_gave_up_are_dropped_and_errors_reach_every_request():
    model = Doubler()
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=4, batch_timeout_micros=300_000, num_batch_threads=1))
    abandoned = scheduler.submit(_call(model, [1]), 1)
    kept = scheduler.submit(_call(model, [2]), 1)
    assert abandoned.cancel()
    assert kept.result(5)["y"].tolist() == [4] and model.batches == [1]
    with pytest.raises(CancelledError):
        abandoned.result()

    model.run = lambda *args: (_ for _ in ()).throw(tf.errors.InvalidArgumentError(None, None, "bad input"))
    failing = [scheduler.submit(_call(model, [i]), 1) for i in range(2)]
    for future in failing:
        with pytest.raises(ServingError, match="bad input"):
            future.result(5)
    scheduler.stop()


@pytest.fixture(scope="module")
def batching_server(tiny_export, tmp_path_factory):
    root = tmp_path_factory.mktemp("batching")
    (root / "batching.config").write_text("max_batch_size { value: 8 } batch_timeout_micros { value: 300000 } "
                                          "num_batch_threads { value: 1 } max_enqueued_batches { value: 4 }")
    (root / "monitoring.config").write_text("prometheus_config { enable: true }")
    options = ServerOptions(model_name="tiny", model_base_path=str(Path(tiny_export).parent), port=0, rest_api_port=0,
                            enable_batching=True, batching_parameters_file=str(root / "batching.config"),
                            monitoring_config_file=str(root / "monitoring.config"))
    with ModelServer(options) as server:
        yield server


def _batch_sizes(rest: RestClient) -> tuple[int, float]:
    """(batches run, images in them) from the batch-size histogram."""
    text = rest.call("GET", "/monitoring/prometheus/metrics")[1].decode()
    labels = r'\{model_name="tiny",signature_name="serving_default"\}'
    count = re.search(rf":tensorflow:serving:batching_session:processed_batch_size_count{labels} (\d+)", text)
    total = re.search(rf":tensorflow:serving:batching_session:processed_batch_size_sum{labels} (\S+)", text)
    return (int(count.group(1)), float(total.group(1))) if count else (0, 0.0)


def test_concurrent_requests_are_merged_and_answer_as_unbatched(batching_server, tiny_run, tiny_export):
    jpegs = [path.read_bytes() for path in sorted(tiny_run.images.rglob("*.jpg"))[:8]]
    reference = tf.saved_model.load(tiny_export).signatures["serving_default"]
    expected = [reference(image_bytes=tf.constant([jpeg]))["probabilities"].numpy()[0] for jpeg in jpegs]
    ports = batching_server.ports
    rest = RestClient(f"http://127.0.0.1:{ports.rest}")
    before = _batch_sizes(rest)

    def ask(index: int) -> list[float]:
        if index % 2:
            client = RestClient(f"http://127.0.0.1:{ports.rest}")
            return client.predict("tiny", instances=[{"b64": base64.b64encode(jpegs[index]).decode()}])[0][
                "probabilities"]
        outputs = GrpcClient(f"127.0.0.1:{ports.grpc}").predict("tiny", {"image_bytes": np.array([jpegs[index]],
                                                                                                 dtype=object)})
        return outputs["probabilities"][0].tolist()

    started = time.monotonic()
    with ThreadPoolExecutor(len(jpegs)) as pool:
        answers = list(pool.map(ask, range(len(jpegs))))
    assert time.monotonic() - started < 10
    batches, images = (now - then for now, then in zip(_batch_sizes(rest), before))
    assert images == len(jpegs) and batches < len(jpegs)  # merged: fewer runs than requests
    for answer, single in zip(answers, expected):
        np.testing.assert_allclose(answer, single, rtol=0, atol=1e-5)
    rest.close()

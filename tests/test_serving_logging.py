"""Prediction logs: `logging_config` in models.config makes the server write TF Serving's PredictionLog records
(REST and gRPC, batched or not) to rotated TFRecord files that survive kill -9 of the server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from components import prediction_logs
from half_plus_two import build_half_plus_two
from serving.client import RestClient, RestError
from serving.errors import ServingError
from serving.grpc_client import GrpcClient
from serving.model_server import ModelServer
from serving.options import ServerOptions

MODEL = "hpt"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model_base(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("models") / MODEL
    build_half_plus_two(str(base / "1"))
    return base


def _config(base: Path, logging: str) -> str:
    return (f'model_config_list {{ config {{ name: "{MODEL}" base_path: "{base}" model_platform: "tensorflow" '
            f'{logging} }} }}')


def _logging(prefix: Path, rate: float = 1.0, kind: str = "file") -> str:
    return (f'logging_config {{ log_collector_config {{ type: "{kind}" filename_prefix: "{prefix}" }} '
            f'sampling_config {{ sampling_rate: {rate} }} }}')


def _server(tmp_path: Path, config: str, **options) -> ModelServer:
    path = tmp_path / "models.config"
    path.write_text(config)
    return ModelServer(ServerOptions(model_config_file=str(path), port=0, rest_api_port=0,
                                     file_system_poll_wait_seconds=0, **options))


def _logs(directory: Path) -> list[prediction_log_pb2.PredictionLog]:
    """Every record under `directory`, each file read whole (asserting none is torn)."""
    logs = []
    for path in prediction_logs.log_files([str(directory)]):
        reading = prediction_logs.FileReading(path)
        logs += [prediction_log_pb2.PredictionLog.FromString(r) for r in prediction_logs.read_records(path, reading)]
        assert not reading.torn, path
    return logs


def _x(log: prediction_log_pb2.PredictionLog) -> list[float]:
    return list(tf.make_ndarray(log.predict_log.request.inputs["x"]).ravel())


@pytest.mark.parametrize("batching", [False, True], ids=["unbatched", "batched"])
def test_every_successful_predict_is_logged_with_its_request_response_and_version(model_base, tmp_path, batching):
    logs = tmp_path / "logs"
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }")
    started = int(time.time())
    with _server(tmp_path, _config(model_base, _logging(logs / "hpt")), enable_batching=batching,
                 monitoring_config_file=str(monitoring)) as server:
        rest = RestClient(f"http://127.0.0.1:{server.ports.rest}")
        client = GrpcClient(f"127.0.0.1:{server.ports.grpc}")
        for i in range(10):
            assert rest.predict(MODEL, instances=[float(i)]) == [i / 2 + 2]
            assert client.predict(MODEL, {"x": np.array([100.0 + i], np.float32)})["y"].tolist() == [52 + i / 2]
        with pytest.raises(RestError):
            rest.predict(MODEL, instances=["not a number"])
        with pytest.raises(grpc.RpcError):
            client.predict(MODEL, {"z": np.array([1.0], np.float32)})
        metrics = rest.call("GET", "/monitoring/prometheus/metrics")[1].decode()
        rest.close()
        client.close()
    assert f':tensorflow:serving:request_log_count{{model_name="{MODEL}",status_code="OK"}} 20' in metrics
    records = _logs(logs)
    assert sorted(x for log in records for x in _x(log)) == [float(i) for i in range(10)] + [100.0 + i for i in range(10)]
    for log in records:
        meta = log.log_metadata
        assert (meta.model_spec.name, meta.model_spec.version.value, meta.model_spec.signature_name) == \
            (MODEL, 1, "serving_default")
        assert meta.sampling_config.sampling_rate == 1.0 and list(meta.saved_model_tags) == ["serve"]
        assert started <= meta.timestamp_secs <= time.time()
        assert log.predict_log.request.model_spec.name == MODEL
        x, y = _x(log)[0], tf.make_ndarray(log.predict_log.response.outputs["y"]).tolist()
        assert y == [x / 2 + 2] and log.predict_log.response.model_spec.version.value == 1
    # Closed on shutdown: every file renamed to .tfrecord, readable by TensorFlow's own reader.
    files = prediction_logs.log_files([str(logs)])
    assert files and all(f.endswith(prediction_logs.FINAL_SUFFIX) for f in files)
    assert sum(1 for _ in tf.data.TFRecordDataset(files)) == 20


def test_sampling_logs_about_the_configured_fraction(model_base, tmp_path):
    logs = tmp_path / "logs"
    requests = 1000
    with _server(tmp_path, _config(model_base, _logging(logs / "hpt", rate=0.1))) as server:
        client = GrpcClient(f"127.0.0.1:{server.ports.grpc}")
        for _ in range(requests):
            client.predict(MODEL, {"x": np.array([1.0], np.float32)})
        client.close()
    logged = len(_logs(logs))
    # Binomial(1000, 0.1): mean 100, sd 9.5; this bound fails by chance about once in 10^5 runs.
    assert 60 <= logged <= 140, logged
    assert all(log.log_metadata.sampling_config.sampling_rate == pytest.approx(0.1) for log in _logs(logs))


def test_logging_configs_are_checked_and_a_bad_reload_keeps_the_old_one(model_base, tmp_path):
    for logging, message in [
            (_logging(tmp_path / "l", kind="bigquery"), "Cannot find LogCollector::Factory for type: 'bigquery'"),
            (_logging(Path("relative/prefix")), "filename_prefix must be an absolute path"),
            (_logging(tmp_path / "l", rate=1.5), r"sampling_rate must be in \[0, 1\], got 1.5")]:
        with pytest.raises(ServingError, match=message):
            _server(tmp_path, _config(model_base, logging)).start()
    first, second = tmp_path / "first", tmp_path / "second"
    with _server(tmp_path, _config(model_base, _logging(first / "hpt"))) as server:
        rest = RestClient(f"http://127.0.0.1:{server.ports.rest}")
        rest.predict(MODEL, instances=[1.0])
        bad = text_format.Parse(_config(model_base, _logging(second / "hpt", kind="kafka")),
                                model_server_config_pb2.ModelServerConfig())
        with pytest.raises(ServingError, match="kafka"):
            server.reload_config(bad)
        rest.predict(MODEL, instances=[2.0])
        moved = text_format.Parse(_config(model_base, _logging(second / "hpt")), model_server_config_pb2.ModelServerConfig())
        server.reload_config(moved)  # the first log is closed, the second one opened
        rest.predict(MODEL, instances=[3.0])
        assert all(f.endswith(prediction_logs.FINAL_SUFFIX) for f in prediction_logs.log_files([str(first)]))
        server.reload_config(text_format.Parse(_config(model_base, ""), model_server_config_pb2.ModelServerConfig()))
        rest.predict(MODEL, instances=[4.0])  # logging off
        rest.close()
    assert [_x(log) for log in _logs(first)] == [[1.0], [2.0]]
    assert [_x(log) for log in _logs(second)] == [[3.0]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_kill_9_mid_traffic_leaves_only_complete_records_and_the_next_server_closes_them(model_base, tmp_path):
    logs = tmp_path / "logs"
    config = tmp_path / "models.config"
    config.write_text(_config(model_base, _logging(logs / "hpt")))
    rest_port = _free_port()
    command = [sys.executable, "-m", "serving.server", "--port=0", f"--rest_api_port={rest_port}",
               f"--model_config_file={config}", "--file_system_poll_wait_seconds=0",
               "--prediction_log_max_file_bytes=20000"]
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.DEVNULL)
    answered = []
    stop = threading.Event()

    def traffic() -> None:
        rest = RestClient(f"http://127.0.0.1:{rest_port}", timeout=5)
        while not stop.is_set():
            try:
                answered.append(rest.predict(MODEL, instances=[1.0, 2.0, 3.0]))
            except OSError:
                if answered:
                    return  # killed
                time.sleep(0.1)
        rest.close()
    threads = [threading.Thread(target=traffic) for _ in range(3)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 90
        while len(answered) < 400 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(answered) >= 400, "the server did not answer"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
    finally:
        stop.set()
        process.kill()
        for thread in threads:
            thread.join(30)
    files = prediction_logs.log_files([str(logs)])
    assert any(f.endswith(prediction_logs.PART_SUFFIX) for f in files), "the killed server left its open file"
    assert len([f for f in files if f.endswith(prediction_logs.FINAL_SUFFIX)]) >= 2, "files rotate at 20 kB"
    killed = _logs(logs)  # every file, the open one too: complete records only
    assert 0 < len(killed) <= len(answered)
    assert all(_x(log) == [1.0, 2.0, 3.0] for log in killed)
    # The next server on this host closes what the killed one left open; TensorFlow reads every file.
    with _server(tmp_path, config.read_text()) as server:
        RestClient(f"http://127.0.0.1:{server.ports.rest}").predict(MODEL, instances=[9.0])
    files = prediction_logs.log_files([str(logs)])
    assert all(f.endswith(prediction_logs.FINAL_SUFFIX) for f in files)
    assert sum(1 for _ in tf.data.TFRecordDataset(files)) == len(killed) + 1


# ---- the writer on its own ----------------------------------------------------------------------------------


def test_writer_rotates_prunes_and_counts_what_it_cannot_write(tmp_path):
    writer = prediction_logs.PredictionLogWriter(str(tmp_path / "p"), max_file_bytes=1000, max_files=3)
    for i in range(100):
        assert writer.log(b"%03d" % i + b"x" * 97)
    writer.log(lambda: 1 / 0)  # a record that cannot be serialized is counted, logging goes on
    writer.log(lambda: b"last")
    writer.close()
    files = prediction_logs.log_files([str(tmp_path)])
    assert len(files) == 3 and all(f.endswith(prediction_logs.FINAL_SUFFIX) for f in files)
    kept = [r for f in files for r in prediction_logs.read_records(f)]
    assert kept[-1] == b"last" and kept[0][:3] == b"%03d" % (101 - len(kept))  # the newest files are kept
    assert (writer.stats.written, writer.stats.failed, writer.stats.dropped) == (101, 1, 0)
    assert writer.stats.files_closed == 12  # 9 records of 116 bytes fill a file: 11 full ones, 1 at close

    full = prediction_logs.PredictionLogWriter(str(tmp_path / "q"), queue_records=1)
    gate = threading.Event()
    full.log(lambda: gate.wait(10) and b"slow")
    time.sleep(0.1)  # the writer's thread is inside the slow record; the queue holds one more
    results = [full.log(b"r") for _ in range(3)]
    gate.set()
    full.close()
    assert results == [True, False, False] and full.stats.dropped == 2 and full.stats.written == 2


def test_reader_stops_at_a_torn_record_and_recovery_cuts_it(tmp_path):
    prefix = str(tmp_path / "p")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited
    left = f"{prefix}-20260101T000000-{prediction_logs._HOST}-{pid}-00001{prediction_logs.PART_SUFFIX}"
    records = [b"one", b"two", b"three"]
    whole = b"".join(prediction_logs.frame(r) for r in records)
    Path(left).write_bytes(whole + prediction_logs.frame(b"four")[:-3])  # killed inside the last record
    reading = prediction_logs.FileReading(left)
    assert list(prediction_logs.read_records(left, reading)) == records
    assert reading.torn and reading.complete_bytes == len(whole)
    other_host = f"{prefix}-20260101T000000-elsewhere-{pid}-00001{prediction_logs.PART_SUFFIX}"
    Path(other_host).write_bytes(whole)
    assert prediction_logs.recover(prefix) == [left.removesuffix(prediction_logs.PART_SUFFIX) + ".tfrecord"]
    closed = left.removesuffix(prediction_logs.PART_SUFFIX) + ".tfrecord"
    assert [bytes(r.numpy()) for r in tf.data.TFRecordDataset(closed)] == records
    assert os.path.exists(other_host), "another host's open file is not ours to close"
    corrupt = tmp_path / "corrupt.tfrecord"
    data = bytearray(whole)
    data[len(prediction_logs.frame(b"one")) + 13] ^= 0xFF  # a flipped bit in the second record's data
    corrupt.write_bytes(bytes(data))
    reading = prediction_logs.FileReading(str(corrupt))
    assert list(prediction_logs.read_records(str(corrupt), reading)) == [b"one"] and reading.torn

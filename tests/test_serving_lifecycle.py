"""Versions coming and going under load, config reloads with labels, shutdown, and the command line."""

from __future__ import annotations

import logging
import os
import shutil
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
from google.protobuf import text_format
from tensorflow_serving.apis import model_management_pb2
from tensorflow_serving.config import model_server_config_pb2

from half_plus_two import build_half_plus_two
from serving.client import RestClient, RestError
from serving.config import ServerConfigError
from serving.errors import ServingError
from serving.grpc_client import GrpcClient
from serving.model_server import ModelServer
from serving.options import ServerOptions

MODEL = "hpt"
ROOT = Path(__file__).resolve().parent.parent


def _publish(base: Path, version: int, b: float) -> None:
    """A new version written under a temporary name and renamed into place, as writers must."""
    staged = base / f"{version}.tmp-{os.getpid()}"
    build_half_plus_two(str(staged), b=b)
    os.rename(staged, base / str(version))


def _wait(condition, timeout: float, what: str) -> float:
    """Polls `condition` until true; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


class Traffic:
    """Client threads (two REST, two gRPC) predicting x=1 continuously; records answers and failures."""

    def __init__(self, server: ModelServer):
        self.answers: list[tuple[str, float]] = []  # (client thread, answer)
        self.failures: list[str] = []
        self._stop = threading.Event()
        rest_url, target = f"http://127.0.0.1:{server.ports.rest}", f"127.0.0.1:{server.ports.grpc}"
        self._threads = [threading.Thread(target=self._rest, args=(rest_url,)) for _ in range(2)]
        self._threads += [threading.Thread(target=self._grpc, args=(target,)) for _ in range(2)]

    def _record(self, call) -> None:
        while not self._stop.is_set():
            try:
                self.answers.append((threading.current_thread().name, float(call())))
            except Exception as e:  # every failure counts
                self.failures.append(repr(e))

    def _rest(self, url: str) -> None:
        client = RestClient(url)
        self._record(lambda: client.predict(MODEL, instances=[[1.0]])[0][0])
        client.close()

    def _grpc(self, target: str) -> None:
        client = GrpcClient(target)
        self._record(lambda: client.predict(MODEL, {"x": np.array([[1.0]], np.float32)})["y"][0, 0])
        client.close()

    def latest(self) -> float | None:
        return self.answers[-1][1] if self.answers else None

    def __enter__(self) -> "Traffic":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def _states(server: ModelServer, model: str = MODEL) -> dict[int, tuple[str, str]]:
    """version -> (state, error code) as REST reports them ({} while the model has no version)."""
    try:
        status = RestClient(f"http://127.0.0.1:{server.ports.rest}").status(model)
    except RestError:
        return {}
    return {int(s["version"]): (s["state"], s["status"]["error_code"]) for s in status}


def test_hot_swap_under_load_corrupt_versions_and_retry(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="serving.manager")
    base = tmp_path / MODEL
    build_half_plus_two(str(base / "1"))
    options = ServerOptions(model_name=MODEL, model_base_path=str(base), port=0, rest_api_port=0,
                            file_system_poll_wait_seconds=1)
    with ModelServer(options) as server, Traffic(server) as traffic:
        _wait(lambda: len(traffic.answers) > 20, 10, "traffic")
        assert traffic.latest() == 2.5
        renamed = time.monotonic()
        _publish(base, 2, b=3.0)
        swap = _wait(lambda: traffic.latest() == 3.5, 10, "version 2 answering") + time.monotonic() - renamed
        assert swap < 1 + 5  # the poll interval plus the load (under 1 s here), with room for a busy machine
        assert _states(server)[1] == ("END", "OK")  # unloaded once version 2 was AVAILABLE

        corrupt = base / "3.tmp"
        corrupt.mkdir()
        (corrupt / "saved_model.pb").write_bytes(b"\x08garbage, not a SavedModel")
        os.rename(corrupt, base / "3")
        _wait(lambda: 3 in _states(server), 5, "version 3 in the status")
        time.sleep(2.5)  # more polls: the unchanged broken version is not retried
        assert _states(server) == {3: ("END", "DATA_LOSS"), 2: ("AVAILABLE", "OK"), 1: ("END", "OK")}
        assert traffic.latest() == 3.5
        attempts = [r for r in caplog.records
                    if r.getMessage().startswith("Loading servable version {name: hpt version: 3} from")]
        assert len(attempts) == 1

        shutil.rmtree(base / "3")
        _publish(base, 3, b=4.0)  # fixed: a changed directory is tried again
        _wait(lambda: traffic.latest() == 4.5, 10, "the fixed version 3 answering")
    assert traffic.failures == []
    values = [value for _, value in traffic.answers]
    assert len(values) > 100 and set(values) == {2.5, 3.5, 4.5}
    for client in {name for name, _ in traffic.answers}:
        seen = [value for name, value in traffic.answers if name == client]
        assert seen == sorted(seen)  # no client gets an old version's answer after a newer one


def _config(models: dict[str, Path], labels: dict[str, int] | None = None, versions=(1, 2)) -> str:
    entries = []
    for name, path in models.items():
        label_text = "".join(f' version_labels {{ key: "{k}" value: {v} }}' for k, v in (labels or {}).items()
                             if name == MODEL)
        policy = " ".join(f"versions: {v}" for v in versions)
        entries.append(f'config {{ name: "{name}" base_path: "{path}" model_platform: "tensorflow" '
                       f'model_version_policy {{ specific {{ {policy} }} }}{label_text} }}')
    return "model_config_list { " + " ".join(entries) + " }"


def _write(path: Path, text: str) -> None:
    staged = path.with_suffix(".tmp")
    staged.write_text(text)
    os.rename(staged, path)


def test_config_reload_with_labels_and_removed_models(tmp_path):
    models = {MODEL: tmp_path / MODEL, "other": tmp_path / "other"}
    build_half_plus_two(str(models[MODEL] / "1"))
    build_half_plus_two(str(models[MODEL] / "2"), b=3.0)
    build_half_plus_two(str(models["other"] / "1"), b=10.0)
    config = tmp_path / "models.config"

    # At start-up the listed versions load before the labels are checked (plain flags start on deploy's config);
    # a label naming a version that is not served still fails the start.
    _write(config, _config({MODEL: models[MODEL]}, {"stable": 3}, versions=(1, 2, 3)))
    with pytest.raises(ServingError, match="Request to assign label to version 3 of model hpt, which is not "
                                           "currently available for inference"):
        ModelServer(ServerOptions(model_config_file=str(config), port=0, rest_api_port=None)).start()
    _write(config, _config({MODEL: models[MODEL]}, {"stable": 1}))
    with ModelServer(ServerOptions(model_config_file=str(config), port=0, rest_api_port=None)) as labelled_at_start:
        client = GrpcClient(f"127.0.0.1:{labelled_at_start.ports.grpc}")
        assert client.predict(MODEL, {"x": np.array([[1.0]], np.float32)}, label="stable")["y"].tolist() == [[2.5]]
        with pytest.raises(grpc.RpcError) as disabled:  # reloads over gRPC are opt-in
            client.models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(
                config=model_server_config_pb2.ModelServerConfig()), 30)
        assert disabled.value.code() == grpc.StatusCode.PERMISSION_DENIED
        client.close()

    _write(config, _config({MODEL: models[MODEL]}))
    options = ServerOptions(model_config_file=str(config), model_config_file_poll_wait_seconds=1, port=0,
                            rest_api_port=0, file_system_poll_wait_seconds=0, allow_reload_config_request=True)
    with ModelServer(options) as server:
        rest = RestClient(f"http://127.0.0.1:{server.ports.rest}")
        client = GrpcClient(f"127.0.0.1:{server.ports.grpc}")
        assert rest.predict(MODEL, instances=[1.0]) == [3.5]

        _write(config, _config({MODEL: models[MODEL]}, {"stable": 1, "canary": 2}))

        def labelled() -> bool:
            try:
                return rest.predict(MODEL, instances=[1.0], label="stable") == [2.5]
            except RestError:
                return False
        _wait(labelled, 5, "the labels of the re-read config")
        assert rest.predict(MODEL, instances=[1.0], label="canary") == [3.5]
        np.testing.assert_allclose(client.predict(MODEL, {"x": np.array([[1.0]], np.float32)}, label="stable")["y"],
                                   [[2.5]])

        moved = model_server_config_pb2.ModelServerConfig()
        text_format.Parse(_config({MODEL: models[MODEL]}, {"stable": 1, "canary": 3}), moved)
        with pytest.raises(grpc.RpcError) as refused:
            client.models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=moved), 30)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "Request to assign label to version 3 of model hpt" in refused.value.details()
        assert rest.predict(MODEL, instances=[1.0], label="canary") == [3.5]  # unchanged
        for outside in ("/proc", f"{tmp_path}/../..", "/"):  # only base paths under the config file's folder
            elsewhere = model_server_config_pb2.ModelServerConfig()
            elsewhere.model_config_list.config.add(name=MODEL, base_path=outside, model_platform="tensorflow")
            with pytest.raises(grpc.RpcError) as refused:
                client.models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=elsewhere), 30)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "is not under an allowed prefix" in refused.value.details()
        assert rest.predict(MODEL, instances=[1.0], label="canary") == [3.5]  # still served

        _write(config, _config({"other": models["other"]}, versions=(1,)))
        _wait(lambda: _states(server, "other") == {1: ("AVAILABLE", "OK")}, 5, "other loaded")
        assert _states(server) == {2: ("END", "OK"), 1: ("END", "OK")}  # hpt unloaded
        with pytest.raises(RestError) as gone:
            rest.predict(MODEL, instances=[1.0])
        assert (gone.value.status, gone.value.message) == (404, "Servable not found for request: Latest(hpt)")
        assert rest.predict("other", instances=[1.0]) == [10.5]
        status, _ = rest.call("GET", "/monitoring/prometheus/metrics")
        assert status == 404  # metrics only with a monitoring config, as TF Serving
        rest.close()
        client.close()


def test_shutdown_finishes_in_flight_requests(tmp_path):
    build_half_plus_two(str(tmp_path / MODEL / "1"))
    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size { value: 8 } batch_timeout_micros { value: 1500000 } "
                        "num_batch_threads { value: 1 }")
    options = ServerOptions(model_name=MODEL, model_base_path=str(tmp_path / MODEL), port=0, rest_api_port=0,
                            enable_batching=True, batching_parameters_file=str(batching))
    server = ModelServer(options)
    ports = server.start()
    results = {}

    def rest() -> None:
        results["rest"] = RestClient(f"http://127.0.0.1:{ports.rest}").predict(MODEL, instances=[1.0])

    def grpc_call() -> None:
        results["grpc"] = GrpcClient(f"127.0.0.1:{ports.grpc}").predict(
            MODEL, {"x": np.array([2.0], np.float32)})["y"].tolist()

    threads = [threading.Thread(target=rest), threading.Thread(target=grpc_call)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # both wait in the batch queue (1.5 s timeout)
    started = time.monotonic()
    server.stop()
    for thread in threads:
        thread.join()
    assert results == {"rest": [2.5], "grpc": [3.0]}
    assert time.monotonic() - started > 0.5  # stop() waited for them
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", ports.rest), timeout=2)


def test_requests_past_their_deadline_fail_and_leave_their_batch(tmp_path):
    build_half_plus_two(str(tmp_path / MODEL / "1"))
    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size { value: 8 } batch_timeout_micros { value: 1000000 } "
                        "num_batch_threads { value: 1 }")
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }")
    options = ServerOptions(model_name=MODEL, model_base_path=str(tmp_path / MODEL), port=0, rest_api_port=0,
                            enable_batching=True, batching_parameters_file=str(batching), rest_api_timeout_in_ms=200,
                            monitoring_config_file=str(monitoring))
    with ModelServer(options) as server:
        rest = RestClient(f"http://127.0.0.1:{server.ports.rest}")
        assert rest.call("POST", f"/v1/models/{MODEL}:predict", '{"instances": [1.0]}') == (
            504, b'{"error": "Deadline Exceeded"}')
        client = GrpcClient(f"127.0.0.1:{server.ports.grpc}", timeout=0.2)
        with pytest.raises(grpc.RpcError) as late:
            client.predict(MODEL, {"x": np.array([1.0], np.float32)})
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(1.2)  # their batch times out with nobody waiting for it: it is not run
        metrics = rest.call("GET", "/monitoring/prometheus/metrics")[1].decode()
        assert 'status="DEADLINE_EXCEEDED"' in metrics and "processed_batch_size_count" not in metrics
        rest.close()
        client.close()


def test_bad_configuration_is_refused_with_the_file_named(tmp_path):
    with pytest.raises(ServerConfigError,
                       match=f"cannot read the tensorflow.serving.ModelServerConfig file {tmp_path}/nope"):
        ModelServer(ServerOptions(model_config_file=str(tmp_path / "nope"))).start()
    bad = tmp_path / "batching.config"
    bad.write_text("max_batch_size { value: 8 } allowed_batch_sizes: 4")
    options = ServerOptions(model_name=MODEL, model_base_path=str(tmp_path), enable_batching=True,
                            batching_parameters_file=str(bad))
    with pytest.raises(ServerConfigError, match=f"batching parameters file {bad}: the last allowed_batch_sizes entry"):
        ModelServer(options).start()
    bad.write_text("max_batch_size: 8")
    with pytest.raises(ServerConfigError, match=f"Invalid protobuf file: '{bad}'"):
        ModelServer(options).start()
    relative = ServerOptions(model_name=MODEL, model_base_path="models/hpt", port=0, rest_api_port=None)
    with pytest.raises(ServingError, match="Expected model hpt to have an absolute path or URI"):
        ModelServer(relative).start()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_command_line_serves_until_sigterm(tmp_path):
    build_half_plus_two(str(tmp_path / MODEL / "1"))
    rest_port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.server", "--port=0", f"--rest_api_port={rest_port}", f"--model_name={MODEL}",
         f"--model_base_path={tmp_path / MODEL}", "--enable_batching", "--file_system_poll_wait_seconds=0"],
        cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        rest = RestClient(f"http://127.0.0.1:{rest_port}")

        def serving() -> bool:
            try:
                return rest.predict(MODEL, instances=[1.0]) == [2.5]
            except OSError:
                return False
        _wait(serving, 60, "the command-line server")
        rest.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        process.kill()
    log = process.stderr.read()
    assert f"Exporting HTTP/REST API at:127.0.0.1:{rest_port}" in log and "Server stopped" in log

"""The batch_predict stage: real Beam pipelines, the real tiny model, real files, and the project's
TF-Serving-compatible server on loopback for the remote paths."""

from __future__ import annotations

import csv
import http.server
import io
import json
import os
import posixpath
import shutil
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
import tensorflow as tf
from PIL import Image

from components.batch_predict.__main__ import main
from components.batch_predict.inputs import read_tfrecords
from components.records import example_bytes
from components.batch_predict.outputs import shard_of
from components.batch_predict.remote import Endpoint, EndpointError, GrpcScorer, RestScorer, resolve
from components.batch_predict.results import Failure, Prediction
from components.batch_predict.run import run_batch_predict
from components.config import ConfigError, load_config
from components.files import read_json
from components.manifest import read_manifest
from components.tracking.registry import register_model
from components.tracking.runs import start_run
from conftest import make_config
from image_files import pattern

# Limits the test inputs exercise: a 300x300 noise PNG is over max_image_bytes, a 3000x3000 PNG
# header over max_pixels; batches of 4 put corrupt images in batches with good ones.
LIMITS = ("batch_predict.batch_size=4", "batch_predict.max_image_bytes=100000", "batch_predict.max_pixels=1000000",
          "batch_predict.top_k=3")
NO_TRACKING = ("--set", "tracking.enabled=false", "--set", "beam.direct_running_mode=in_memory",
               "--set", "beam.direct_num_workers=1")


def config(*overrides: str):
    return make_config(*LIMITS, *overrides)


class Inputs:
    """A folder of good and bad files, a CSV naming them (plus a missing file and an empty URI) and
    the reason every bad input must get."""

    def __init__(self, root: Path, source_images: Path):
        self.folder = root / "images"
        self.folder.mkdir(parents=True)
        self.good = []
        for label in ("blue", "green", "red"):
            for source in sorted((source_images / label).iterdir())[:4]:
                self.good.append(str(shutil.copy(source, self.folder / source.name)))
        jpeg = (source_images / "red" / "red_000.jpg").read_bytes()
        png = (source_images / "blue" / "blue_001.png").read_bytes()
        bad = {
            "empty.jpg": (b"", "empty_file"),
            "notes.jpg": (b"not an image at all\n" * 5, "not_image"),
            "half.jpg": (jpeg[: len(jpeg) // 2], "corrupt"),  # the header parses; the graph fails
            "half.png": (png[: len(png) // 2], "corrupt"),
        }
        self.reasons = {}
        for name, (data, reason) in bad.items():
            (self.folder / name).write_bytes(data)
            self.reasons[str(self.folder / name)] = reason
        buffer = io.BytesIO()
        Image.fromarray(pattern(40, 40, 1)).save(buffer, "TIFF")
        (self.folder / "image.tiff").write_bytes(buffer.getvalue())
        self.reasons[str(self.folder / "image.tiff")] = "unsupported_format"
        noise = np.random.default_rng(0).integers(0, 255, (300, 300, 3), np.uint8)
        Image.fromarray(noise).save(self.folder / "noise.png")
        self.reasons[str(self.folder / "noise.png")] = "too_large"  # > max_image_bytes
        Image.new("L", (3000, 3000)).save(self.folder / "huge.png")
        self.reasons[str(self.folder / "huge.png")] = "too_large"  # > max_pixels, from the header
        self.glob = str(self.folder / "*")
        self.files = len(self.good) + len(self.reasons)

        self.csv = root / "inputs.csv"
        names = sorted(p.name for p in self.folder.iterdir())
        lines = ["uri,comment"] + [f"images/{name},relative" for name in names] + ["images/missing.jpg,gone", ",no uri"]
        self.csv.write_text("\n".join(lines) + "\n")
        self.csv_reasons = {**self.reasons, str(self.folder / "missing.jpg"): "missing",
                            f"{self.csv}:{len(lines)}": "malformed_row"}


@pytest.fixture(scope="module")
def inputs(tiny_run, tmp_path_factory) -> Inputs:
    return Inputs(tmp_path_factory.mktemp("batch-predict-inputs"), tiny_run.images)


@pytest.fixture(scope="module")
def reference(tiny_export, inputs) -> dict[str, np.ndarray]:
    """serving_default called directly on every good image (one batch): uri -> probabilities."""
    serve = tf.saved_model.load(tiny_export).signatures["serving_default"]
    images = [Path(p).read_bytes() for p in inputs.good]
    probabilities = serve(image_bytes=tf.constant(images))["probabilities"].numpy()
    return dict(zip(inputs.good, probabilities))


@pytest.fixture(scope="module")
def csv_run(tiny_export, inputs, tmp_path_factory):
    """The CSV input scored in process (jsonl, 2 files, every probability)."""
    output = tmp_path_factory.mktemp("csv-run") / "out"
    return run_batch_predict(tiny_export, str(inputs.csv), str(output),
                             config("batch_predict.output_shards=2", "batch_predict.probabilities=true"))


@pytest.fixture(scope="module")
def glob_run(tiny_export, inputs, tmp_path_factory):
    """The folder's files (a glob) scored in process (jsonl, 2 files)."""
    output = tmp_path_factory.mktemp("glob-run") / "out"
    return run_batch_predict(tiny_export, inputs.glob, str(output), config("batch_predict.output_shards=2"))


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def prediction_rows(output: str) -> list[dict]:
    return [row for path in sorted(Path(output).glob("predictions-*.jsonl")) for row in read_jsonl(path)]


def errors(output: str) -> dict[str, str]:
    return {row["uri"]: row["reason"] for row in read_jsonl(Path(output) / "errors.jsonl")}


def check_rows_match_reference(rows: list[dict], reference: dict[str, np.ndarray], labels: list[str]) -> None:
    assert sorted(r["uri"] for r in rows) == sorted(reference)
    for row in rows:
        expected = reference[row["uri"]]
        top = [t["probability"] for t in row["top_k"]]
        np.testing.assert_allclose(top, np.sort(expected)[::-1], atol=1e-6)
        assert [t["class_id"] for t in row["top_k"]] == np.argsort(-expected, kind="stable").tolist()
        assert [t["label"] for t in row["top_k"]] == [labels[t["class_id"]] for t in row["top_k"]]
        assert row["class_id"] == int(np.argmax(expected)) and row["label"] == labels[row["class_id"]]
        assert row["score"] == top[0]
        assert (row["model_name"], row["model_version"]) == ("tiny", "1")


def test_in_process_predictions_equal_serving_default_and_every_input_is_accounted_for(
        csv_run, inputs, reference, tiny_export):
    output = csv_run.output
    labels = read_manifest(tiny_export, "export").outputs["labels"]
    rows = prediction_rows(output)
    check_rows_match_reference(rows, reference, labels)
    for row in rows:
        np.testing.assert_allclose(row["probabilities"], reference[row["uri"]], atol=1e-6)

    found = errors(output)
    assert found == inputs.csv_reasons
    corrupt = [r for r in read_jsonl(Path(output) / "errors.jsonl") if r["reason"] == "corrupt"]
    assert all("jpeg" in r["detail"].lower() or "png" in r["detail"].lower() for r in corrupt)  # the graph's words
    summary = read_json(posixpath.join(output, "summary.json"))
    assert summary["inputs"] == inputs.files + 2 == summary["predictions"] + summary["errors"]
    assert summary["predictions"] == len(inputs.good) and summary["errors"] == len(found)
    assert summary["errors_by_reason"] == {"corrupt": 2, "empty_file": 1, "malformed_row": 1, "missing": 1,
                                           "not_image": 1, "too_large": 2, "unsupported_format": 1}
    assert sum(summary["classes"].values()) == len(inputs.good)
    assert summary["model"]["name"] == "tiny" and summary["model"]["version"] == "1"
    assert summary["scoring_seconds"] > 0 and summary["images_per_second"] > 0

    # Two files by a hash of the URI, rows sorted by URI; the manifest is the stage's.
    for index in (0, 1):
        shard = read_jsonl(Path(output) / f"predictions-0000{index}-of-00002.jsonl")
        assert [r["uri"] for r in shard] == sorted(r["uri"] for r in shard)
        assert all(shard_of(r["uri"], 2) == index for r in shard)
    manifest = read_manifest(output, "batch_predict")
    assert manifest.inputs["model"] == tiny_export and manifest.outputs["predictions"] == len(inputs.good)
    assert sorted(os.listdir(output)) == ["errors.jsonl", "manifest.json", "predictions-00000-of-00002.jsonl",
                                          "predictions-00001-of-00002.jsonl", "summary.json"]


@pytest.mark.parametrize("fmt", ["csv", "parquet", "tfrecord"])
def test_every_format_reads_back_the_same_rows(fmt, glob_run, tiny_export, inputs, tmp_path):
    result = run_batch_predict(tiny_export, inputs.glob, str(tmp_path / fmt), config("batch_predict.output_shards=2"),
                               output_format=fmt)
    files = sorted((tmp_path / fmt).glob("predictions-*"))
    assert [f.name for f in files] == [f"predictions-0000{i}-of-00002.{'tfrecord.gz' if fmt == 'tfrecord' else fmt}"
                                       for i in (0, 1)]
    if fmt == "csv":
        rows = [row for f in files for row in csv.DictReader(f.open())]
        rows = [{**row, "class_id": int(row["class_id"]), "score": float(row["score"]),
                 "top_k": json.loads(row["top_k"])} for row in rows]
    elif fmt == "parquet":
        rows = [row for f in files for row in pq.read_table(f).to_pylist()]
    else:
        rows = []
        for record in tf.data.TFRecordDataset([str(f) for f in files], compression_type="GZIP"):
            example = tf.train.Example.FromString(record.numpy())
            assert example.SerializeToString(deterministic=True) == record.numpy()  # TF's own bytes
            feature = example.features.feature
            text = lambda key: [v.decode() for v in feature[key].bytes_list.value]  # noqa: E731
            rows.append({
                "uri": text("uri")[0], "label": text("label")[0], "class_id": feature["class_id"].int64_list.value[0],
                "score": feature["score"].float_list.value[0],
                "top_k": [{"label": lbl, "class_id": c, "probability": p} for lbl, c, p in zip(
                    text("top_k/label"), feature["top_k/class_id"].int64_list.value,
                    feature["top_k/probability"].float_list.value)],
                "model_name": text("model/name")[0], "model_version": text("model/version")[0]})
    expected = {row["uri"]: row for row in prediction_rows(glob_run.output)}
    assert {row["uri"]: row for row in rows} == expected  # floats exactly: every format keeps the float32
    assert errors(result.output) == inputs.reasons
    assert result.summary["format"] == fmt


def test_the_same_input_twice_gives_byte_identical_files_on_any_runner(glob_run, tiny_export, inputs, tmp_path):
    # In memory, one worker (glob_run), then two threads: other bundles, other timing, the same bytes.
    again = run_batch_predict(tiny_export, inputs.glob, str(tmp_path / "again"), config(
        "batch_predict.output_shards=2", "beam.direct_running_mode=multi_threading", "beam.direct_num_workers=2"))
    names = sorted(p.name for p in Path(glob_run.output).iterdir() if p.name.startswith(("predictions-", "errors")))
    assert len(names) == 3
    for name in names:
        assert (tmp_path / "again" / name).read_bytes() == (Path(glob_run.output) / name).read_bytes(), name
    assert again.fingerprint == glob_run.fingerprint


def test_a_model_shared_across_processes_gives_the_same_rows(glob_run, tiny_export, inputs, tmp_path):
    # One copy of the model in its own process (Beam's multi_process_shared), batches sent to it.
    shared = run_batch_predict(tiny_export, inputs.glob, str(tmp_path / "shared"), config(
        "batch_predict.output_shards=2", "batch_predict.share_model=true"))
    assert prediction_rows(shared.output) == prediction_rows(glob_run.output)
    assert errors(shared.output) == inputs.reasons


def test_ingest_records_are_scored_by_their_source_uri(tiny_run, tiny_export, tmp_path):
    result = run_batch_predict(tiny_export, tiny_run.ingest, str(tmp_path / "out"), config(), splits=["valid", "test"])
    shards = [s for s in read_manifest(tiny_run.ingest, "ingest").outputs["shards"] if s["split"] != "train"]
    assert result.summary["inputs"] == sum(s["records"] for s in shards) == result.summary["predictions"]
    assert result.summary["errors"] == 0
    # The records' own bytes through serving_default, directly.
    records = [example_bytes(r, ("image/source", "image/encoded"))
               for s in shards for r in read_tfrecords(posixpath.join(tiny_run.ingest, s["file"]))]
    serve = tf.saved_model.load(tiny_export).signatures["serving_default"]
    probabilities = serve(image_bytes=tf.constant([r["image/encoded"] for r in records]))["probabilities"].numpy()
    reference = {r["image/source"].decode(): p for r, p in zip(records, probabilities)}
    labels = read_manifest(tiny_export, "export").outputs["labels"]
    check_rows_match_reference(prediction_rows(result.output), reference, labels)
    assert read_manifest(result.output, "batch_predict").inputs["dataset_fingerprint"] == \
        read_manifest(tiny_run.ingest, "ingest").fingerprint


def test_cli_scores_the_latest_version_of_a_model_base(tiny_export, inputs, tmp_path):
    output = tmp_path / "cli"
    done = subprocess.run(
        [sys.executable, "-m", "components.batch_predict", "--model", posixpath.dirname(tiny_export), "--input",
         inputs.glob, "--output", str(output), "--format", "parquet", *NO_TRACKING,
         *[arg for item in LIMITS for arg in ("--set", item)]],
        capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = read_json(str(output / "summary.json"))
    assert (summary["predictions"], summary["errors"]) == (len(inputs.good), len(inputs.reasons))
    assert summary["model"]["location"] == tiny_export
    assert "Scored" in done.stderr

    # A missing model is a usage error (exit 2, before TensorFlow loads); other errors exit 1 with one
    # clear line; an existing output needs --overwrite.
    with pytest.raises(SystemExit) as usage:
        main(["--model", str(tmp_path / "nothing"), "--input", inputs.glob, "--output", str(tmp_path / "x"),
              *NO_TRACKING])
    assert usage.value.code == 2
    assert main(["--model", tiny_export, "--input", str(tmp_path / "none-*.jpg"), "--output", str(tmp_path / "x"),
                 *NO_TRACKING]) == 1
    assert main(["--model", tiny_export, "--input", inputs.glob, "--output", str(output), *NO_TRACKING]) == 1
    assert not (tmp_path / "x").exists()


def test_config_errors_name_the_key():
    for override, key in (("batch_predict.format=xml", "batch_predict.format"),
                          ("batch_predict.batch_size=0", "batch_predict.batch_size"),
                          ("batch_predict.remote_retries=-1", "batch_predict.remote_retries"),
                          ("batch_predict.remote_timeout_seconds=0", "batch_predict.remote_timeout_seconds")):
        with pytest.raises(ConfigError, match=key):
            load_config(overrides=[override])


# ---- remote: the project's server (serving.model_server.ModelServer) on loopback ------------------------------


@pytest.fixture(scope="module")
def model_server(tiny_export):
    from serving.options import ServerOptions
    from serving.model_server import ModelServer

    with ModelServer(ServerOptions(model_name="tiny", model_base_path=posixpath.dirname(tiny_export), port=0,
                                   rest_api_port=0)) as server:
        yield server


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_endpoint_predictions_equal_in_process(protocol, model_server, csv_run, tiny_export, inputs, tmp_path):
    ports = model_server.ports
    url = (f"http://127.0.0.1:{ports.rest}/v1/models/tiny" if protocol == "rest"
           else f"grpc://127.0.0.1:{ports.grpc}/tiny")
    result = run_batch_predict(url, str(inputs.csv), str(tmp_path / "out"), config(
        "batch_predict.output_shards=2", "batch_predict.probabilities=true",
        "batch_predict.remote_max_concurrent_requests=2"), labels=posixpath.join(tiny_export, "assets", "labels.txt"))
    assert result.summary["model"]["kind"] == protocol and result.summary["model"]["version"] == "1"
    assert result.summary["model"]["location"].endswith("/tiny/versions/1")  # pinned
    remote, local = prediction_rows(result.output), prediction_rows(csv_run.output)
    assert [r["uri"] for r in remote] == [r["uri"] for r in local]
    for r, lr in zip(remote, local):
        np.testing.assert_allclose(r["probabilities"], lr["probabilities"], atol=1e-6)
        assert (r["label"], r["class_id"], [t["class_id"] for t in r["top_k"]]) == \
            (lr["label"], lr["class_id"], [t["class_id"] for t in lr["top_k"]])
    assert errors(result.output) == errors(csv_run.output)


def test_an_endpoint_without_labels_needs_them_for_top_k(model_server, inputs, tmp_path):
    url = f"http://127.0.0.1:{model_server.ports.rest}/v1/models/tiny"
    with pytest.raises(ValueError, match="--labels"):
        run_batch_predict(url, inputs.glob, str(tmp_path / "out"), config())
    result = run_batch_predict(url, inputs.glob, str(tmp_path / "out"), config("batch_predict.top_k=1"))
    assert result.summary["predictions"] == len(inputs.good)


class FlakyRestProxy:
    """A fault-injecting HTTP proxy in front of the real server: the first `script` requests get the
    scripted status (or "sleep": no answer within the client's timeout); then it forwards."""

    def __init__(self, upstream: str, script: list):
        self.script, self.seen = list(script), []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                step = proxy.script.pop(0) if proxy.script else None
                proxy.seen.append((method, self.path, step))
                if step == "sleep":
                    time.sleep(1.5)
                    return
                if step is not None:
                    status, text = step, json.dumps({"error": f"scripted {step}"}).encode()
                else:
                    upstream_response = requests.request(method, upstream + self.path, data=body or None, timeout=30)
                    status, text = upstream_response.status_code, upstream_response.content
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(text)))
                    self.end_headers()
                    self.wfile.write(text)
                except OSError:  # the client gave up
                    pass

            def do_GET(self):
                self._answer("GET")

            def do_POST(self):
                self._answer("POST")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def remote_settings(*overrides: str):
    return config("batch_predict.batch_size=2", "batch_predict.remote_max_concurrent_requests=1",
                  "batch_predict.remote_retries=3", "batch_predict.remote_backoff_seconds=0.01",
                  "batch_predict.remote_timeout_seconds=1", *overrides).batch_predict


def check_scorer_results(results, images: dict[str, bytes], reference: dict[str, np.ndarray]) -> None:
    for (uri, _), result in zip(images.items(), results):
        if uri in reference:
            assert isinstance(result, Prediction)
            np.testing.assert_allclose([p for _, p in sorted(result.top_k)], reference[uri], atol=1e-6)
        else:
            assert isinstance(result, Failure) and result.reason == "corrupt"


def test_rest_scorer_retries_overload_and_timeouts_and_isolates_bad_images(model_server, inputs, reference):
    images = {uri: Path(uri).read_bytes() for uri in inputs.good[:3]}
    images[str(inputs.folder / "half.jpg")] = (inputs.folder / "half.jpg").read_bytes()
    proxy = FlakyRestProxy(f"http://127.0.0.1:{model_server.ports.rest}", [503, "sleep", 429])
    try:
        endpoint = resolve(Endpoint("rest", proxy.host, "tiny"), remote_settings())  # GET: 503, timeout, 429, ok
        assert endpoint.version == "1" and endpoint.input_name == "image_bytes"
        proxy.script = [504]
        results = RestScorer(endpoint, remote_settings(), 3, False).score(list(images.values()))
        check_scorer_results(results, images, reference)
        # [good, good] after a 504; [good, corrupt] -> 400 -> [good], [corrupt] -> 400.
        assert [(m, step) for m, _, step in proxy.seen] == [
            ("GET", 503), ("GET", "sleep"), ("GET", 429), ("GET", None), ("POST", 504), ("POST", None),
            ("POST", None), ("POST", None), ("POST", None)]
        assert all(path == "/v1/models/tiny/versions/1:predict" for m, path, _ in proxy.seen if m == "POST")

        two = list(images.values())[:2]  # one request
        proxy.script = [503] * 4  # more than the retries
        with pytest.raises(EndpointError, match="still failing after 4 attempts"):
            RestScorer(endpoint, remote_settings(), 3, False).score(two)
        proxy.script = [500]  # not retryable, not about an input
        with pytest.raises(EndpointError, match="HTTP 500"):
            RestScorer(endpoint, remote_settings(), 3, False).score(two)
    finally:
        proxy.close()


def test_grpc_scorer_retries_unavailable_and_isolates_bad_images(model_server, inputs, reference):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    upstream = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(f"127.0.0.1:{model_server.ports.grpc}"))
    script = ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]
    seen = []

    class FlakyPredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        """Fault-injecting gRPC proxy in front of the real server."""

        def Predict(self, request, context):
            step = script.pop(0) if script else None
            seen.append((request.model_spec.version.value, step))
            if step:
                context.abort(getattr(grpc.StatusCode, step), f"scripted {step}")
            try:
                return upstream.Predict(request, timeout=30)
            except grpc.RpcError as e:
                context.abort(e.code(), e.details())

        def GetModelMetadata(self, request, context):
            return upstream.GetModelMetadata(request, timeout=30)

    server = grpc.server(futures.ThreadPoolExecutor(4))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(FlakyPredictionService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        endpoint = resolve(Endpoint("grpc", f"127.0.0.1:{port}", "tiny"), remote_settings())
        images = {uri: Path(uri).read_bytes() for uri in inputs.good[3:6]}
        images[str(inputs.folder / "half.png")] = (inputs.folder / "half.png").read_bytes()
        results = GrpcScorer(endpoint, remote_settings(), 3, False).score(list(images.values()))
        check_scorer_results(results, images, reference)
        assert seen == [(1, "UNAVAILABLE"), (1, "RESOURCE_EXHAUSTED")] + [(1, None)] * 4
    finally:
        server.stop(None)


def test_an_unreachable_endpoint_fails_the_run_clearly(inputs, tmp_path):
    with pytest.raises(EndpointError, match="still failing after 2 attempts"):
        run_batch_predict("grpc://127.0.0.1:9/tiny", inputs.glob, str(tmp_path / "out"), config(
            "batch_predict.remote_retries=1", "batch_predict.remote_backoff_seconds=0",
            "batch_predict.remote_timeout_seconds=2"))
    assert not list(tmp_path.iterdir())  # no output, no work directory left behind


# ---- a registered MLflow model ------------------------------------------------------------------------


def test_registered_model_versions_and_aliases_are_scored(tiny_export, inputs, reference, tmp_path):
    settings = config("tracking.registered_model=batch-predict-test")
    run_id = start_run(settings)
    register_model(tiny_export, settings, run_id=run_id, blessed=True)
    for uri in ("models:/batch-predict-test@champion", "models:/batch-predict-test/1"):
        output = tmp_path / uri.replace("/", "_").replace(":", "").replace("@", "_")
        result = run_batch_predict(uri, inputs.glob, str(output), settings)
        assert (result.summary["model"]["name"], result.summary["model"]["version"]) == ("batch-predict-test", "1")
        rows = prediction_rows(str(output))
        assert {r["model_name"] for r in rows} == {"batch-predict-test"}
        labels = read_manifest(tiny_export, "export").outputs["labels"]
        check_rows_match_reference([{**r, "model_name": "tiny"} for r in rows], reference, labels)
    with pytest.raises(ValueError, match="not in the MLflow registry"):
        run_batch_predict("models:/batch-predict-test@nope", inputs.glob, str(tmp_path / "nope"), settings)

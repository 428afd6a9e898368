"""Online serving: this project's model server (REST and gRPC) against the in-process SavedModel call.

The served model is the export stage's output for small_cnn trained one epoch on the demo data at
224x224 (accuracy is irrelevant here; the graph and sizes are the real ones), and every request is
one 224x224 JPEG for `serving_default`. The server runs as `python -m serving.server` in its own
process (its own GIL, its RSS measurable); clients are threads of this process on the same 2 cores.

Rows, each against a baseline measured in the same run:
- in-process `signatures["serving_default"]` on 1 image (latency) and on a batch of 16 (images/s);
- the in-graph header check (components.image_header) alone on the same batch of 16: its share of
  `serving_default`'s time (target < 5 %);
- REST and gRPC predict, 1 and 16 concurrent clients, batching off and on: p50/p99 latency and
  requests/s. Targets: REST p50 overhead <= 3 ms over in-process (1 client, one image); with 16
  clients and batching on, throughput >= 0.7x the in-process call at batch 16;
- a 60 s load of 16 clients (8 REST, 8 gRPC, batching on): errors (target 0) and server RSS growth
  (target < 10 %);
- REST and gRPC, 16 clients, batching on, with prediction logging (`logging_config`) at sampling_rate
  0.01 (target: >= 0.97x unlogged) and 1.0 (every request: the most logging can cost) against the same
  variants unlogged; the records written (none torn).

Each measured variant runs `BenchSettings.seconds` (6 s) after its warm-up, the load `load_seconds` (60 s).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf
from PIL import Image

from bench.fixtures import ExportedModel, ModelSpec, demo_images, exported_model, image_files
from bench.settings import BENCH_DIR, BenchSettings
from components import prediction_logs
from components.artifacts import IMAGE_INPUT, SERVING_SIGNATURE
from components.image_header import check_image_bytes
from components.manifest import read_manifest
from serving.client import RestClient
from serving.grpc_client import GrpcClient

logger = logging.getLogger(__name__)

MODEL = "cvpipe-classifier"
IMAGE_SIZE = 224
SERVED_MODEL = ModelSpec(MODEL, IMAGE_SIZE, epochs=1)
BATCH = 16
LOGGING_RATES = (0.01, 1.0)  # prediction logging: the sampling a user would run, and every request
CLIENTS = (1, BATCH)
LOAD_WARMUP_SECONDS = 5.0  # the load test's steady state before the first RSS reading
ROOT = BENCH_DIR.parent
# TF Serving's CPU advice: one batch thread per core, a short timeout.
BATCHING = (f"max_batch_size {{ value: {BATCH} }} batch_timeout_micros {{ value: 2000 }} "
            f"num_batch_threads {{ value: {os.cpu_count() or 1} }} max_enqueued_batches {{ value: 64 }}")


def _jpeg(images_dir: Path) -> bytes:
    """A 224x224 JPEG made from the first JPEG demo image of `images_dir`."""
    source = next(p for p in map(Path, image_files(images_dir)) if p.suffix.lower() in (".jpg", ".jpeg"))
    buffer = io.BytesIO()
    Image.open(source).convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@dataclass
class Measured:
    """Latencies (seconds) and errors of one run; its wall time."""

    latencies: list[float]
    errors: int
    seconds: float

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")


def _drive(clients: list[Callable[[], None]], seconds: float, warmup: int = 3) -> Measured:
    """Each client callable in its own thread, in a loop for `seconds` (after `warmup` calls each)."""
    latencies: list[float] = []
    errors = [0]
    start, ready = threading.Barrier(len(clients) + 1), threading.Event()

    def loop(call: Callable[[], None]) -> None:
        for _ in range(warmup):
            try:
                call()
            except Exception:  # counted below if it persists
                pass
        start.wait()
        ready.wait()
        while time.monotonic() < deadline:
            began = time.perf_counter()
            try:
                call()
            except Exception:  # counted: the load test's target is zero
                errors[0] += 1
                continue
            latencies.append(time.perf_counter() - began)

    threads = [threading.Thread(target=loop, args=(call,)) for call in clients]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.monotonic()
    deadline = began + seconds
    ready.set()
    for thread in threads:
        thread.join()
    return Measured(latencies, errors[0], time.monotonic() - began)


def _rest_call(url: str, body: bytes) -> Callable[[], None]:
    client = RestClient(url)

    def call() -> None:
        status, answer = client.call("POST", f"/v1/models/{MODEL}:predict", body)
        if status != 200:
            raise RuntimeError(answer[:200])
        json.loads(answer)
    return call


def _grpc_call(target: str, jpeg: bytes) -> Callable[[], None]:
    client = GrpcClient(target)
    request = client.predict_request(MODEL, {IMAGE_INPUT: np.array([jpeg], dtype=object)})
    return lambda: client.prediction.Predict(request, 30)


class _Server:
    """`python -m serving.server` in a subprocess, on free ports."""

    def __init__(self, base: Path, batching_file: Path | None, log_prefix: Path | None = None,
                 sampling_rate: float = 1.0):
        self.rest_port, self.grpc_port = _free_port(), _free_port()
        command = [sys.executable, "-m", "serving.server", f"--port={self.grpc_port}", f"--rest_api_port={self.rest_port}"]
        if log_prefix is None:
            command += [f"--model_name={MODEL}", f"--model_base_path={base.resolve()}"]
        else:
            log_prefix.parent.mkdir(parents=True, exist_ok=True)
            config = log_prefix.parent / "models.config"
            config.write_text(
                f'model_config_list {{ config {{ name: "{MODEL}" base_path: "{base.resolve()}" model_platform: '
                f'"tensorflow" logging_config {{ log_collector_config {{ type: "file" filename_prefix: '
                f'"{log_prefix.resolve()}" }} sampling_config {{ sampling_rate: {sampling_rate} }} }} }} }}')
            command += [f"--model_config_file={config}"]
        if batching_file is not None:
            command += ["--enable_batching", f"--batching_parameters_file={batching_file}"]
        self.process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "CVPIPE_LOG_LEVEL": "WARNING"})
        client, started = RestClient(f"http://127.0.0.1:{self.rest_port}"), time.monotonic()
        while True:
            try:
                if client.status(MODEL)[0]["state"] == "AVAILABLE":
                    break
            except Exception:  # not listening yet
                if self.process.poll() is not None or time.monotonic() - started > 120:
                    raise RuntimeError(f"the server did not start: {' '.join(command)}")
                time.sleep(0.2)
        client.close()

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_process(model: ExportedModel, jpeg: bytes, settings: BenchSettings) -> tuple[list[Measured], list[float]]:
    """Baselines: single-image calls (latency) and images/s at batch 16, per repeat."""
    serve = tf.saved_model.load(str(model.version_dir)).signatures[SERVING_SIGNATURE]

    def call(images: list[bytes]) -> Callable[[], None]:
        return lambda: {k: v.numpy() for k, v in serve(**{IMAGE_INPUT: tf.constant(images)}).items()}

    singles = [_drive([call([jpeg])], settings.seconds) for _ in range(settings.repeats)]
    batches = [_drive([call([jpeg] * BATCH)], settings.seconds).rate * BATCH for _ in range(settings.repeats)]
    return singles, batches


def _header_check_row(model: ExportedModel, jpeg: bytes, batch_rate: float, settings: BenchSettings) -> dict:
    """The header check alone on a batch of 16 (the export's limit), against serving_default's rate."""
    max_pixels = read_manifest(str(model.version_dir), "export").outputs["max_pixels"]
    check = tf.function(lambda images: check_image_bytes(images, max_pixels))
    images = tf.constant([jpeg] * BATCH)
    rates = [_drive([lambda: check(images).numpy()], settings.seconds).rate * BATCH for _ in range(settings.repeats)]
    share = batch_rate / statistics.median(rates) * 100
    return {"benchmark": "serving", "variant": f"header check alone, batch of {BATCH}",
            "images_per_s": round(statistics.median(rates), 1),
            "vs_baseline": round(statistics.median(rates) / batch_rate, 1),
            "note": f"{share:.2f} % of serving_default's time per image (target < 5 %); images/s range "
                    f"{_range((min(rates), max(rates)))}"}


def _summary(runs: list[Measured]) -> dict:
    p50s, p99s, rates = [r.percentile(50) for r in runs], [r.percentile(99) for r in runs], [r.rate for r in runs]
    return {"p50_ms": round(statistics.median(p50s), 2), "p99_ms": round(statistics.median(p99s), 2),
            "rate": statistics.median(rates), "p50_range": (min(p50s), max(p50s)), "p99_range": (min(p99s), max(p99s)),
            "rate_range": (min(rates), max(rates)), "errors": sum(r.errors for r in runs),
            "requests": sum(len(r.latencies) for r in runs)}


def _range(values: tuple[float, float], digits: int = 1) -> str:
    return f"{values[0]:.{digits}f}-{values[1]:.{digits}f}"


def run(settings: BenchSettings) -> list[dict]:
    """The serving benchmark rows (requests are timed, not counted: `settings.images` is unused)."""
    model = exported_model(settings.data_dir, SERVED_MODEL, settings.train_images)
    jpeg = _jpeg(demo_images(settings.data_dir, settings.train_images))
    singles, batches = _in_process(model, jpeg, settings)
    single, batch_rate = _summary(singles), statistics.median(batches)
    rows = [
        {"benchmark": "serving", "variant": "in-process serving_default, 1 image (baseline)",
         "images": single["requests"], "images_per_s": round(single["rate"], 1), "vs_baseline": 1.0,
         "p50_ms": single["p50_ms"], "p99_ms": single["p99_ms"],
         "note": f"p50 {single['p50_ms']} ms (range {_range(single['p50_range'], 2)}), p99 {single['p99_ms']} ms; "
                 f"one {len(jpeg) // 1024} KB {IMAGE_SIZE}x{IMAGE_SIZE} JPEG"},
        {"benchmark": "serving", "variant": f"in-process serving_default, batch of {BATCH} (baseline)",
         "images_per_s": round(batch_rate, 1), "vs_baseline": 1.0,
         "note": f"images/s range {_range((min(batches), max(batches)))}"},
        _header_check_row(model, jpeg, batch_rate, settings),
    ]
    body = json.dumps({"instances": [{"b64": base64.b64encode(jpeg).decode()}]}).encode()
    batching_file = settings.data_dir / "serving" / "batching.config"
    batching_file.parent.mkdir(parents=True, exist_ok=True)
    batching_file.write_text(BATCHING)
    logging_dir = settings.data_dir / "serving" / "prediction_logs"
    shutil.rmtree(logging_dir, ignore_errors=True)
    logging_dir.mkdir(parents=True)
    unlogged: dict[str, dict] = {}
    for batching in (False, True):
        server = _Server(model.base, batching_file if batching else None)
        try:
            for transport in ("REST", "gRPC"):
                for clients in CLIENTS:
                    summary = _summary([_drive([_client(server, transport, body, jpeg) for _ in range(clients)],
                                               settings.seconds) for _ in range(settings.repeats)])
                    rows.append(_variant_row(transport, clients, batching, summary, single, batch_rate))
                    logger.info("%s", rows[-1]["variant"] + ": " + rows[-1]["note"])
                    if batching and clients == BATCH:
                        unlogged[transport] = summary
            if batching:
                rows.append(_load_row(server, body, jpeg, settings.load_seconds))
        finally:
            server.stop()
    for rate in LOGGING_RATES:
        server = _Server(model.base, batching_file, logging_dir / f"rate-{rate:g}" / MODEL, rate)
        try:
            for transport in ("REST", "gRPC"):
                summary = _summary([_drive([_client(server, transport, body, jpeg) for _ in range(BATCH)],
                                           settings.seconds) for _ in range(settings.repeats)])
                rows.append(_logged_row(transport, rate, summary, unlogged[transport]))
                logger.info("%s", rows[-1]["variant"] + ": " + rows[-1]["note"])
        finally:
            server.stop()
    rows[-1]["note"] += "; " + _logged_files(logging_dir)
    return rows


def _client(server: _Server, transport: str, body: bytes, jpeg: bytes) -> Callable[[], None]:
    if transport == "REST":
        return _rest_call(f"http://127.0.0.1:{server.rest_port}", body)
    return _grpc_call(f"127.0.0.1:{server.grpc_port}", jpeg)


def _logged_row(transport: str, rate: float, summary: dict, unlogged: dict) -> dict:
    """16 clients, batching on, requests logged at `rate`, against the same variant without logging."""
    note = (f"p50 {summary['p50_ms']} ms (unlogged {unlogged['p50_ms']} ms), p99 {summary['p99_ms']} ms "
            f"(unlogged {unlogged['p99_ms']} ms); req/s range {_range(summary['rate_range'])}; errors "
            f"{summary['errors']}; baseline: the same variant without logging"
            + (" (target >= 0.97)" if rate <= 0.01 else ""))
    return {"benchmark": "serving", "images": summary["requests"],
            "variant": f"{transport} predict, {BATCH} clients, batching on, logging_config sampling_rate {rate:g}",
            "images_per_s": round(summary["rate"], 1), "vs_baseline": round(summary["rate"] / unlogged["rate"], 2),
            "p50_ms": summary["p50_ms"], "p99_ms": summary["p99_ms"], "note": note}


def _logged_files(directory: Path) -> str:
    """What the logged variants wrote: records, bytes per record, torn records (must be none)."""
    records = size = torn = 0
    for path in prediction_logs.log_files([str(directory)]):
        reading = prediction_logs.FileReading(path)
        records += sum(1 for _ in prediction_logs.read_records(path, reading))
        size, torn = size + reading.complete_bytes, torn + reading.torn
    return (f"prediction logs: {records} records, {size / max(records, 1) / 1024:.1f} KB each, "
            f"{torn} torn files")


def _variant_row(transport: str, clients: int, batching: bool, summary: dict, single: dict,
                 batch_rate: float) -> dict:
    baseline = single["rate"] if clients == 1 else batch_rate
    note = (f"p50 {summary['p50_ms']} ms (range {_range(summary['p50_range'], 2)}), p99 {summary['p99_ms']} ms "
            f"(range {_range(summary['p99_range'], 2)}); req/s range {_range(summary['rate_range'])}; "
            f"errors {summary['errors']}")
    if clients == 1:
        overhead = summary["p50_ms"] - single["p50_ms"]
        note += f"; p50 overhead over in-process {overhead:+.2f} ms" + (
            " (target <= 3)" if transport == "REST" and not batching else "")
    else:
        note += f"; baseline: in-process batch of {BATCH}" + (" (target >= 0.7)" if batching else "")
    return {"benchmark": "serving", "images": summary["requests"],
            "variant": f"{transport} predict, {clients} client{'s' if clients > 1 else ''}, "
                       f"batching {'on' if batching else 'off'}",
            "images_per_s": round(summary["rate"], 1), "vs_baseline": round(summary["rate"] / baseline, 2),
            "p50_ms": summary["p50_ms"], "p99_ms": summary["p99_ms"], "note": note}


def _load_row(server: _Server, body: bytes, jpeg: bytes, seconds: float) -> dict:
    """`seconds` (60 for `make bench`) of 16 clients (half REST, half gRPC): errors and the server's RSS growth."""
    clients = [_rest_call(f"http://127.0.0.1:{server.rest_port}", body) for _ in range(BATCH // 2)]
    clients += [_grpc_call(f"127.0.0.1:{server.grpc_port}", jpeg) for _ in range(BATCH // 2)]
    _drive(clients, min(LOAD_WARMUP_SECONDS, seconds))
    before = server.rss_mb()
    measured = _drive(clients, seconds, warmup=0)
    after = server.rss_mb()
    growth = (after - before) / before * 100
    row = {"benchmark": "serving", "variant": f"load: {seconds:g} s, {BATCH} clients "
                                              f"({BATCH // 2} REST + {BATCH // 2} gRPC), batching on",
           "images": len(measured.latencies), "seconds": round(measured.seconds, 1),
           "images_per_s": round(measured.rate, 1), "errors": measured.errors, "rss_growth_percent": round(growth, 2),
           "note": f"errors {measured.errors} (target 0); server RSS {before:.0f} -> {after:.0f} MB "
                   f"({growth:+.1f} %, target < 10 %); p50 {measured.percentile(50):.1f} ms, "
                   f"p99 {measured.percentile(99):.1f} ms"}
    logger.info("%s: %s", row["variant"], row["note"])
    return row


if __name__ == "__main__":  # python -m bench.serving: this benchmark alone, rows as JSON lines
    from components.logging_setup import configure_logging

    configure_logging()
    for result in run(BenchSettings()):
        print(json.dumps(result))

"""Batch scoring throughput: Beam RunInference (in process, and against a serving endpoint) against a
plain single-process loop calling the SavedModel's `serving_default` in batches of the same size.

Model: small_cnn at 96x96 trained briefly on the demo data and exported (bench.fixtures caches it).
Inputs: the demo images (JPEG and PNG, 48-512 px), as files.

Two rates per Beam variant: steady-state (from the first model call to the last, over all workers:
`scoring_images_per_second` of summary.json) and end-to-end (the whole stage: worker start-up, model
loading, writing the outputs). The baseline's steady-state rate excludes loading the model, its
end-to-end rate includes it. Targets: in-process Beam >= 1.2x the baseline, remote >= 0.6x.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

from bench.fixtures import ModelSpec, demo_images, exported_model, image_files
from bench.settings import BenchSettings
from components.artifacts import IMAGE_INPUT, MODEL_LABELS_FILE, PROBABILITIES, SERVING_SIGNATURE
from components.config import load_config

logger = logging.getLogger(__name__)

BATCH = 64
MODEL_NAME = "small_cnn"
IMAGE_SIZE = 96
SCORED_MODEL = ModelSpec(MODEL_NAME, IMAGE_SIZE, epochs=3, model=MODEL_NAME)


def baseline_loop(model_dir: str, uris: list[str], batch_size: int = BATCH) -> tuple[float, float, int]:
    """One Python process: load the model, then read each batch of files and call `serving_default`.
    Returns (seconds to load, seconds of the loop, images scored)."""
    import tensorflow as tf

    started = time.perf_counter()
    serve = tf.saved_model.load(model_dir).signatures[SERVING_SIGNATURE]
    loaded = time.perf_counter()
    scored = 0
    for start in range(0, len(uris), batch_size):
        batch = []
        for uri in uris[start:start + batch_size]:
            with open(uri, "rb") as f:
                batch.append(f.read())
        scored += len(serve(**{IMAGE_INPUT: tf.constant(batch)})[PROBABILITIES].numpy())
    return loaded - started, time.perf_counter() - loaded, scored


def _beam(model: str, source: str, overrides: list[str], labels: str | None = None) -> tuple[float, float]:
    """(end-to-end seconds, steady-state seconds) of one batch_predict run."""
    from components.batch_predict.run import run_batch_predict

    out = tempfile.mkdtemp(prefix="cvpipe-bench-")
    shutil.rmtree(out)
    try:
        started = time.perf_counter()
        result = run_batch_predict(model, source, out, load_config(overrides=["tracking.enabled=false",
                                                                              f"batch_predict.batch_size={BATCH}",
                                                                              *overrides]), labels=labels)
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if result.summary["errors"]:
        raise RuntimeError(f"benchmark run had errors: {result.summary['errors_by_reason']}")
    return seconds, result.summary["scoring_seconds"] or seconds


class _Server:
    """The project's TF-Serving-compatible server (serving.model_server.ModelServer) over the benchmark
    model, in this process, on free loopback ports."""

    def __init__(self, model_dir: str):
        from serving.options import ServerOptions
        from serving.model_server import ModelServer

        self._server = ModelServer(ServerOptions(model_name=MODEL_NAME, port=0, rest_api_port=0,
                                                 model_base_path=str(Path(model_dir).parent.resolve())))
        ports = self._server.start()
        self.rest_url = f"http://127.0.0.1:{ports.rest}/v1/models/{MODEL_NAME}"
        self.grpc_url = f"grpc://127.0.0.1:{ports.grpc}/{MODEL_NAME}"

    def stop(self) -> None:
        self._server.stop()


def run(settings: BenchSettings) -> list[dict]:
    """The batch scoring rows: `settings.images` demo images scored by every variant."""
    repeats = settings.repeats
    source = demo_images(settings.data_dir, settings.images)
    uris = image_files(source)
    count = len(uris)
    model_dir = str(exported_model(settings.data_dir, SCORED_MODEL, settings.train_images).version_dir)
    glob = str(source / "*" / "*")

    variants = {
        "beam RunInference, DirectRunner multi_processing x2": lambda: _beam(model_dir, glob, []),
        "beam RunInference, DirectRunner multi_processing x2, share_model": lambda: _beam(
            model_dir, glob, ["batch_predict.share_model=true"]),
        # Worker threads in this process: no worker start-up, one shared model; TensorFlow runs the
        # in-graph decoding and the model outside the GIL.
        "beam RunInference, DirectRunner multi_threading x2, share_model": lambda: _beam(
            model_dir, glob, ["beam.direct_running_mode=multi_threading", "batch_predict.share_model=true"]),
    }
    try:
        server = _Server(model_dir)
    except ImportError as e:  # the server is a separate package of this repository
        logger.warning("remote variants skipped: serving.model_server is not available (%s)", e)
        server = None
    if server is not None:
        labels = str(Path(model_dir, MODEL_LABELS_FILE))
        variants["beam -> endpoint, REST (project server on loopback), x2"] = lambda: _beam(
            server.rest_url, glob, [], labels)
        variants["beam -> endpoint, gRPC (project server on loopback), x2"] = lambda: _beam(
            server.grpc_url, glob, [], labels)

    baseline_runs, runs = [], {name: [] for name in variants}
    try:
        for repeat in range(repeats):
            load, loop, scored = baseline_loop(model_dir, uris)
            assert scored == count
            baseline_runs.append((load + loop, loop))
            logger.info("repeat %d baseline: %.2f s (%.2f s loading)", repeat + 1, load + loop, load)
            for name, variant in variants.items():
                runs[name].append(variant())
                logger.info("repeat %d %s: %.2f s (steady %.2f s)", repeat + 1, name, *runs[name][-1])
    finally:
        if server is not None:
            server.stop()

    def rates(measured: list[tuple[float, float]]) -> tuple[float, float, str]:
        total, steady = min(m[0] for m in measured), min(m[1] for m in measured)
        spread = sorted(count / m[1] for m in measured)
        return count / total, count / steady, f"{spread[0]:.0f}-{spread[-1]:.0f}"

    base_total, base_steady, base_range = rates(baseline_runs)
    rows = [{
        "benchmark": "batch_predict",
        "variant": f"baseline: single-process loop, serving_default in batches of {BATCH}",
        "images": count, "seconds": round(count / base_steady, 2), "images_per_s": round(base_steady, 1),
        "vs_baseline": 1.0,
        "note": f"{MODEL_NAME} {IMAGE_SIZE}x{IMAGE_SIZE}; steady-state (model loaded), runs {base_range} img/s; "
                f"with model loading {base_total:.0f} img/s",
    }]
    for name, measured in runs.items():
        total, steady, spread = rates(measured)
        target = "0.6" if "endpoint" in name else "1.2"
        rows.append({
            "benchmark": "batch_predict", "variant": name, "images": count, "seconds": round(count / steady, 2),
            "images_per_s": round(steady, 1), "vs_baseline": round(steady / base_steady, 2),
            "note": f"steady-state (target >= {target}), runs {spread} img/s; end-to-end incl. worker start-up "
                    f"{total:.0f} img/s = {total / base_total:.2f}x the baseline's incl. model loading",
        })
    if server is None:
        rows.append({"benchmark": "batch_predict", "variant": "beam -> endpoint (REST, gRPC)",
                     "note": "not measured: the project's server (serving.model_server.ModelServer) is not available"})
    return rows

"""Ingest throughput: the Beam pipeline against a plain single-process loop, same images, same run."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import tensorflow as tf

from bench.fixtures import demo_images, image_files
from bench.settings import BenchSettings
from components import records
from components.config import Config, load_config
from components.image_inputs import read_file
from components.ingest.images import MAX_FILE_BYTES_SETTING, check_image, stored_bytes
from components.ingest.lookahead import available_cpus
from components.ingest.pipeline import serialize_record
from components.ingest.run import run_ingest
from components.ingest.sources import list_inputs
from components.ingest.splits import assign_split
from components.rejections import ImageRejected

logger = logging.getLogger(__name__)


def baseline_ingest(input_dir: str, output_dir: str, config: Config) -> int:
    """One Python process reads, checks and writes each image in turn with tf.io.TFRecordWriter."""
    inputs = list_inputs(input_dir)
    tf.io.gfile.makedirs(output_dir)
    label_ids = {label: i for i, label in enumerate(inputs.labels)}
    options = tf.io.TFRecordOptions(compression_type=records.COMPRESSION,
                                    compression_level=config.ingest.compression_level)
    writers = {s: tf.io.TFRecordWriter(f"{output_dir}/{s}{records.SHARD_SUFFIX}", options) for s in records.SPLITS}
    written = 0
    for image in inputs.images:
        try:
            data = read_file(image.uri, config.ingest.max_file_bytes, MAX_FILE_BYTES_SETTING)
            checked = check_image(data, config.ingest)
        except ImageRejected:
            continue
        writers[assign_split(checked.sha256, config.ingest.splits)].write(
            serialize_record(image, checked, stored_bytes(data, checked), label_ids[image.label]))
        written += 1
    for writer in writers.values():
        writer.close()
    return written


BASELINE = "baseline: single-process loop"
DEFAULT = f"beam DirectRunner default: in memory, ingest.threads={available_cpus()} (one per CPU)"
VARIANTS: dict[str, Callable[[str, str], object]] = {
    BASELINE: lambda source, out: baseline_ingest(source, out, load_config()),
    DEFAULT: lambda source, out: run_ingest(source, out, load_config()),
    "beam DirectRunner multi_processing x2, ingest.threads=1": lambda source, out: run_ingest(
        source, out, load_config(overrides=["beam.direct_running_mode=multi_processing", "ingest.threads=1"])),
    "beam DirectRunner multi_threading x2, ingest.threads=1": lambda source, out: run_ingest(
        source, out, load_config(overrides=["beam.direct_running_mode=multi_threading", "ingest.threads=1"])),
}


def run(settings: BenchSettings) -> list[dict]:
    """Every variant on `settings.images` images, then the baseline and the default on three times as many.

    The two sizes also give the default's marginal rate: the time per extra image, without the
    fixed cost of starting and finishing a Beam job.
    """
    small_rows, small = _measure(settings.data_dir, settings.images, settings.repeats, VARIANTS)
    large_rows, large = _measure(settings.data_dir, 3 * settings.images, settings.repeats,
                                 {name: VARIANTS[name] for name in (BASELINE, DEFAULT)}, suffix=", 3x the images")
    return small_rows + large_rows + [_marginal(small, large)]


@dataclass(frozen=True)
class Timing:
    images: int
    seconds: dict[str, float]  # the fastest run of each variant


def _measure(data_dir: Path, images: int, repeats: int, variants: dict[str, Callable[[str, str], object]],
             suffix: str = "") -> tuple[list[dict], Timing]:
    source = demo_images(data_dir, images)
    files = image_files(source)
    source_mb = sum(Path(f).stat().st_size for f in files) / 1e6
    count = len(files)
    best: dict[str, float] = {}
    record_bytes = {}
    for repeat in range(repeats):
        for name, variant in variants.items():
            out = tempfile.mkdtemp(prefix="cvpipe-bench-")
            shutil.rmtree(out)
            started = time.perf_counter()
            variant(str(source), out)
            seconds = time.perf_counter() - started
            record_bytes[name] = sum(p.stat().st_size for p in Path(out).glob(f"*{records.SHARD_SUFFIX}"))
            shutil.rmtree(out)
            best[name] = min(seconds, best.get(name, float("inf")))
            logger.info("%d images, repeat %d, %s: %.2f s", count, repeat + 1, name, seconds)

    baseline = best[BASELINE]
    rows = [
        {
            "benchmark": "ingest",
            "variant": name + suffix,
            "images": count,
            "seconds": round(seconds, 2),
            "images_per_s": round(count / seconds, 1),
            "mb_per_s": round(source_mb / seconds, 2),
            "vs_baseline": round(baseline / seconds, 2),
            "note": f"records {record_bytes[name] / (source_mb * 1e6):.3f}x source bytes ({source_mb:.0f} MB)",
        }
        for name, seconds in best.items()
    ]
    return rows, Timing(count, best)


def _marginal(small: Timing, large: Timing) -> dict:
    """The default's seconds per extra image from the small to the large run, against the baseline's."""
    extra = large.images - small.images
    beam, baseline = ((large.seconds[name] - small.seconds[name]) / extra for name in (DEFAULT, BASELINE))
    row = {"benchmark": "ingest", "variant": DEFAULT + ", marginal rate", "images": extra}
    if beam <= 0 or baseline <= 0:  # noise larger than the work added: no rate to report
        return {**row, "note": f"not measurable: a larger run was not slower ({beam:.5f} / {baseline:.5f} s per image)"}
    return {
        **row,
        "images_per_s": round(1 / beam, 1),
        "vs_baseline": round(baseline / beam, 2),
        "note": f"time per extra image from {small.images} to {large.images} images: the job's fixed start and "
                f"finish excluded (about {small.seconds[DEFAULT] - beam * small.images:.2f} s)",
    }

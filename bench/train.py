"""Transform and training throughput, and whether the input pipeline keeps training fed.

Rows: transform images/s; training images/s of small_cnn (64x64, the default) and mobilenet_v2 (224x224,
random weights); the input pipeline alone (cached, as from the second epoch on, and uncached)
against what training consumes (target >= 3x); training with the real input pipeline against the
same batches held in memory (target >= 0.9).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras

from components.artifacts import TransformStats
from components.config import load_config
from components.demo_data import generate_demo_dataset
from components.ingest.run import run_ingest
from components.train.inputs import make_dataset
from components.train.models import build_model
from components.train.run import compile_model
from components.transform.run import run_transform

logger = logging.getLogger(__name__)

PER_CLASS = 300
BATCH = 32


class _EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = getattr(self, "seconds", []) + [time.perf_counter() - self._started]


def _training_rate(model: keras.Model, data: tf.data.Dataset, steps: int, repeats: int) -> float:
    """Images/s of `fit` over one iterator, as in real training; the first epoch (a full pass,
    filling caches and tracing) is the warm-up."""
    timer = _EpochTimer()
    model.fit(data, epochs=1 + repeats, steps_per_epoch=steps, callbacks=[timer], verbose=0)
    return steps * BATCH / min(timer.seconds[1:])


def _iteration_rate(data: tf.data.Dataset, steps: int, repeats: int) -> float:
    iterator = iter(data)
    for _ in range(steps):  # warm-up pass
        next(iterator)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(steps):
            next(iterator)
        best = min(best, time.perf_counter() - started)
    return steps * BATCH / best


def transformed_demo(data_dir: Path, image_size: int) -> tuple[str, float]:
    """The demo data ingested and transformed at `image_size`; and the transform's images/s."""
    images = data_dir / f"demo-seed0-{PER_CLASS}"
    generate_demo_dataset(images, seed=0, per_class=PER_CLASS)
    config = load_config(overrides=[f"transform.image_size={image_size}"])
    ingest = run_ingest(str(images), str(data_dir / "ingest"), config, overwrite=True)
    result = run_transform(ingest.output, str(data_dir / f"transform-{image_size}"), config, overwrite=True)
    return result.output, result.stats.images_per_second


def run(data_dir: Path, images: int, repeats: int) -> list[dict]:
    del images  # the demo dataset's default size: 1500 images
    rows = []
    for model_name, image_size in (("small_cnn", 64), ("mobilenet_v2", 224)):
        transform_dir, transform_rate = transformed_demo(data_dir, image_size)
        rows.append({"benchmark": "transform", "variant": f"tf.transform Beam job, {image_size}x{image_size}",
                     "images": PER_CLASS * 5, "images_per_s": round(transform_rate, 1)})
        config = load_config(overrides=[f"train.model={model_name}", f"train.batch_size={BATCH}"])
        stats = TransformStats.read(transform_dir)
        built = build_model(config.train, 5, image_size, stats.channel_mean, stats.channel_std)
        compile_model(built.model, 0.001, config.train, 1000)
        data = make_dataset(transform_dir, "train", BATCH, training=True)
        steps = -(-stats.images["train"] // BATCH)  # one pass over the training split per epoch
        train_rate = _training_rate(built.model, data, steps, repeats)
        input_rate = _iteration_rate(data, steps, repeats)
        uncached_rate = _iteration_rate(
            make_dataset(transform_dir, "train", BATCH, training=True, cache=False), steps, repeats)
        held = list(data.take(steps).as_numpy_iterator())
        in_memory = tf.data.Dataset.from_tensor_slices(
            (np.concatenate([x for x, _ in held]), np.concatenate([y for _, y in held]))).batch(BATCH).repeat()
        memory_rate = _training_rate(built.model, in_memory, steps, repeats)
        variant = f"{model_name} {image_size}x{image_size}, batch {BATCH}, 2 CPU cores"
        rows += [
            {"benchmark": "train", "variant": variant + ": training, real input pipeline",
             "images_per_s": round(train_rate, 1), "vs_baseline": round(train_rate / memory_rate, 2),
             "note": "baseline: the same batches held in memory (target >= 0.9)"},
            {"benchmark": "train", "variant": variant + ": input pipeline alone",
             "images_per_s": round(input_rate, 1), "vs_baseline": round(input_rate / train_rate, 2),
             "note": "baseline: images/s training consumes (target >= 3)"},
            {"benchmark": "train", "variant": variant + ": input pipeline alone, no cache (first epoch)",
             "images_per_s": round(uncached_rate, 1), "vs_baseline": round(uncached_rate / train_rate, 2),
             "note": "decode + transform graph on every pass"},
            {"benchmark": "train", "variant": variant + ": training, batches in memory",
             "images_per_s": round(memory_rate, 1), "vs_baseline": 1.0},
        ]
        logger.info("%s: train %.0f images/s, input alone %.0f, in-memory %.0f", model_name, train_rate,
                    input_rate, memory_rate)
    return rows

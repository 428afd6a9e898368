"""Transform and training throughput, and whether the input pipeline keeps training fed.

Rows: transform images/s; training images/s of small_cnn (64x64, the default) and mobilenet_v2 (224x224,
random weights); the input pipeline alone (cached, as from the second epoch on, and uncached)
against what training consumes (target >= 3x); training with the real input pipeline against the
same batches held in memory (target >= 0.9).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import tensorflow as tf
import tf_keras as keras

from bench.fixtures import transformed
from bench.settings import BenchSettings
from components.config import load_config
from components.demo_data import CLASSES
from components.train.inputs import make_dataset
from components.train.models import build_model
from components.train.run import compile_model

logger = logging.getLogger(__name__)

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


def run(settings: BenchSettings) -> list[dict]:
    """The transform and train rows, on `settings.train_images` demo images."""
    repeats = settings.repeats
    rows = []
    for model_name, image_size in (("small_cnn", 64), ("mobilenet_v2", 224)):
        transform = transformed(settings.data_dir, settings.train_images, image_size, timed=True)
        transform_dir, stats = transform.output, transform.stats
        rows.append({"benchmark": "transform", "variant": f"tf.transform Beam job, {image_size}x{image_size}",
                     "images": sum(stats.images.values()),
                     "images_per_s": round(stats.images_per_second, 1)})
        config = load_config(overrides=[f"train.model={model_name}", f"train.batch_size={BATCH}"])
        built = build_model(config.train, len(CLASSES), image_size, stats.channel_mean, stats.channel_std)
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

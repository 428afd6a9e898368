"""The train stage: a Keras model on the transform output, under a tf.distribute strategy.

Output directory:
  model/                 the trained Keras model (SavedModel; input: normalised image)
  training.json          config, transform and dataset fingerprints, strategy, steps, wall time, metrics per epoch,
                         the epoch whose weights the model holds (restored_epoch)
  training_curves.png    loss and accuracy per epoch, the restored epoch marked
  history.csv            per-epoch metrics, appended across resumed runs
  logs/                  TensorBoard (scalars, optional histograms, sample training images)
  checkpoints/           the best weights by validation loss (per phase: head, fine-tuned)
  backup/                BackupAndRestore state while training runs: the same command resumes
  manifest.json          written last: the training finished

A killed run resumes where it stopped when started again with the same output directory. Under
several workers only the chief writes these; the others write to temporary directories.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
import posixpath
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import tensorflow as tf
import tf_keras as keras

from components.artifacts import (CURVES_FILE, DATASET_FINGERPRINT, HISTORY_FILE, MODEL_DIR,
                                  TRAINING_FILE, TRANSFORM_FINGERPRINT, TransformStats, fingerprint)
from components.config import Config, TrainConfig
from components.dataset import read_labels
from components.files import write_json
from components.manifest import Manifest, read_manifest, write_manifest
from components.normalisation import scaled_from_normalised
from components.staging import resumable_output
from components.train.distribute import barrier, cluster_workers, is_chief, make_strategy, worker_output_dir
from components.train.inputs import count_examples, make_dataset
from components.train.models import AUGMENTATION, build_model, unfreeze_top

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    output: str
    training: dict[str, Any]
    chief: bool = True  # False on the other workers of a multi-worker run: they wrote nothing


class _EpochLog(keras.callbacks.Callback):
    """Logs each epoch's metrics and throughput; remembers the epoch training (re)started at."""

    def __init__(self, images_per_step: int, steps_per_epoch: int):
        super().__init__()
        self.images_per_step, self.steps_per_epoch = images_per_step, steps_per_epoch
        self.first_epoch: int | None = None
        self.images_per_second: list[float] = []

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        if self.first_epoch is None:
            self.first_epoch = epoch
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        rate = self.steps_per_epoch * self.images_per_step / (time.perf_counter() - self._started)
        self.images_per_second.append(rate)
        logger.info("epoch %d: %s (%.0f images/s)", epoch + 1,
                    ", ".join(f"{k} {v:.4f}" for k, v in sorted((logs or {}).items())), rate)


def run_training(transform_dir: str, output: str, config: Config, *, overwrite: bool = False,
                 extra_callbacks: Sequence[keras.callbacks.Callback] = (), tuning: Mapping[str, Any] | None = None
                 ) -> TrainResult:
    """Trains `config.train.model` on a transform output; resumes an unfinished run in `output`.

    `extra_callbacks` join every `fit` (a tuning trial's early stop); `tuning` is the search the
    hyperparameters came from (`components.tune.best.BestTrial.record`), kept in training.json."""
    settings = config.train
    output = resumable_output(output, overwrite, "training run")
    started = time.monotonic()
    strategy = make_strategy(settings.distribute)  # first: collective ops are set up before any other op
    if settings.deterministic:  # TensorFlow has no public switch back: it stays on for the process
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(settings.seed)
    transform = read_manifest(transform_dir, "transform")
    transform_stats = TransformStats.read(transform_dir)
    labels = read_labels(transform_dir)
    image_size = transform_stats.image_size

    chief = is_chief(strategy)
    out = worker_output_dir(output, strategy)
    tf.io.gfile.makedirs(out)
    global_batch = settings.batch_size * strategy.num_replicas_in_sync
    train_examples = count_examples(transform_dir, "train")
    steps_per_epoch = max(1, (settings.num_training_examples or train_examples) // global_batch)
    train_data = make_dataset(transform_dir, "train", global_batch, training=True, seed=settings.seed,
                              cache=settings.cache, shuffle_buffer=settings.shuffle_buffer,
                              deterministic=settings.deterministic)
    has_valid = count_examples(transform_dir, "valid") > 0
    valid_data = make_dataset(transform_dir, "valid", global_batch, training=False) if has_valid else None
    logger.info("Training %s on %d images (%d steps of %d per epoch, %d epochs) from %s",
                settings.model, train_examples, steps_per_epoch, global_batch, settings.epochs, transform_dir)

    with strategy.scope():
        built = build_model(settings, len(labels), image_size, transform_stats.channel_mean,
                            transform_stats.channel_std)
        compile_model(built.model, settings.learning_rate, settings, settings.epochs * steps_per_epoch)
    _write_sample_images(out, train_data, built.model, settings, transform_stats)

    epoch_log = _EpochLog(global_batch, steps_per_epoch)
    # The best epoch by validation loss: accuracy on a small validation split saturates (ties keep the
    # first, undertrained epoch that reached it), the loss keeps telling better models apart.
    monitor = "val_loss" if has_valid else "loss"
    tf.io.gfile.makedirs(posixpath.join(output, "checkpoints"))

    def fit(phase: str, epochs: int, initial_epoch: int) -> None:
        """One `fit` phase; at its end every worker holds the phase's best weights.

        The best checkpoint lives in the chief's directory (tf_keras sends the other workers'
        writes to temporary files) in TF format (HDF5 fails under MultiWorkerMirrored).
        """
        best_weights = posixpath.join(output, "checkpoints", phase)
        # The backup comes last: an epoch counts as done (a resumed run starts after it) only once its
        # history row and best checkpoint are written. A kill in between repeats the epoch, and the
        # history keeps the repeated epoch's last row.
        callbacks = [
            keras.callbacks.CSVLogger(posixpath.join(out, HISTORY_FILE), append=True),
            epoch_log,
            keras.callbacks.ModelCheckpoint(best_weights, monitor=monitor, mode="min", save_best_only=True,
                                            save_weights_only=True),
            keras.callbacks.EarlyStopping(monitor=monitor, mode="min", patience=settings.early_stopping_patience),
            keras.callbacks.TensorBoard(posixpath.join(out, "logs"),
                                        histogram_freq=int(settings.tensorboard_histograms)),
            keras.callbacks.BackupAndRestore(posixpath.join(output, "backup", phase),
                                             save_freq=settings.checkpoint_every_steps or "epoch"),
            *extra_callbacks,
        ]
        built.model.fit(train_data, epochs=epochs, initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
                        validation_data=valid_data, callbacks=callbacks, verbose=0)
        barrier(strategy)  # the chief has written its last checkpoint
        if tf.io.gfile.exists(best_weights + ".index"):
            built.model.load_weights(best_weights)

    fit("best", settings.epochs, 0)
    fine_tuning = built.backbone is not None and settings.fine_tune_fraction > 0 and settings.fine_tune_epochs > 0
    if fine_tuning:
        unfrozen = unfreeze_top(built.backbone, settings.fine_tune_fraction)
        logger.info("Fine-tuning the top %d backbone layers at learning rate %g, from the best head",
                    unfrozen, settings.fine_tune_learning_rate)
        with strategy.scope():
            compile_model(built.model, settings.fine_tune_learning_rate, settings,
                          settings.fine_tune_epochs * steps_per_epoch)
        fit("best-fine-tuned", settings.epochs + settings.fine_tune_epochs, settings.epochs)

    final = {split: _evaluate(built.model, make_dataset(transform_dir, split, global_batch, training=False))
             for split in ("valid", "test") if count_examples(transform_dir, split)}
    built.model.save(posixpath.join(out, MODEL_DIR))
    history = _read_history(posixpath.join(out, HISTORY_FILE))
    digest = weights_digest(built.model)
    # The last phase's best checkpoint, counted from where this process (re)started it: ModelCheckpoint's
    # best value starts afresh in every `fit`.
    restored = restored_epoch(history, monitor, max(settings.epochs + 1 if fine_tuning else 1,
                                                    (epoch_log.first_epoch or 0) + 1))
    logger.info("final weights sha256 %s", digest)
    # One line of the kept weights' metrics, as Keras names them (val_accuracy): a Katib trial's objective.
    logger.info("Kept the weights of epoch %s: %s", restored or "(the last)",
                ", ".join(f"{'val_' if split == 'valid' else split + '_'}{name} {value:.4f}"
                          for split, metrics in final.items() for name, value in sorted(metrics.items()))
                or "no validation split")
    training = {
        "model": settings.model,
        "config": {"train": config.to_dict()["train"]},
        "labels": labels,
        "image_size": image_size,
        TRANSFORM_FINGERPRINT: transform.fingerprint,
        DATASET_FINGERPRINT: transform.dataset_fingerprint,
        "transform": transform_dir,
        "strategy": {"name": type(strategy).__name__, "replicas": strategy.num_replicas_in_sync,
                     "workers": cluster_workers()},
        "global_batch_size": global_batch,
        "steps_per_epoch": steps_per_epoch,
        "epochs_run": len(history),
        "resumed_from_epoch": epoch_log.first_epoch or 0,
        "train_images_per_second": round(max(epoch_log.images_per_second or [0]), 1),
        "wall_seconds": round(time.monotonic() - started, 1),
        "epochs": history,
        "restored_epoch": restored,
        "restored_by": monitor,
        "final": final,
        "weights_sha256": digest,
    }
    if tuning:
        training["tuning"] = dict(tuning)
    if chief:
        write_json(posixpath.join(out, TRAINING_FILE), training)
        plot_curves(history, posixpath.join(out, CURVES_FILE), restored_epoch=restored, monitor=monitor)
        write_manifest(out, Manifest(
            stage="train",
            fingerprint=fingerprint({"transform": transform.fingerprint, "train": training["config"]}),
            inputs={"transform": transform_dir, TRANSFORM_FINGERPRINT: transform.fingerprint,
                    DATASET_FINGERPRINT: transform.dataset_fingerprint},
            config=training["config"],
            outputs={"model": MODEL_DIR, "final": final, "labels": labels},
        ))
    else:
        tf.io.gfile.rmtree(out)
    logger.info("Training done in %.0f s: %d epochs (resumed from epoch %d), %s", training["wall_seconds"],
                training["epochs_run"], training["resumed_from_epoch"], final or "no validation split")
    return TrainResult(output, training, chief)


def weights_digest(model: keras.Model) -> str:
    """SHA-256 over all weights: equal digests mean identical models (e.g. across workers)."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(weight.numpy().tobytes())
    return digest.hexdigest()


def compile_model(model: keras.Model, learning_rate: float, settings: TrainConfig, total_steps: int) -> None:
    """Adam with the configured learning-rate schedule, sparse cross-entropy, accuracy."""
    if settings.lr_schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(total_steps, 1))
    elif settings.lr_schedule == "exponential":
        rate = keras.optimizers.schedules.ExponentialDecay(learning_rate, decay_steps=max(total_steps // 10, 1),
                                                           decay_rate=0.8)
    else:
        rate = learning_rate
    model.compile(
        optimizer=keras.optimizers.Adam(rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def _evaluate(model: keras.Model, data: tf.data.Dataset) -> dict[str, float]:
    return {k: round(float(v), 5) for k, v in model.evaluate(data, verbose=0, return_dict=True).items()}


def _read_history(path: str) -> list[dict[str, float]]:
    """Per-epoch metrics from the CSV log; a resumed run's repeated epochs keep their last row."""
    with tf.io.gfile.GFile(path) as f:
        rows = {int(r["epoch"]): r for r in csv.DictReader(f)}
    return [{"epoch": e + 1, **{k: round(float(v), 5) for k, v in rows[e].items() if k != "epoch"}}
            for e in sorted(rows)]


def restored_epoch(history: list[dict[str, float]], monitor: str, since: int) -> int | None:
    """The epoch whose weights a phase ends with: the first lowest `monitor` among the epochs numbered
    `since` or later, as ModelCheckpoint(save_best_only) keeps them; None without such an epoch."""
    kept = [h for h in history if h["epoch"] >= since and math.isfinite(h.get(monitor, math.nan))]
    return min(kept, key=lambda h: h[monitor])["epoch"] if kept else None


def plot_curves(history: list[dict[str, float]], path: str, *, restored_epoch: int | None = None,
                monitor: str = "val_loss") -> None:
    """Loss and accuracy per epoch, training and validation, as a PNG; `restored_epoch` (the weights kept,
    the lowest `monitor`) marked on both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    epochs = [h["epoch"] for h in history]
    restored = next((h for h in history if h["epoch"] == restored_epoch), None)
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            if history and prefix + metric in history[0]:
                axis.plot(epochs, [h[prefix + metric] for h in history], style, label=(prefix or "train_") + metric)
        if restored is not None:
            axis.axvline(restored["epoch"], color="#c62828", linestyle=":", linewidth=1.5,
                         label=f"restored: epoch {restored['epoch']} (lowest {monitor})")
            if monitor.endswith(metric) and monitor in restored:
                axis.plot([restored["epoch"]], [restored[monitor]], "o", color="#c62828", markersize=7)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axis.set_title(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    with tf.io.gfile.GFile(path, "wb") as f:
        figure.savefig(f, format="png", dpi=100)
    plt.close(figure)


def _write_sample_images(out: str, data: tf.data.Dataset, model: keras.Model, settings: TrainConfig,
                         stats: TransformStats) -> None:
    """A few augmented training images (as they are without augmentation) in TensorBoard, mapped back to pixels."""
    if not settings.tensorboard_images:
        return
    images, _ = next(iter(data))
    images = images[: settings.tensorboard_images]
    if any(layer.name == AUGMENTATION for layer in model.layers):
        images = model.get_layer(AUGMENTATION)(images, training=True)
    pixels = tf.clip_by_value(scaled_from_normalised(images, stats.channel_mean, stats.channel_std), 0.0, 1.0)
    with tf.summary.create_file_writer(os.path.join(out, "logs", "samples")).as_default():
        tf.summary.image("augmented_training_images", pixels, step=0, max_outputs=settings.tensorboard_images)

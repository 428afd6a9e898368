"""One typed configuration shared by every stage.

Values come from, in increasing precedence: the defaults below, a YAML or JSON file
(`--config FILE`) and `--set section.key=value` overrides on the command line. Unknown keys
and values of the wrong type are errors that name the key and its source.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Sequence

import yaml

IMAGE_FORMATS = ("jpeg", "png", "bmp", "gif", "tiff", "webp")
SPLITS = ("train", "valid", "test")


DIRECT_RUNNING_MODES = ("in_memory", "multi_threading", "multi_processing")


class ConfigError(ValueError):
    """cvpipe's configuration (its file or a --set override) is invalid; the message names the key."""


def described(default: Any, meaning: str) -> Any:
    """A field with a (non-mutable) default and its meaning, which command lines show (`meaning_of`)."""
    return field(default=default, metadata={"meaning": meaning})


def meaning_of(section: type, name: str) -> str:
    """The meaning a `described` field of the `section` dataclass was given."""
    return next(f for f in dataclasses.fields(section) if f.name == name).metadata["meaning"]


@dataclass
class SplitConfig:
    """Fractions of the content-hash split; an explicit split column in a CSV wins."""

    train: float = 0.8
    valid: float = 0.1
    test: float = 0.1
    # Part of the split hash: changing it redraws every split.
    salt: str = "cvpipe-split-v1"

    def validate(self) -> None:
        fractions = (self.train, self.valid, self.test)
        if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
            raise ConfigError(
                f"ingest.splits: train/valid/test fractions must be >= 0 and sum to 1, got {fractions}"
            )


@dataclass
class IngestConfig:
    """Validation limits, output layout and label vocabulary of the ingest stage."""

    splits: SplitConfig = field(default_factory=SplitConfig)
    # Images whose shorter side is below this are rejected as too small.
    min_side: int = 32
    # Decompression-bomb guard, checked on the header before any pixel is decoded.
    max_pixels: int = 40_000_000
    # Files larger than this are rejected before they are read into memory.
    max_file_bytes: int = 64 * 2**20
    # Formats accepted; JPEG and PNG are stored as given, the others re-encoded as PNG.
    formats: list[str] = field(default_factory=lambda: list(IMAGE_FORMATS))
    # Fixed label vocabulary in id order; empty means the sorted labels found in the input.
    labels: list[str] = field(default_factory=list)
    # Shards are sized to about this many bytes of records.
    target_shard_bytes: int = 100_000_000
    # zlib level of the .tfrecord.gz shards. JPEG/PNG bytes do not compress: on the demo data level 1
    # saved 0.4 % of the bytes and took 38 % more time than 0 (stored blocks, still gzip).
    compression_level: int = 0
    # Threads per Beam worker that read and check images, and read them again to write shards;
    # 0 = one per CPU the process may use (its affinity, capped by a container's CPU quota).
    # Decoding and hashing release the GIL; remote reads (gs://) wait on the network.
    threads: int = 0
    # Data warnings (logged, and listed in stats.json): a class with fewer training images than this,
    # and a largest/smallest class ratio (training images) above this.
    min_class_train_images: int = 10
    max_class_imbalance: float = 10.0

    def validate(self) -> None:
        self.splits.validate()
        unknown = sorted(set(self.formats) - set(IMAGE_FORMATS))
        if unknown:
            raise ConfigError(f"ingest.formats: unsupported {unknown}; choose from {list(IMAGE_FORMATS)}")
        if len(set(self.labels)) != len(self.labels) or any(not lbl.strip() for lbl in self.labels):
            raise ConfigError("ingest.labels: labels must be unique and non-empty")
        for name in ("min_side", "max_pixels", "max_file_bytes", "target_shard_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"ingest.{name} must be positive")
        if not 0 <= self.compression_level <= 9:
            raise ConfigError("ingest.compression_level must be between 0 and 9")
        if self.threads < 0:
            raise ConfigError("ingest.threads must be >= 0 (0: one per CPU core)")
        if self.min_class_train_images < 0 or self.max_class_imbalance < 1:
            raise ConfigError("ingest.min_class_train_images must be >= 0 and ingest.max_class_imbalance >= 1")


@dataclass
class TransformConfig:
    """The tf.transform preprocessing: output image size and how images are fitted to it."""

    # 64: on the demo data small_cnn's receptive field then spans most objects; 30 epochs take ~85 s
    # on 2 cores (96 took ~2.5x as long for no better test accuracy).
    image_size: int = 64
    # pad: keep the aspect ratio, pad with black; crop: central square; stretch: ignore the ratio.
    resize_method: str = "pad"
    # Images per batch when the Beam job runs the graph to materialise the pixels.
    batch_size: int = 64
    target_shard_bytes: int = 100_000_000

    def validate(self) -> None:
        if self.resize_method not in ("pad", "crop", "stretch"):
            raise ConfigError(f"transform.resize_method must be pad, crop or stretch, got {self.resize_method!r}")
        if not 8 <= self.image_size <= 1024:
            raise ConfigError("transform.image_size must be between 8 and 1024")
        if self.batch_size < 1 or self.target_shard_bytes <= 0:
            raise ConfigError("transform.batch_size and transform.target_shard_bytes must be positive")


MODELS = ("small_cnn", "mobilenet_v2", "efficientnet_b0", "resnet50")
DISTRIBUTE = ("auto", "one_device", "mirrored", "multi_worker", "tpu")


@dataclass
class AugmentConfig:
    """Training-only augmentation layers; each is switched off by False or 0."""

    # Off by default: each can change what an image means (a 6 turns into a 9, a mirrored letter, a negative
    # scan). Measured on sklearn's load_digits (1,797 real 8x8 scans as 32x32 PNGs, small_cnn, 15 epochs,
    # seed 42; test accuracy): flip + quarter turns + inversion 0.947, none 0.994, colour only 1.000, flip
    # only 0.982. The demo's rotation-invariant shapes want them on: configs/demo.yaml.
    flip: bool = described(False, "random horizontal and vertical flips")
    quarter_turns: bool = described(False, "random multiples of 90 degrees")
    invert: bool = described(False, "negate the per-image standardised input (objects and backgrounds of any "
                             "colour)")
    # Largest rotation and zoom, as fractions (0.1 rotation = 36 degrees).
    rotation: float = 0.0
    zoom: float = 0.0
    color: bool = described(True, "brightness and contrast jitter")
    crop_ratio: float = described(1.0, "< 1: train on random crops of this fraction of the image side; inference "
                                  "resizes to that size")

    def validate(self) -> None:
        if not 0 < self.crop_ratio <= 1 or self.rotation < 0 or self.zoom < 0:
            raise ConfigError("train.augment: crop_ratio must be in (0, 1], rotation and zoom >= 0")


@dataclass
class TrainConfig:
    """Model, hyperparameters, distribution and checkpointing of the training stage."""

    model: str = described("small_cnn", "architecture: " + ", ".join(MODELS))
    weights: str = described("none", "none | imagenet | path of a local weights file (backbones only)")
    batch_size: int = described(32, "per replica; the global batch is this times the replicas")
    epochs: int = described(30, "passes over the training data (with the backbone frozen, for a backbone)")
    learning_rate: float = described(0.003, "initial learning rate")
    lr_schedule: str = described("cosine", "how the learning rate decays: constant | cosine | exponential")
    l1: float = described(0.0, "L1 weight regularisation factor")
    l2: float = described(0.0, "L2 weight regularisation factor")
    dropout: float = described(0.0, "dropout rate before the classifier, in [0, 1)")
    hidden_units: int = described(64, "units of the dense layer before the classifier")
    # Transfer learning (backbones): after `epochs` with the backbone frozen, unfreeze the top
    # `fine_tune_fraction` of its layers for `fine_tune_epochs` at `fine_tune_learning_rate`.
    fine_tune_fraction: float = described(0.0, "backbones: fraction of the top layers unfrozen after `epochs`")
    fine_tune_epochs: int = described(0, "backbones: epochs of fine-tuning after `epochs`")
    fine_tune_learning_rate: float = 1e-4
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = described(42, "random seed of initialisation, shuffling and augmentation")
    # No measurable cost: small_cnn, 800 demo images at 64x64, best of interleaved runs 79 images/s on,
    # 74 off (2 shared cores). Op determinism then stays on for the process.
    deterministic: bool = described(True, "same data, configuration and seed give the same weights "
                                    "(TensorFlow op determinism, the training input in a fixed order)")
    distribute: str = described("auto", "distribution strategy: " + ", ".join(DISTRIBUTE))
    early_stopping_patience: int = 10  # the demo data plateaus for ~8 epochs before it drops
    checkpoint_every_steps: int = described(0, "also checkpoint every N steps for resuming (0: at the end of "
                                            "every epoch only)")
    num_training_examples: int = described(0, "virtual epochs: an epoch is this many examples, the data "
                                           "repeating (0: one pass)")
    cache: bool = True
    shuffle_buffer: int = 4096
    tensorboard_histograms: bool = False
    tensorboard_images: int = 8  # augmented training images written to TensorBoard (0: none)

    def validate(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"train.model must be one of {MODELS}, got {self.model!r}")
        if self.distribute not in DISTRIBUTE:
            raise ConfigError(f"train.distribute must be one of {DISTRIBUTE}, got {self.distribute!r}")
        if self.lr_schedule not in ("constant", "cosine", "exponential"):
            raise ConfigError("train.lr_schedule must be constant, cosine or exponential")
        if self.model == "small_cnn" and self.weights != "none":
            raise ConfigError("train.weights applies to backbones only; small_cnn trains from scratch")
        if not 0 <= self.fine_tune_fraction <= 1 or not 0 <= self.dropout < 1:
            raise ConfigError("train.fine_tune_fraction must be in [0, 1] and train.dropout in [0, 1)")
        if min(self.batch_size, self.epochs) < 1 or self.learning_rate <= 0:
            raise ConfigError("train.batch_size and train.epochs must be >= 1, train.learning_rate > 0")
        self.augment.validate()


TUNE_ALGORITHMS = ("random", "bayesian", "hyperband")
TUNE_OBJECTIVES = {"val_accuracy": "max", "val_loss": "min"}  # objective -> direction


@dataclass
class HyperParameter:
    """One dimension of a search: a `train.` key (`learning_rate`, `augment.flip`, ...) and its values:
    `values` to choose from, or else the range `min`..`max` (log-uniform with `log`; by `step` when > 0)."""

    key: str
    values: list[bool | int | float | str] = field(default_factory=list)
    min: float = 0.0
    max: float = 0.0
    log: bool = False
    step: float = 0.0

    def validate(self) -> None:
        ranged = (self.min, self.max, self.log, self.step) != (0.0, 0.0, False, 0.0)
        if bool(self.values) == ranged:
            raise ConfigError(f"tune.space {self.key}: give either values or min and max")
        if ranged and (self.min >= self.max or (self.log and self.min <= 0) or self.step < 0):
            raise ConfigError(f"tune.space {self.key}: needs min < max (min > 0 with log, step >= 0)")


def _default_space() -> list[HyperParameter]:
    return [
        HyperParameter("learning_rate", min=1e-4, max=1e-2, log=True),
        HyperParameter("batch_size", values=[16, 32, 64]),
        HyperParameter("hidden_units", values=[32, 64, 128]),
        HyperParameter("dropout", min=0.0, max=0.5, step=0.1),
        HyperParameter("l2", values=[0.0, 1e-5, 1e-4, 1e-3]),
        HyperParameter("augment.flip", values=[False, True]),
        HyperParameter("augment.quarter_turns", values=[False, True]),
        HyperParameter("augment.invert", values=[False, True]),
        HyperParameter("augment.color", values=[False, True]),
        HyperParameter("augment.crop_ratio", values=[0.8, 0.9, 1.0]),
    ]


@dataclass
class TuneConfig:
    """The hyperparameter search (components.tune): its space over `train.` keys, algorithm and budget."""

    # The pipeline's tune step searches before train, which then trains with the best trial's values.
    # (`python -m components.tune` always searches: running it is the choice.)
    enabled: bool = described(False, "the pipeline searches hyperparameters before it trains")
    algorithm: str = described("bayesian", "search algorithm: " + ", ".join(TUNE_ALGORITHMS))
    objective: str = described("val_accuracy", "what the search optimises, on the validation split: "
                               + ", ".join(TUNE_OBJECTIVES))
    max_trials: int = described(10, "trials at most (hyperband: also its own bracket schedule)")
    max_minutes: float = described(0.0, "no trial starts after this many minutes of searching (0: no limit)")
    epochs: int = described(10, "epochs per trial (hyperband: the most a trial trains)")
    # A trial stops when, from this epoch on, its best objective so far is worse than the median of the
    # finished trials' at the same epoch (the median stopping rule; Katib's medianstop). 0: never.
    median_stop_after_epochs: int = 3
    median_stop_min_trials: int = 3  # finished trials needed before the rule applies
    hyperband_factor: int = 3
    seed: int = described(42, "the search's own randomness (which trials); each trial trains with train.seed")
    space: list[HyperParameter] = field(default_factory=_default_space)

    def validate(self) -> None:
        if self.algorithm not in TUNE_ALGORITHMS:
            raise ConfigError(f"tune.algorithm must be one of {TUNE_ALGORITHMS}, got {self.algorithm!r}")
        if self.objective not in TUNE_OBJECTIVES:
            raise ConfigError(f"tune.objective must be one of {list(TUNE_OBJECTIVES)}, got {self.objective!r}")
        if min(self.max_trials, self.epochs) < 1 or self.max_minutes < 0 or self.hyperband_factor < 2:
            raise ConfigError("tune.max_trials and tune.epochs must be >= 1, tune.max_minutes >= 0 and "
                              "tune.hyperband_factor >= 2")
        if min(self.median_stop_after_epochs, self.median_stop_min_trials) < 0:
            raise ConfigError("tune.median_stop_after_epochs and tune.median_stop_min_trials must be >= 0")
        keys = [p.key for p in self.space]
        if not keys or len(set(keys)) != len(keys):
            raise ConfigError(f"tune.space must name each train key once, got {keys}")
        for parameter in self.space:
            parameter.validate()
            for value in parameter.values or (parameter.min, parameter.max):
                try:
                    train_with(TrainConfig(), parameter.key, value, source="tune.space")
                except ConfigError as e:
                    raise ConfigError(f"tune.space {parameter.key}={value!r}: {e}") from None


def train_key_type(key: str) -> type:
    """The type of the `train.` configuration value `key` (e.g. `augment.flip`: bool)."""
    section: type = TrainConfig
    *sections, name = key.split(".")
    for part in sections:
        section = typing.get_type_hints(section).get(part)
        if not dataclasses.is_dataclass(section):
            raise ConfigError(f"{key}: train has no section {part!r}")
    hint = typing.get_type_hints(section).get(name)
    if hint not in (bool, int, float, str):
        raise ConfigError(f"{key}: not a train setting that takes one number, switch or name")
    return hint


def train_with(train: TrainConfig, key: str, value: Any, source: str) -> TrainConfig:
    """`train` with the value at `key` (dotted, below `train.`) replaced by `value`, coerced to its type
    and validated."""
    data = dataclasses.asdict(train)
    *sections, name = key.split(".")
    node = data
    for part in sections:
        node = node[part]
    node[name] = _coerce(value, train_key_type(key), f"train.{key}", source)
    result = _build(TrainConfig, data, source, "train.")
    result.validate()
    return result


@dataclass
class ExportConfig:
    """The served SavedModel: warm-up requests, TFLite variants and the optional filename signature."""

    # Warm-up requests (real test images) written to assets.extra/tf_serving_warmup_requests.
    warmup_requests: int = 8
    # TFLite variants: float16 (weights) and int8 (full integer, calibrated on training images).
    tflite: list[str] = field(default_factory=lambda: ["float16", "int8"])
    # Training images used to calibrate the int8 model.
    representative_images: int = 200
    # A `predict_filenames` signature reads images on the server: only exported when this URI
    # prefix is set (e.g. gs://bucket/images/), and it refuses every other path.
    filename_prefix: str = ""

    def validate(self) -> None:
        unknown = sorted(set(self.tflite) - {"float16", "int8"})
        if unknown:
            raise ConfigError(f"export.tflite: unknown variant(s) {unknown}; choose from float16, int8")
        if self.warmup_requests < 0 or self.representative_images < 1:
            raise ConfigError("export.warmup_requests must be >= 0 and export.representative_images >= 1")


@dataclass
class EvaluateConfig:
    """Metrics of the exported model and the thresholds that bless it."""

    splits: list[str] = field(default_factory=lambda: ["test", "valid"])
    batch_size: int = 64
    top_k: int = 2
    calibration_bins: int = 10
    # Record fields to slice metrics by; `size` is a bucket of the original image's shorter side.
    slices: list[str] = field(default_factory=lambda: ["image/original_format", "image/channels", "size"])
    # Absolute thresholds on the first split (the test split by default).
    min_accuracy: float = 0.9
    min_class_recall: float = 0.8
    # Change thresholds against the current champion, evaluated on the same data: the candidate's
    # accuracy and macro F1 may not drop more than this.
    max_accuracy_drop: float = 0.01
    max_macro_f1_drop: float = 0.01
    # The report's gallery: this many misclassified images of the first split, the most confidently
    # wrong first, as thumbnails (0: no gallery).
    misclassified_examples: int = 16

    def validate(self) -> None:
        unknown = sorted(set(self.splits) - set(SPLITS))
        if not self.splits or unknown:
            raise ConfigError(f"evaluate.splits must name splits among {SPLITS}, got {self.splits}")
        if min(self.batch_size, self.top_k, self.calibration_bins) < 1:
            raise ConfigError("evaluate.batch_size, evaluate.top_k and evaluate.calibration_bins must be >= 1")
        if self.misclassified_examples < 0:
            raise ConfigError("evaluate.misclassified_examples must be >= 0")
        for name in ("min_accuracy", "min_class_recall", "max_accuracy_drop", "max_macro_f1_drop"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"evaluate.{name} must be between 0 and 1")


@dataclass
class MonitorConfig:
    """Continuous evaluation of what is served (components.monitor): windows, drift tests and alert thresholds."""

    window: str = described("1d", "length of a time window: <number><s|m|h|d|w>, e.g. 6h")
    moving_average_windows: int = described(7, "windows averaged for the moving averages (labelled-weighted)")
    min_labelled: int = described(30, "labelled predictions a window needs before its accuracy can alert")
    min_accuracy: float = described(0.0, "alert when a window's accuracy is below this (0: off)")
    max_accuracy_drop: float = described(0.05, "alert when a window's accuracy is this far below the baseline's "
                                               "(1: off)")
    drift_alpha: float = described(0.01, "a drift test whose p-value is below this flags drift")
    min_drift_sample: int = described(30, "predictions a window needs before its drift tests can alert")
    drift_alerts: bool = described(True, "input or prediction drift alerts (off: reported only)")
    baseline_images: int = described(1000, "training images sampled for the image-statistics baseline")
    mmd_samples: int = described(500, "predictions per side of the MMD test on probability vectors")
    mmd_permutations: int = described(500, "permutations of the MMD test (its smallest p-value is 1/(1+N))")
    seed: int = 0

    def validate(self) -> None:
        window_seconds(self.window)
        for name in ("moving_average_windows", "min_labelled", "min_drift_sample", "baseline_images", "mmd_samples",
                     "mmd_permutations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"monitor.{name} must be >= 1")
        for name in ("min_accuracy", "max_accuracy_drop"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"monitor.{name} must be between 0 and 1")
        if not 0 < self.drift_alpha < 1:
            raise ConfigError("monitor.drift_alpha must be between 0 and 1 (exclusive)")


_WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def window_seconds(window: str) -> int:
    """The seconds of a window like `1d`, `6h`, `30m`, `90s` or `1w` (ConfigError otherwise)."""
    text = str(window).strip().lower()
    if len(text) < 2 or text[-1] not in _WINDOW_UNITS or not text[:-1].isdigit() or int(text[:-1]) < 1:
        raise ConfigError(f"monitor.window must be <number><s|m|h|d|w> (e.g. 1d, 6h), got {window!r}")
    return int(text[:-1]) * _WINDOW_UNITS[text[-1]]


@dataclass
class TrackingConfig:
    """MLflow tracking and model registry."""

    enabled: bool = True
    # Local SQLite store by default; $MLFLOW_TRACKING_URI (e.g. http://mlflow:5000) wins.
    tracking_uri: str = "sqlite:///runs/mlflow.db"
    experiment: str = "cvpipe"
    registered_model: str = "cvpipe-classifier"

    def validate(self) -> None:
        if not self.experiment or not self.registered_model:
            raise ConfigError("tracking.experiment and tracking.registered_model must not be empty")


@dataclass
class BatchPredictConfig:
    """Batch scoring: batches, outputs, input limits and the client of a remote serving endpoint."""

    FORMATS = ("jsonl", "csv", "parquet", "tfrecord")  # not a field: the choices of `format`

    # Images per model call in process, and per request to an endpoint. Batches are cut from the
    # sorted inputs (not by Beam's adaptive BatchElements): a model's float results depend on the
    # batch an image is computed in, so fixed batches are what makes repeated runs byte-identical.
    batch_size: int = 64
    # Classes (label, class id, probability) per prediction, most probable first.
    top_k: int = 3
    # Prediction files: jsonl | csv | parquet | tfrecord (tf.train.Example).
    format: str = "jsonl"
    # Number of prediction files (rows go to a file by a hash of their URI); 0: one per 100,000 inputs.
    output_shards: int = 0
    # Also write every class probability (C floats per row).
    probabilities: bool = False
    # Inputs larger than this, or with more pixels (read from the header), are errors, never decoded.
    max_image_bytes: int = 64 * 2**20
    max_pixels: int = 40_000_000
    # One copy of the model per machine, shared by the worker processes (for models too big to load
    # once per process; costs a copy of every batch between processes).
    share_model: bool = False
    # Remote endpoints (http://.../v1/models/NAME, grpc://host:port/NAME): requests in flight per
    # worker process, retries of retryable failures (connection errors, HTTP 429/503/504, gRPC
    # UNAVAILABLE/RESOURCE_EXHAUSTED/DEADLINE_EXCEEDED) with exponential backoff, per-request timeout.
    remote_max_concurrent_requests: int = 4
    remote_retries: int = 5
    remote_backoff_seconds: float = 0.5
    remote_max_backoff_seconds: float = 30.0
    remote_timeout_seconds: float = 60.0

    def validate(self) -> None:
        if self.format not in self.FORMATS:
            raise ConfigError(f"batch_predict.format must be one of {self.FORMATS}, got {self.format!r}")
        for name in ("batch_size", "top_k", "max_image_bytes", "max_pixels", "remote_max_concurrent_requests"):
            if getattr(self, name) < 1:
                raise ConfigError(f"batch_predict.{name} must be >= 1")
        for name in ("output_shards", "remote_retries", "remote_backoff_seconds"):
            if getattr(self, name) < 0:
                raise ConfigError(f"batch_predict.{name} must be >= 0")
        if self.remote_max_backoff_seconds < self.remote_backoff_seconds:
            raise ConfigError("batch_predict.remote_max_backoff_seconds must be >= remote_backoff_seconds")
        if self.remote_timeout_seconds <= 0:
            raise ConfigError("batch_predict.remote_timeout_seconds must be > 0")


@dataclass
class BeamConfig:
    """How Beam jobs run. Runner-specific options pass through `options` or the command line."""

    runner: str = "DirectRunner"
    # DirectRunner only: how its workers run and how many. Empty: each stage's own choice, which uses
    # every core: ingest runs in memory on one worker (its DoFns use `ingest.threads` threads),
    # transform and batch prediction in `direct_num_workers` processes.
    direct_running_mode: str = ""
    direct_num_workers: int = 2
    options: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.direct_running_mode not in ("", *DIRECT_RUNNING_MODES):
            raise ConfigError(
                "beam.direct_running_mode must be empty (each stage's choice), in_memory, multi_threading or "
                "multi_processing"
            )
        if self.direct_num_workers < 1:
            raise ConfigError("beam.direct_num_workers must be >= 1")


@dataclass
class Config:
    """The whole cvpipe configuration: one section per concern."""

    ingest: IngestConfig = field(default_factory=IngestConfig)
    transform: TransformConfig = field(default_factory=TransformConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    batch_predict: BatchPredictConfig = field(default_factory=BatchPredictConfig)
    beam: BeamConfig = field(default_factory=BeamConfig)

    def validate(self) -> "Config":
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | None = None, overrides: Sequence[str] = ()) -> Config:
    """Builds the configuration from defaults, an optional YAML/JSON file and `key=value` overrides."""
    data: dict[str, Any] = {}
    if path:
        data = _read_file(path)
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {override!r}: expected section.key=value")
        _set_path(data, key.strip().split("."), yaml.safe_load(raw) if raw.strip() else "", override)
    return config_from_dict(data, source=path or "defaults")


def config_from_dict(data: dict[str, Any], source: str = "a mapping") -> Config:
    """Builds the configuration from nested sections (a subset of `Config.to_dict()`); the rest defaults."""
    return _build(Config, data, source=source).validate()


def _read_file(path: str) -> dict[str, Any]:
    import tensorflow as tf  # gfile reads local and remote (gs://) paths alike

    if not tf.io.gfile.exists(path):
        raise ConfigError(f"config file {path} does not exist")
    with tf.io.gfile.GFile(path, "r") as f:
        text = f.read()
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"config file {path} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: {e}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping of sections")
    return data


def _set_path(data: dict[str, Any], keys: list[str], value: Any, origin: str) -> None:
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {origin!r}: {key} is not a section")
    node[keys[-1]] = value


def _build(cls: type, data: Any, source: str, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'top level'} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {[prefix + k for k in unknown]}; known: {sorted(prefix + n for n in names)}"
        )
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, source, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, f"{prefix}{name}", source)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, source, f"{key}.")
    origin = typing.get_origin(hint)
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if isinstance(value, str):  # `--set ingest.labels=a,b` as a convenience
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        return [_coerce(v, item_type, key, source) for v in value]
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option, key, source)
            except ConfigError:
                continue
        raise ConfigError(f"{source}: {key}={value!r} does not match {hint}")
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"{source}: {key} must be null")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, float) and value.is_integer():  # JSON numbers via protobuf Struct
        return int(value)
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{source}: {key} must be {hint.__name__}, got {value!r}")
    return value

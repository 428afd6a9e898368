"""What every stage writes and where: the layout of stage outputs, the served model's contract, the
integer-version rule, the statistics files and the output fingerprint.

Stages, serving, batch scoring, tracking, the pipeline and the benches read these names here and
nowhere else. Output directories (each ends with `manifest.json`, written last):

  ingest          train|valid|test-SSSSS-of-NNNNN.tfrecord.gz, labels.txt, rejects.jsonl, stats.json
  transform       transform_fn/, transformed_metadata/, the records, labels.txt, stats.json
  train           model/ (Keras), training.json, training_curves.png, history.csv
  tune            tuning.json, best_config.yaml, tuning.png, trials/<trial id>/ (a train output each)
  export          BASE/NAME/<version>/: saved_model.pb, variables/, assets/labels.txt,
                  assets.extra/tf_serving_warmup_requests, tflite/model_<variant>.tflite, export.json
  evaluate        evaluation.json, blessing.json, predictions.jsonl, confusion_matrix_<split>.png,
                  calibration_<split>.png, evaluation.html
  batch_predict   predictions-SSSSS-of-NNNNN.<format>, errors.jsonl, summary.json
  deploy          BASE/models.config (TF Serving's model config), BASE/NAME/deployments.json

Manifests name the fingerprints of their inputs: `dataset_fingerprint` is always the fingerprint of
the ingest output a stage output derives from, `transform_fingerprint` the transform output's,
`train_fingerprint` the train output's, `model_fingerprint` the export's.

Needs no TensorFlow (file access goes through components.files).
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Mapping, TypeVar

from components.files import exists, is_directory, list_directory, read_json, write_json

logger = logging.getLogger(__name__)

# Every stage output.
MANIFEST_FILE = "manifest.json"
LABELS_FILE = "labels.txt"  # class names in id order, one a line
STATS_FILE = "stats.json"  # ingest and transform: IngestStats, TransformStats

# ingest
REJECTS_FILE = "rejects.jsonl"  # one line per rejected input: uri, reason, detail

# transform (tf.transform's TFTransformOutput layout)
TRANSFORM_FN_DIR = "transform_fn"
TRANSFORMED_METADATA_DIR = "transformed_metadata"

# train
MODEL_DIR = "model"
TRAINING_FILE = "training.json"
CURVES_FILE = "training_curves.png"
HISTORY_FILE = "history.csv"

# tune (components.tune)
TUNING_FILE = "tuning.json"  # every trial (hyperparameters, objective, epochs, seconds) and the best
BEST_CONFIG_FILE = "best_config.yaml"  # the best trial's hyperparameters: a configuration overlay
TUNING_PLOT_FILE = "tuning.png"  # the objective per trial and per hyperparameter
TRIALS_DIR = "trials"  # trials/<trial id>/: a train output per trial

# export: a SavedModel version directory, as TF Serving reads it
SAVED_MODEL_FILE = "saved_model.pb"
SAVED_MODEL_TEXT_FILE = "saved_model.pbtxt"
VARIABLES_INDEX_FILE = posixpath.join("variables", "variables.index")
ASSETS_DIR = "assets"
MODEL_LABELS_FILE = posixpath.join(ASSETS_DIR, LABELS_FILE)
WARMUP_FILE = posixpath.join("assets.extra", "tf_serving_warmup_requests")
EXPORT_FILE = "export.json"
TFLITE_DIR = "tflite"

# evaluate
EVALUATION_FILE = "evaluation.json"
BLESSING_FILE = "blessing.json"
PREDICTIONS_FILE = "predictions.jsonl"
REPORT_FILE = "evaluation.html"

# batch_predict
SUMMARY_FILE = "summary.json"
ERRORS_FILE = "errors.jsonl"  # one line per input without a prediction: uri, reason, detail

# monitor
MONITOR_FILE = "monitor.json"  # every window: metrics, drift tests, alerts; what was read and refused
LIVE_METRICS_FILE = "live_metrics.json"  # the newest window as one flat object (the retrain policy's live metric)
MONITOR_REPORT_FILE = "monitor.html"
MONITOR_PLOTS = ("monitor_accuracy.png", "monitor_drift.png", "monitor_traffic.png")  # accuracy, drift, traffic

# deploy
MODEL_CONFIG_FILE = "models.config"  # in the serving base path
DEPLOYMENTS_FILE = "deployments.json"  # in the model's base path

# Manifest input keys that name another output's fingerprint.
DATASET_FINGERPRINT = "dataset_fingerprint"
TRANSFORM_FINGERPRINT = "transform_fingerprint"
TRAIN_FINGERPRINT = "train_fingerprint"
MODEL_FINGERPRINT = "model_fingerprint"

# The served model (components.export.serving): signatures, their inputs and outputs.
SERVING_SIGNATURE = "serving_default"  # IMAGE_INPUT -> OUTPUT_KEYS
KEYED_SIGNATURE = "predict_with_key"  # IMAGE_INPUT, KEY_INPUT -> OUTPUT_KEYS and KEY_INPUT
IMAGES_SIGNATURE = "predict_images"  # IMAGES_INPUT uint8 [N, H, W, 3] -> OUTPUT_KEYS
FLOAT_IMAGES_SIGNATURE = "predict_images_float"  # IMAGES_INPUT float32 in [0, 1] -> OUTPUT_KEYS
FILENAMES_SIGNATURE = "predict_filenames"  # FILENAMES_INPUT -> OUTPUT_KEYS; only with a URI prefix
SIGNATURES = (SERVING_SIGNATURE, KEYED_SIGNATURE, IMAGES_SIGNATURE, FLOAT_IMAGES_SIGNATURE)  # always exported
IMAGE_INPUT = "image_bytes"
KEY_INPUT = "key"
IMAGES_INPUT = "images"
FILENAMES_INPUT = "filenames"
PROBABILITIES = "probabilities"
CLASS_ID = "class_id"
LABEL = "label"
SCORE = "score"
OUTPUT_KEYS = (PROBABILITIES, CLASS_ID, LABEL, SCORE)

# TF Serving's version directories: decimal digits only (leading zeros allowed), at most 18 of them.
_VERSION_NAME = re.compile(r"[0-9]{1,18}")

S = TypeVar("S", bound="_Stats")


def tflite_file(variant: str) -> str:
    """The TFLite model of `variant` in an export version directory."""
    return posixpath.join(TFLITE_DIR, f"model_{variant}.tflite")


def confusion_matrix_file(split: str) -> str:
    return f"confusion_matrix_{split}.png"


def calibration_file(split: str) -> str:
    return f"calibration_{split}.png"


def fingerprint(content: Mapping[str, Any]) -> str:
    """The fingerprint of a stage output made from `content` (its inputs' fingerprints and its config):
    hex SHA-256 of its JSON with sorted keys."""
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def version_number(name: str) -> int | None:
    """The version a directory name stands for (`00000123` is 123), None for any other name
    (`3.tmp-abc`, `v2`, `-1`)."""
    name = name.rstrip("/")
    return int(name) if _VERSION_NAME.fullmatch(name) else None


def version_directories(base: str) -> dict[int, str]:
    """The version directories under a model's base path: version -> path (empty when there is none).

    Files with a version's name are ignored; of two directories naming one version (`1` and `01`) the
    first in name order counts, as TF Serving's file system source does. A base path that cannot be
    listed has no version."""
    try:
        names = list_directory(base)
    except Exception as e:  # OSError, tf.errors.OpError (a URI)
        logger.warning("Cannot list the versions under %s: %s", base, e)
        return {}
    versions: dict[int, str] = {}
    for name in sorted(names):
        version, path = version_number(name), posixpath.join(base, name)
        if version is None or not is_directory(path):
            continue
        if version in versions:
            logger.warning("Version %d of %s appears twice (%s and %s): using %s", version, base,
                           versions[version], path, versions[version])
            continue
        versions[version] = path
    return versions


def next_version(base: str) -> int:
    """One more than the highest version under `base` (1 for none)."""
    return max(version_directories(base), default=0) + 1


def saved_model_dir(path: str) -> str:
    """`path` itself when it holds a SavedModel, else its highest version directory (BASE/NAME)."""
    path = path.rstrip("/")
    if exists(posixpath.join(path, SAVED_MODEL_FILE)):
        return path
    versions = version_directories(path)
    if not versions:
        raise FileNotFoundError(f"{path} holds no SavedModel ({SAVED_MODEL_FILE}) and no integer version directory; "
                                f"pass an export output (python -m components.export)")
    return versions[max(versions)]


def model_version(saved_model: str) -> tuple[str, int | None]:
    """The model name and version of a SavedModel directory: (NAME, N) for BASE/NAME/N, else (its
    directory name, None)."""
    saved_model = saved_model.rstrip("/")
    version = version_number(posixpath.basename(saved_model))
    named = posixpath.dirname(saved_model) if version is not None else saved_model
    return posixpath.basename(named), version


class _Stats:
    """A statistics file (`stats.json`) as a frozen dataclass: read, checked and written whole."""

    @classmethod
    def from_dict(cls: type[S], data: Mapping[str, Any]) -> S:
        return cls(**{f.name: data[f.name] for f in fields(cls)})  # type: ignore[call-arg]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def read(cls: type[S], directory: str) -> S:
        """The statistics of the output `directory`; a ValueError naming the file when it is damaged."""
        path = posixpath.join(directory, STATS_FILE)
        if not exists(path):
            raise FileNotFoundError(f"{directory} has no {STATS_FILE}")
        data = read_json(path)
        if not isinstance(data, dict):
            raise ValueError(f"{path} does not hold {cls.__name__}: it holds a JSON {type(data).__name__}")
        missing = [f.name for f in fields(cls)  # type: ignore[arg-type]
                   if f.name not in data and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise ValueError(f"{path} does not hold {cls.__name__}: it lacks {', '.join(missing)}")
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"{path} does not hold {cls.__name__}: {e}") from None

    def write(self, directory: str) -> None:
        write_json(posixpath.join(directory, STATS_FILE), self.to_dict())


@dataclass(frozen=True)
class SplitCounts:
    """One split of an ingest output."""

    images: int
    shards: int
    record_bytes: int


@dataclass(frozen=True)
class IngestStats(_Stats):
    """Counts of an ingest output that reconcile: inputs == accepted + rejected."""

    inputs: int
    accepted: int
    rejected: int
    splits: dict[str, SplitCounts]
    classes: dict[str, dict[str, int]]  # label -> split -> images, and "total"
    rejects: dict[str, int]  # reason -> inputs (reasons with none left out)
    source_bytes: int
    record_bytes: int
    bytes_ratio: float | None  # record bytes / source bytes
    seconds: float
    images_per_second: float
    # Suspicious data found (one class, a class with few images, heavy imbalance); the run goes on.
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IngestStats:
        return cls(**{**{f.name: data[f.name] for f in fields(cls) if f.name in data},
                      "splits": {split: SplitCounts(**counts) for split, counts in data["splits"].items()}})

    def split_images(self) -> dict[str, int]:
        """Images per split."""
        return {split: counts.images for split, counts in self.splits.items()}


@dataclass(frozen=True)
class TransformStats(_Stats):
    """A transform output: images per split, the model input's size and the channel statistics that
    normalise it (components.normalisation)."""

    images: dict[str, int]
    image_size: int
    resize_method: str
    channel_mean: list[float]
    channel_std: list[float]
    record_bytes: int
    bytes_per_image: int
    seconds: float
    images_per_second: float

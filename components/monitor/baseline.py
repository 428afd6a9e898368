"""What served traffic is compared with: the served model's evaluation and the data it was trained on.

`--baseline` names an evaluate output (its evaluation.json and predictions.jsonl) or a directory holding
one (a pipeline work directory such as runs/demo: its newest evaluation). From the evaluation: the class
names, the accuracy of its first split, the predicted-class and confidence distributions and the
probability vectors of that split. From the ingest output it evaluated on: image statistics of a seeded
sample of the training split (components.monitor.images).
"""

from __future__ import annotations

import glob
import logging
import os
import posixpath
from collections import Counter
from dataclasses import dataclass

import numpy as np

from components.artifacts import EVALUATION_FILE, PREDICTIONS_FILE
from components.files import read_json
from components.monitor.images import ImageFacts, image_facts

logger = logging.getLogger(__name__)


class BaselineError(ValueError):
    """The baseline cannot be read: the message names the path and what is missing."""


@dataclass(frozen=True)
class Baseline:
    evaluation: str  # the evaluate output directory
    labels: list[str]
    split: str
    accuracy: float
    predicted: Counter  # class name -> predictions of the split
    scores: np.ndarray  # the top probability of each prediction
    probabilities: np.ndarray  # [N, C]
    training_facts: list[ImageFacts]


def find_evaluation(path: str) -> str:
    """The evaluate output `path` is or holds (the newest one under it)."""
    if os.path.isfile(posixpath.join(path, EVALUATION_FILE)):
        return path
    found = sorted(glob.glob(posixpath.join(glob.escape(path), "**", EVALUATION_FILE), recursive=True),
                   key=os.path.getmtime)
    if not found:
        raise BaselineError(f"--baseline {path}: no {EVALUATION_FILE} in it or under it: give an evaluate output "
                            f"(components.evaluate --output) or the pipeline work directory that holds one")
    return os.path.dirname(found[-1])


def read_baseline(path: str, training_images: int, seed: int = 0) -> Baseline:
    """The baseline of `path` (see the module doc); `training_images` sampled from the training split."""
    directory = find_evaluation(path)
    evaluation = read_json(posixpath.join(directory, EVALUATION_FILE))
    labels, split = list(evaluation["labels"]), next(iter(evaluation["splits"]))
    rows = [row for row in _read_jsonl(posixpath.join(directory, PREDICTIONS_FILE)) if row["split"] == split]
    if not rows:
        raise BaselineError(f"{directory}/{PREDICTIONS_FILE} has no predictions of the {split} split")
    probabilities = np.asarray([row["probabilities"] for row in rows], np.float64)
    predicted = Counter(labels[i] for i in probabilities.argmax(axis=1))
    facts = _training_facts(evaluation["data"], training_images, seed)
    logger.info("Baseline: %s (%s split, accuracy %.4f, %d predictions), %d training images from %s", directory,
                split, evaluation["splits"][split]["accuracy"], len(rows), len(facts), evaluation["data"])
    return Baseline(directory, labels, split, float(evaluation["splits"][split]["accuracy"]), predicted,
                    probabilities.max(axis=1), probabilities, facts)


def _read_jsonl(path: str) -> list[dict]:
    import json

    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _training_facts(data: str, count: int, seed: int) -> list[ImageFacts]:
    """Image statistics of a seeded sample of the training split: format, channels and size as ingest recorded
    them for the original file, brightness and contrast from the stored image."""
    from components.dataset import read_split

    dataset = read_split(data, "train", decode=False).shuffle(10 * count, seed=seed).take(count)
    facts = []
    for record in dataset.as_numpy_iterator():
        stored = image_facts(record["image/encoded"])
        facts.append(ImageFacts(
            format=record["image/original_format"].decode(), channels=str(int(record["image/channels"])),
            width=float(record["image/width"]), height=float(record["image/height"]), bytes=float("nan"),
            brightness=stored.brightness, contrast=stored.contrast))
    if not facts:
        raise BaselineError(f"{data}: the training split has no records")
    return facts

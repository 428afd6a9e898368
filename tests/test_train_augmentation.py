"""Every augmentation switch, alone and all off, trains, exports, and the export serves image bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from components.batch_predict.run import run_batch_predict
from components.dataset import read_labels
from components.export.run import run_export
from components.train.run import run_training
from conftest import make_config

ALL_OFF = ("train.augment.flip=false", "train.augment.quarter_turns=false", "train.augment.invert=false")
ALONE = {
    "flip": ("train.augment.flip=true",),
    "quarter_turns": ("train.augment.quarter_turns=true",),
    "invert": ("train.augment.invert=true",),
    "rotation": ("train.augment.rotation=0.1",),
    "zoom": ("train.augment.zoom=0.1",),
    "color": ("train.augment.color=true",),
    "crop_ratio": ("train.augment.crop_ratio=0.75",),
}
# One epoch of one step: what is checked is that the model saves, loads and serves, not what it learnt.
QUICK = ("train.epochs=1", "train.batch_size=16", "train.num_training_examples=16", "train.tensorboard_images=2",
         "export.tflite=[]", "export.warmup_requests=1")


def train_and_export(tiny_run, root: Path, switches: tuple[str, ...]) -> str:
    config = make_config(*QUICK, *ALL_OFF, *switches)
    train = run_training(tiny_run.transform, str(root / "train"), config)
    return run_export(train.output, tiny_run.transform, str(root / "models" / "tiny"), config).output


def assert_serves_image_bytes(version: str, tiny_run) -> None:
    files = sorted(tiny_run.images.rglob("*.*"))[::20]
    out = tf.saved_model.load(version).signatures["serving_default"](
        image_bytes=tf.constant([f.read_bytes() for f in files]))
    assert out["probabilities"].shape == (len(files), 3)
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-5)
    assert set(out["label"].numpy().astype(str)) <= set(read_labels(tiny_run.transform))


@pytest.mark.parametrize("name", ALONE)
def test_each_augmentation_alone_exports_and_serves(name, tiny_run, tmp_path):
    assert_serves_image_bytes(train_and_export(tiny_run, tmp_path, ALONE[name]), tiny_run)


def test_without_augmentation_the_export_serves_and_scores_in_batch(tiny_run, tmp_path):
    version = train_and_export(tiny_run, tmp_path, ())  # no augmentation block in the model at all
    assert_serves_image_bytes(version, tiny_run)
    result = run_batch_predict(version, str(tiny_run.images / "*" / "*.png"), str(tmp_path / "scored"),
                               make_config("tracking.enabled=false"))
    assert result.summary["predictions"] == len(list(tiny_run.images.rglob("*.png"))) > 0
    assert result.summary["errors"] == 0

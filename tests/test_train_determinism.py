"""Reproducible training: the same data, configuration and seed give the same weights."""

from __future__ import annotations

import numpy as np
import tf_keras as keras

from components.train.run import run_training
from conftest import make_config

# Every random augmentation on, so their seeds are checked too.
QUICK = ("train.epochs=2", "train.batch_size=16", "train.tensorboard_images=0", "train.augment.rotation=0.1",
         "train.augment.zoom=0.1", "train.augment.color=true", "train.augment.crop_ratio=0.9",
         "train.augment.flip=true", "train.augment.quarter_turns=true", "train.augment.invert=true")


def trained_weights(transform: str, output, seed: int) -> list[np.ndarray]:
    result = run_training(transform, str(output), make_config(*QUICK, f"train.seed={seed}"))
    return keras.models.load_model(f"{result.output}/model", compile=False).get_weights()


def test_the_same_seed_gives_the_same_weights_and_another_seed_others(tiny_run, tmp_path):
    first = trained_weights(tiny_run.transform, tmp_path / "first", seed=7)
    again = trained_weights(tiny_run.transform, tmp_path / "again", seed=7)
    other = trained_weights(tiny_run.transform, tmp_path / "other", seed=8)
    assert len(first) == len(again) == len(other)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))

"""tf.transform on real ingest output with a real Beam pipeline: statistics, parity, odd images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
from PIL import Image

from components import dataset
from components.ingest.run import run_ingest
from components.transform.preprocessing import RESIZE_METHODS, prepare_pixels
from components.transform.run import run_transform
from conftest import make_config, write_class_tree

IMAGE_SIZE = 24


@pytest.fixture(scope="module")
def transformed(tmp_path_factory):
    """A small ingest (with a 1-px-wide and a grayscale image) and its transform."""
    root = tmp_path_factory.mktemp("transform")
    images = root / "images"
    write_class_tree(images, classes=("a", "b"), per_class=15, seed=600)
    Image.fromarray(np.arange(40, dtype=np.uint8).reshape(40, 1)).save(images / "a" / "one_px_wide.png")
    Image.fromarray(np.full((30, 50), 200, np.uint8)).save(images / "b" / "gray.jpg")
    config = make_config("ingest.min_side=1", f"transform.image_size={IMAGE_SIZE}", "transform.batch_size=4")
    ingest = run_ingest(str(images), str(root / "ingest"), config)
    return ingest, run_transform(ingest.output, str(root / "transform"), config)


def pixels_of(directory: str, split: str) -> list[np.ndarray]:
    return [prepare_pixels(r["image/encoded"], IMAGE_SIZE, "pad").numpy()
            for r in dataset.read_split(directory, split, decode=False)]


def test_statistics_are_those_of_the_training_split(transformed):
    ingest, result = transformed
    train = np.concatenate([p.reshape(-1, 3) for p in pixels_of(ingest.output, "train")]) / 255.0
    everything = np.concatenate([p.reshape(-1, 3) for s in ("train", "valid", "test")
                                 for p in pixels_of(ingest.output, s)]) / 255.0
    stats = json.loads(Path(result.output, "stats.json").read_text())
    np.testing.assert_allclose(stats["channel_mean"], train.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(stats["channel_std"], train.std(axis=0), atol=1e-5)
    assert np.abs(everything.mean(axis=0) - train.mean(axis=0)).max() > 1e-3


def test_serving_transform_equals_training_transform(transformed):
    ingest, result = transformed
    layer = tft.TFTransformOutput(result.output).transform_features_layer()
    for split in ("train", "valid", "test"):
        original = list(dataset.read_split(ingest.output, split, decode=False))
        materialized = list(dataset.read_split(result.output, split, decode=False))
        assert sorted(r["image/sha256"].numpy() for r in original) == sorted(
            r["image/sha256"].numpy() for r in materialized)
        by_sha = {r["image/sha256"].numpy(): r for r in original}
        for record in materialized:
            source = by_sha[record["image/sha256"].numpy()]
            serving = layer({"image/encoded": tf.reshape(source["image/encoded"], [1])})
            training = layer({"image/encoded": tf.reshape(record["image/encoded"], [1]),
                              "label/text": tf.reshape(record["label/text"], [1])})
            assert set(serving) == {"image"}  # serving needs no label
            np.testing.assert_allclose(serving["image"].numpy(), training["image"].numpy(), atol=1e-6)
            assert training["label"].numpy()[0] == record["label/id"].numpy()


def test_outputs_manifest_and_label_vocabulary(transformed):
    ingest, result = transformed
    out = Path(result.output)
    assert (out / "transform_fn").is_dir() and (out / "transformed_metadata").is_dir()
    assert tft.TFTransformOutput(str(out)).vocabulary_by_name("labels") == [b"a", b"b"]
    assert (out / "labels.txt").read_text() == "a\nb\n"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "transform" and manifest["inputs"]["dataset_fingerprint"] == ingest.fingerprint
    stats = json.loads((out / "stats.json").read_text())
    assert stats["images"] == ingest.stats.split_images() == result.stats.images
    for record in dataset.read_split(str(out), "train"):
        assert record["image"].shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
        assert record["image/format"].numpy() == b"png"


@pytest.mark.parametrize("method", RESIZE_METHODS)
def test_odd_images_resize_to_the_configured_size(method):
    for array in (np.full((1, 37), 90, np.uint8), (np.arange(600) % 256).astype(np.uint8).reshape(600, 1),
                  np.zeros((50, 50, 3), np.uint8)):
        encoded = tf.io.encode_png(array[..., None] if array.ndim == 2 else array)
        pixels = prepare_pixels(encoded, IMAGE_SIZE, method)
        assert pixels.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and pixels.dtype == tf.uint8
    square = np.random.default_rng(0).integers(0, 255, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    np.testing.assert_array_equal(prepare_pixels(tf.io.encode_png(square), IMAGE_SIZE, method), square)

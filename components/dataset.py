"""The `tf.data` reader of ingest outputs, and the one image decoder every stage uses.

`decode_image` turns `image/encoded` into the normalised pixels (8-bit RGB, orientation
applied; see components.ingest.images), bit for bit.
"""

from __future__ import annotations

import posixpath

import tensorflow as tf

from components.artifacts import LABELS_FILE
from components.manifest import read_manifest
from components.records import COMPRESSION, FEATURE_TYPES, SHARD_SUFFIX, SPLITS

FEATURES = {
    key: tf.io.FixedLenFeature([], tf.int64 if kind == "int64" else tf.string) for key, kind in FEATURE_TYPES.items()
}


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """Decodes JPEG/PNG (also GIF/BMP) bytes to uint8 RGB `[H, W, 3]`.

    JPEG uses the accurate integer IDCT, which matches libjpeg's default (Pillow, OpenCV)
    bit for bit; `tf.io.decode_image` would use the fast IDCT and differ by a few levels.
    """
    image = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False),
    )
    image.set_shape([None, None, 3])
    return image


def split_files(directory: str, split: str) -> list[str]:
    """The shard files of one split, in shard order (empty when the split has no image)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return sorted(tf.io.gfile.glob(posixpath.join(directory, f"{split}-*-of-*{SHARD_SUFFIX}")))


def read_labels(directory: str) -> list[str]:
    """Class names in id order, from labels.txt."""
    with tf.io.gfile.GFile(posixpath.join(directory, LABELS_FILE)) as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses serialized records (a scalar or a batch) into the FEATURES dict."""
    return tf.io.parse_example(serialized, FEATURES)


def read_split(
    directory: str,
    split: str,
    *,
    decode: bool = True,
    shuffle_files: bool = False,
    seed: int | None = None,
) -> tf.data.Dataset:
    """A dataset of parsed records of one split of an ingest or transform output, with `image`
    (uint8 RGB) when `decode`.

    Shards are read in parallel (interleave) and parsed/decoded in parallel; the order is
    deterministic unless `shuffle_files`.
    """
    read_manifest(directory, "ingest", "transform")  # refuses unfinished outputs
    files = split_files(directory, split)
    dataset = tf.data.Dataset.from_tensor_slices(tf.constant(files, dtype=tf.string))
    if shuffle_files:
        dataset = dataset.shuffle(max(len(files), 1), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=COMPRESSION),
        cycle_length=max(1, min(len(files), 8)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=not shuffle_files,
    )

    def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        record = tf.io.parse_single_example(serialized, FEATURES)
        if decode:
            record["image"] = decode_image(record["image/encoded"])
        return record

    return dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle_files)

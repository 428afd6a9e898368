"""The training input pipeline: transform records -> (normalised image, label id) batches.

The records hold SxS PNGs (components.transform); the tf.transform layer, the very graph that
serves the model, decodes and normalises them. As in the book's input pipeline: shards are
read with parallel interleave, parsed and transformed in parallel (vectorised over blocks of
records), optionally cached in memory after the transform, shuffled, batched and prefetched.
Training repeats the data, so virtual epochs (`num_training_examples`) work. Shuffles are
seeded; a deterministic training pipeline also keeps the order of its parallel reads and maps,
so the same seed gives the same batches.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from components.dataset import split_files
from components.records import COMPRESSION
from components.transform.preprocessing import IMAGE_KEY, LABEL_TEXT_KEY

# Records transformed per call of the tf.transform layer (its decode is a map_fn inside).
_TRANSFORM_BLOCK = 64
_PARSE_SPEC = {IMAGE_KEY: tf.io.FixedLenFeature([], tf.string), LABEL_TEXT_KEY: tf.io.FixedLenFeature([], tf.string)}


def make_dataset(
    transform_dir: str,
    split: str,
    batch_size: int,
    *,
    training: bool,
    seed: int = 0,
    cache: bool = True,
    shuffle_buffer: int = 4096,
    deterministic: bool = True,
) -> tf.data.Dataset:
    """Batches of `(image float32 [B, S, S, 3], label int64 [B])` for one split.

    Training batches are shuffled by `seed` and repeat forever (size epochs with `steps_per_epoch`);
    evaluation batches pass over the split once, in order. `deterministic=False` lets training's
    parallel reads and maps deliver out of order (faster when one is slow, a different order each run).
    """
    ordered = deterministic or not training
    files = split_files(transform_dir, split)
    if not files:
        raise ValueError(f"{transform_dir} has no {split} records")
    layer = tft.TFTransformOutput(transform_dir).transform_features_layer()

    dataset = tf.data.Dataset.from_tensor_slices(files)
    if training:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=COMPRESSION),
        cycle_length=min(len(files), 8),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=ordered,
    )

    def transform(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        features = layer(tf.io.parse_example(serialized, _PARSE_SPEC))
        return features["image"], features["label"]

    dataset = (
        dataset.batch(_TRANSFORM_BLOCK)
        .map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=ordered)
        .unbatch()
    )
    if cache:
        dataset = dataset.cache()
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE).with_options(options)


def count_examples(transform_dir: str, split: str) -> int:
    """Records in one split (from the transform stage's stats)."""
    from components.manifest import read_manifest

    return int(read_manifest(transform_dir, "transform").outputs["images"][split])

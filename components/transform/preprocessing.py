"""The tf.transform preprocessing graph: image bytes -> normalised float image, label -> id.

One graph serves training, evaluation, export, online serving and batch scoring:

    image bytes --decode--> uint8 RGB --resize(pad|crop|stretch)--> uint8 SxSx3 ("pixels")
                --/255, -mean, /std (train-split statistics; components.normalisation)--> float32 SxSx3 ("image")
    label text --vocabulary (train split)--> int64 ("label"; only when a label is given)

Pixels are rounded to uint8 after resizing, so a lossless PNG of them decodes back to the very
same pixels; the transform job materialises that PNG, and the graph maps it to the same `image`
as the original bytes (an SxS input skips resizing).
"""

from __future__ import annotations

import functools

import tensorflow as tf
import tensorflow_transform as tft

from components.dataset import decode_image
from components.normalisation import scale, standardise

RESIZE_METHODS = ("pad", "crop", "stretch")
IMAGE_KEY = "image/encoded"
LABEL_TEXT_KEY = "label/text"
LABEL_VOCABULARY = "labels"


def prepare_pixels(encoded: tf.Tensor, image_size: int, method: str) -> tf.Tensor:
    """Decodes one image and resizes it to uint8 `[image_size, image_size, 3]`."""
    if method not in RESIZE_METHODS:
        raise ValueError(f"resize method {method!r}: choose from {RESIZE_METHODS}")
    image = decode_image(encoded)
    size = [image_size, image_size]

    def resize() -> tf.Tensor:
        pixels = tf.cast(image, tf.float32)
        if method == "pad":  # tf.image.resize_with_pad fails on sides that scale below one pixel
            shape = tf.cast(tf.shape(pixels)[:2], tf.float32)
            scaled = tf.maximum(tf.cast(tf.round(shape * image_size / tf.reduce_max(shape)), tf.int32), 1)
            fitted = tf.image.resize(pixels, scaled, antialias=True)
            offset = (image_size - scaled) // 2
            resized = tf.image.pad_to_bounding_box(fitted, offset[0], offset[1], image_size, image_size)
        elif method == "crop":
            shape = tf.shape(pixels)
            side = tf.minimum(shape[0], shape[1])
            square = tf.image.crop_to_bounding_box(pixels, (shape[0] - side) // 2, (shape[1] - side) // 2, side, side)
            resized = tf.image.resize(square, size, antialias=True)
        else:
            resized = tf.image.resize(pixels, size, antialias=True)
        return tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)

    shape = tf.shape(image)
    already = tf.logical_and(tf.equal(shape[0], image_size), tf.equal(shape[1], image_size))
    pixels = tf.cond(already, lambda: image, resize)
    return tf.ensure_shape(pixels, [image_size, image_size, 3])


def prepare_batch(encoded: tf.Tensor, image_size: int, method: str) -> tf.Tensor:
    """`prepare_pixels` over a `[batch]` string tensor: uint8 `[batch, size, size, 3]`."""
    return tf.map_fn(
        functools.partial(prepare_pixels, image_size=image_size, method=method),
        encoded,
        fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8),
    )


def make_preprocessing_fn(image_size: int, method: str, labels: list[str]):
    """The tf.transform `preprocessing_fn` for this image size and resize method.

    `labels` (the ingest's labels.txt) fixes the order of the label vocabulary, so class ids
    are the same in ingest records, transformed data and the served model.
    """

    def preprocessing_fn(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        pixels = prepare_batch(tf.reshape(inputs[IMAGE_KEY], [-1]), image_size, method)
        scaled = scale(tf.cast(pixels, tf.float32))
        channels = tf.reshape(scaled, [-1, 3])  # every pixel of the batch, per channel
        mean = tft.mean(channels, reduce_instance_dims=False, name="channel_mean")
        variance = tft.var(channels, reduce_instance_dims=False, name="channel_variance")
        outputs = {"image": standardise(scaled, mean, tf.sqrt(tf.maximum(variance, 1e-12)))}
        if LABEL_TEXT_KEY in inputs:
            outputs["label"] = tft.compute_and_apply_vocabulary(
                tf.reshape(inputs[LABEL_TEXT_KEY], [-1]), vocab_filename=LABEL_VOCABULARY, reserved_tokens=labels,
                default_value=-1)
        return outputs

    return preprocessing_fn

"""The served model: the tf.transform graph, the trained Keras model and the labels in one SavedModel.

Its names (signatures, inputs, outputs) are the contract in components.artifacts.

Signatures (all outputs: `probabilities` float [N, C], `class_id` int64 [N], `label` string [N],
`score` float [N]):

  serving_default        image_bytes string [N] (JPEG, PNG, GIF, BMP or WebP bytes; b64 in TF Serving's JSON)
  predict_with_key       image_bytes string [N], key string [N] -> the outputs plus `key`, echoed
  predict_images         images uint8 [N, H, W, 3], any H and W up to max_pixels (resized in the graph)
  predict_images_float   images float32 [N, H, W, 3], values in [0, 1] (NaN and infinities refused)
  predict_filenames      filenames string [N]: only when a URI prefix is configured; reads files
                         under that prefix on the server and refuses every other path

Every signature runs the same graph: pixel inputs are encoded as lossless PNG and go through the
tf.transform layer exactly like bytes do, so no preprocessing exists twice.

Before anything is decoded or encoded, the graph refuses (InvalidArgumentError naming the instance
and the limit; components.image_header): bytes (or files) that are no JPEG, PNG, GIF, BMP or WebP
or whose header does not parse, headers declaring more than `max_pixels` pixels (the export's
ingest.max_pixels), pixel inputs of more than `max_pixels` pixels per image.
"""

from __future__ import annotations

import posixpath

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

import components.train.models  # noqa: F401  (registers the custom layers the trained model uses)
from components.artifacts import (CLASS_ID, FILENAMES_INPUT, FILENAMES_SIGNATURE, FLOAT_IMAGES_SIGNATURE, IMAGE_INPUT,
                                  IMAGES_INPUT, IMAGES_SIGNATURE, KEY_INPUT, KEYED_SIGNATURE, LABEL, LABELS_FILE,
                                  PROBABILITIES, SCORE, SERVING_SIGNATURE)
from components.image_header import check_finite, check_image_bytes, check_pixel_size
from components.normalisation import PIXEL_MAX
from components.transform.preprocessing import IMAGE_KEY


class ServingModel(tf.Module):
    """Image bytes (or pixels) in; class probabilities, id, label and score out."""

    def __init__(self, model_dir: str, transform_dir: str, max_pixels: int, filename_prefix: str = ""):
        super().__init__(name="cvpipe_serving")
        self.model = keras.models.load_model(model_dir, compile=False)
        self.transform_layer = tft.TFTransformOutput(transform_dir).transform_features_layer()
        self.labels_file = tf.saved_model.Asset(posixpath.join(transform_dir, LABELS_FILE))
        self.labels = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                self.labels_file, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
                tf.string, tf.lookup.TextFileIndex.WHOLE_LINE),
            default_value="")
        self.filename_prefix = filename_prefix
        self.max_pixels = max_pixels

    def _classify_bytes(self, image_bytes: tf.Tensor, input_name: str) -> dict[str, tf.Tensor]:
        return self._classify(check_image_bytes(image_bytes, self.max_pixels, input_name=input_name))

    def _classify(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        """Classifies images known to be within the limits."""
        image = self.transform_layer({IMAGE_KEY: image_bytes})["image"]
        probabilities = self.model(image, training=False)
        class_id = tf.argmax(probabilities, axis=1)
        return {PROBABILITIES: probabilities, CLASS_ID: class_id, LABEL: self.labels.lookup(class_id),
                SCORE: tf.reduce_max(probabilities, axis=1)}

    def _classify_pixels(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """Classifies uint8 pixels known to be within the limits (their PNG needs no header check)."""
        return self._classify(tf.map_fn(tf.io.encode_png, images, fn_output_signature=tf.string))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_INPUT)])
    def serve_bytes(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._classify_bytes(image_bytes, IMAGE_INPUT)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_INPUT),
                                  tf.TensorSpec([None], tf.string, name=KEY_INPUT)])
    def serve_bytes_with_key(self, image_bytes: tf.Tensor, key: tf.Tensor) -> dict[str, tf.Tensor]:
        return {**self._classify_bytes(image_bytes, IMAGE_INPUT), KEY_INPUT: tf.identity(key)}

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=IMAGES_INPUT)])
    def serve_images(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._classify_pixels(check_pixel_size(images, self.max_pixels))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name=IMAGES_INPUT)])
    def serve_float_images(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        images = check_finite(check_pixel_size(images, self.max_pixels))
        pixels = tf.cast(tf.round(tf.clip_by_value(images, 0.0, 1.0) * PIXEL_MAX), tf.uint8)
        return self._classify_pixels(pixels)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=FILENAMES_INPUT)])
    def serve_filenames(self, filenames: tf.Tensor) -> dict[str, tf.Tensor]:
        allowed = tf.logical_and(
            tf.strings.regex_full_match(filenames, _prefix_pattern(self.filename_prefix)),
            tf.logical_not(tf.strings.regex_full_match(filenames, r".*(^|/)\.\.(/|$).*")))
        check = tf.debugging.Assert(
            tf.reduce_all(allowed),
            [f"{FILENAMES_SIGNATURE} reads only paths under {self.filename_prefix} (no '..'); got:",
             tf.boolean_mask(filenames, tf.logical_not(allowed))])
        with tf.control_dependencies([check]):
            contents = tf.map_fn(tf.io.read_file, filenames, fn_output_signature=tf.string)
        return self._classify_bytes(contents, FILENAMES_INPUT)

    def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """The signature map to save; the filename signature only with a prefix configured."""
        signatures = {
            SERVING_SIGNATURE: self.serve_bytes.get_concrete_function(),
            KEYED_SIGNATURE: self.serve_bytes_with_key.get_concrete_function(),
            IMAGES_SIGNATURE: self.serve_images.get_concrete_function(),
            FLOAT_IMAGES_SIGNATURE: self.serve_float_images.get_concrete_function(),
        }
        if self.filename_prefix:
            signatures[FILENAMES_SIGNATURE] = self.serve_filenames.get_concrete_function()
        return signatures


def _prefix_pattern(prefix: str) -> str:
    """A regex matching paths that start with `prefix` literally."""
    special = set(r"\.^$|?*+()[]{}")
    return "".join("\\" + c if c in special else c for c in prefix) + ".+"


def save_serving_model(model_dir: str, transform_dir: str, path: str, max_pixels: int,
                       filename_prefix: str = "") -> ServingModel:
    """Builds the serving model and saves it as a SavedModel at `path`."""
    serving = ServingModel(model_dir, transform_dir, max_pixels, filename_prefix)
    tf.saved_model.save(serving, path, signatures=serving.signatures())
    return serving

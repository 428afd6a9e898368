"""TFLite variants of the trained model, and their accuracy against the SavedModel.

On-device apps resize the image themselves, so a TFLite model takes one `[1, S, S, 3]` image of
pixel values in [0, 255] (what `predict_images` takes after resizing) and returns class
probabilities. Its normalisation (components.normalisation) uses the channel statistics of the
tf.transform analysis.

  float16: weights stored as float16, float computation (half the size)
  int8:    full-integer quantization calibrated on training images; uint8 input, float output
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable, Iterator

import numpy as np
import tensorflow as tf
import tf_keras as keras

from components.dataset import read_split
from components.normalisation import normalise

logger = logging.getLogger(__name__)

VARIANTS = ("float16", "int8")


def convert(model: keras.Model, image_size: int, channel_mean: list[float], channel_std: list[float],
            variant: str, representative_images: np.ndarray) -> bytes:
    """The TFLite flatbuffer of `model` behind a pixel-input normalisation, quantized as `variant`."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown TFLite variant {variant!r}; choose from {VARIANTS}")
    mean = tf.constant(channel_mean, tf.float32)
    std = tf.constant(channel_std, tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([1, image_size, image_size, 3], tf.float32, name="pixels")])
    def classify(pixels: tf.Tensor) -> tf.Tensor:
        return model(normalise(pixels, mean, std), training=False)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([classify.get_concrete_function()], model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    else:
        def representative() -> Iterator[list[np.ndarray]]:
            for image in representative_images:
                yield [image[np.newaxis].astype(np.float32)]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
    return converter.convert()


def tflite_classifier(flatbuffer: bytes) -> Callable[[np.ndarray], np.ndarray]:
    """A function mapping one uint8 `[S, S, 3]` image to class probabilities, via the interpreter."""
    with warnings.catch_warnings():  # TF 2.21 still ships it; the ai_edge_litert successor is not installed
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    (source,), (target,) = interpreter.get_input_details(), interpreter.get_output_details()

    def classify(image: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(source["index"], image[np.newaxis].astype(source["dtype"]))
        interpreter.invoke()
        output = interpreter.get_tensor(target["index"])[0]
        scale, zero_point = target["quantization"]
        return (output.astype(np.float32) - zero_point) * scale if scale else output

    return classify


def split_pixels(transform_dir: str, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 `[N, S, S, 3]` images and label ids of one split of a transform output."""
    images, labels = [], []
    for record in read_split(transform_dir, split).take(-1 if limit is None else limit):
        images.append(record["image"].numpy())
        labels.append(record["label/id"].numpy())
    return np.stack(images), np.asarray(labels)


def compare_accuracy(flatbuffer: bytes, images: np.ndarray, labels: np.ndarray,
                     reference_probabilities: np.ndarray) -> dict[str, float | int]:
    """The TFLite model's accuracy, its difference to the reference's, and top-1 agreement."""
    classify = tflite_classifier(flatbuffer)
    predicted = np.array([np.argmax(classify(image)) for image in images])
    reference = np.argmax(reference_probabilities, axis=1)
    accuracy = float(np.mean(predicted == labels))
    saved_model_accuracy = float(np.mean(reference == labels))
    return {
        "examples": int(len(labels)),
        "bytes": len(flatbuffer),
        "accuracy": round(accuracy, 6),
        "saved_model_accuracy": round(saved_model_accuracy, 6),
        "accuracy_delta": round(accuracy - saved_model_accuracy, 6),
        "agreement": round(float(np.mean(predicted == reference)), 6),
    }

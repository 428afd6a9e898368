"""The model input's normalisation: uint8 pixels -> `(pixels / 255 - mean) / std`, and back.

`mean` and `std` are per-channel statistics of the training split's pixels scaled to [0, 1] (the
tf.transform analysis, recorded in the transform's stats.json). The transform graph applies the
formula, the TFLite variants apply it in front of the model, and ImageNet backbones undo it to get
pixels back. The functions take NumPy arrays and TensorFlow tensors alike; no TensorFlow is needed.
"""

from __future__ import annotations

from typing import Any, TypeVar

PIXEL_MAX = 255.0  # the largest uint8 pixel value: pixels / PIXEL_MAX lie in [0, 1]

T = TypeVar("T")


def scale(pixels: T) -> T:
    """Pixel values in [0, 255] scaled to [0, 1] (float `pixels`)."""
    return pixels / PIXEL_MAX  # type: ignore[operator]


def normalise(pixels: T, mean: Any, std: Any) -> T:
    """The model input for float `pixels` in [0, 255]: `(pixels / 255 - mean) / std`, per channel."""
    return standardise(scale(pixels), mean, std)


def standardise(scaled: T, mean: Any, std: Any) -> T:
    """`(scaled - mean) / std`: the model input for pixels already scaled to [0, 1]."""
    return (scaled - mean) / std  # type: ignore[operator]


def scaled_from_normalised(image: T, mean: Any, std: Any) -> T:
    """The scaled pixels (in [0, 1]) a normalised `image` was made from: `image * std + mean`."""
    return image * std + mean  # type: ignore[operator]


def pixels_from_normalised(image: T, mean: Any, std: Any) -> T:
    """The pixel values (in [0, 255]) a normalised `image` was made from."""
    return scaled_from_normalised(image, mean, std) * PIXEL_MAX  # type: ignore[operator]

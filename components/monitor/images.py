"""Cheap statistics of one image, the same for served images and the training baseline: format, channels,
size, byte count, brightness and contrast (mean and standard deviation of its luminance in [0, 1], on a
thumbnail of at most 64 pixels a side so that large images cost little)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components.image_inputs import FORMATS, open_image, source_channels
from components.rejections import ImageRejected

THUMBNAIL_SIDE = 64
UNREADABLE = "unreadable"
NUMERIC_FACTS = ("brightness", "contrast", "width", "height", "bytes")
CATEGORICAL_FACTS = ("format", "channels")


@dataclass(frozen=True)
class ImageFacts:
    format: str  # jpeg, png, ... or "unreadable" (then the numbers are NaN)
    channels: str  # "1", "3", "4" (categorical: a slice value)
    width: float
    height: float
    bytes: float
    brightness: float
    contrast: float


def image_facts(data: bytes) -> ImageFacts:
    """The statistics of image file bytes; an image that does not open gets format `unreadable`."""
    try:
        image = open_image(data)
        fmt = FORMATS.get(image.format or "", (image.format or "unknown").lower())
        channels = source_channels(image)
        width, height = image.size
        image.draft("L", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))  # JPEG: decoded at a reduced scale
        thumbnail = image.convert("L")
        thumbnail.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        luminance = np.asarray(thumbnail, np.float64) / 255.0
    except (ImageRejected, OSError, ValueError):
        nan = float("nan")
        return ImageFacts(UNREADABLE, UNREADABLE, nan, nan, float(len(data)), nan, nan)
    return ImageFacts(fmt, str(channels), float(width), float(height), float(len(data)),
                      float(luminance.mean()), float(luminance.std()))

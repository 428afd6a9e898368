"""Checks one image file and decides what the record stores.

Normalisation (what `components.records.decode_image` gives back for every record):
8-bit RGB with the EXIF orientation applied. Grayscale is replicated to three channels,
alpha is dropped (as TF's decoders do with `channels=3`), palette images are expanded,
16-bit samples keep their high byte, CMYK is converted to RGB, animated images keep their
first frame.

JPEG and PNG files that TF decodes to exactly those pixels are stored as given (no
generation loss, compact records). EXIF-rotated, CMYK, 16-bit and non-JPEG/PNG files are
re-encoded as lossless PNG of the normalised pixels.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import google_crc32c
import numpy as np
from PIL import Image, ImageOps

from components.config import IngestConfig
from components.image_inputs import FORMATS, open_image, source_channels
from components.rejections import ImageRejected, Reason

MAX_FILE_BYTES_SETTING = "ingest.max_file_bytes"
_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}

# We check sizes ourselves before decoding; Pillow's own bomb check would fire after ours.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class CheckedImage:
    """What the checks learned about a valid image; `stored_bytes` gives what its record stores."""

    sha256: str  # of the source bytes
    crc32c: int  # of the source bytes: a cheap check that they are unchanged when read again
    original_format: str
    height: int  # after orientation
    width: int
    channels: int  # of the source image
    source_bytes: int
    # True: the record stores the source bytes; False: a PNG of the normalised pixels.
    stored_as_given: bool

    @property
    def stored_format(self) -> str:
        return self.original_format if self.stored_as_given else "png"


def check_image(data: bytes, config: IngestConfig) -> CheckedImage:
    """Validates `data` against the limits in `config` (decoding it fully); raises ImageRejected."""
    if not data:
        raise ImageRejected(Reason.EMPTY_FILE, "file has zero bytes")
    if len(data) > config.max_file_bytes:
        raise ImageRejected(
            Reason.TOO_LARGE, f"{len(data)} bytes > {MAX_FILE_BYTES_SETTING}={config.max_file_bytes}"
        )
    image = open_image(data)
    original_format = FORMATS.get(image.format or "")
    if original_format is None or original_format not in config.formats:
        raise ImageRejected(
            Reason.UNSUPPORTED_FORMAT,
            f"format {image.format} is not accepted (ingest.formats={config.formats})",
        )
    width, height = image.size
    if width * height > config.max_pixels:
        raise ImageRejected(
            Reason.TOO_LARGE, f"{width}x{height} = {width * height} pixels > ingest.max_pixels={config.max_pixels}"
        )
    if min(width, height) < config.min_side:
        raise ImageRejected(Reason.TOO_SMALL, f"{width}x{height}: shorter side < ingest.min_side={config.min_side}")
    try:
        image.load()
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, EOFError... for bad data
        raise ImageRejected(Reason.CORRUPT, f"{image.format} data does not decode: {e}") from e

    orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    if orientation in (5, 6, 7, 8):  # transposed: displayed width is the stored height
        width, height = height, width
    return CheckedImage(
        sha256=hashlib.sha256(data).hexdigest(),
        crc32c=google_crc32c.value(data),
        original_format=original_format,
        height=height,
        width=width,
        channels=source_channels(image),
        source_bytes=len(data),
        stored_as_given=_stored_as_given(data, image, original_format, orientation),
    )


def stored_bytes(data: bytes, checked: CheckedImage) -> bytes:
    """What the record of a checked image stores: `data` itself, or a PNG of its normalised pixels."""
    if checked.stored_as_given:
        return data
    buffer = io.BytesIO()
    Image.fromarray(normalized_pixels(data)).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def normalized_pixels(image: Image.Image | bytes) -> np.ndarray:
    """The normalised pixels of an image (or its file bytes): uint8 RGB `[H, W, 3]`."""
    if isinstance(image, bytes):
        image = open_image(image)
    image = ImageOps.exif_transpose(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        gray = (np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def _stored_as_given(data: bytes, image: Image.Image, fmt: str, orientation: int) -> bool:
    """Whether TF's decoder turns `data` into the normalised pixels as it is."""
    if orientation not in (0, 1):
        return False  # TF ignores EXIF orientation
    if fmt == "jpeg":
        return image.mode in ("L", "RGB")  # CMYK/YCCK: leave the colour conversion to one decoder
    if fmt == "png":
        return data[24] <= 8  # IHDR bit depth; 16-bit samples are reduced once, here
    return False

"""Reading image inputs, the same way for ingest and batch scoring: the files below a directory, the
rows of a CSV of URIs, the bytes of one file (read in chunks, up to a limit) and what those bytes
say they are.

The rules both stages list and read by live here: the names a CSV header may give its URI column,
how a relative URI is resolved (against the CSV's folder), the signatures that mark an image file,
and how an image whose header does not parse is told from a file that is no image at all. What each
stage then accepts (formats, sizes, labels, CSV layouts) stays with the stage. A file that cannot
be used raises `ImageRejected` with its reason (components.rejections).

Reading is TensorFlow-free (Beam's FileSystems: local, gs://, ...; Pillow), for the workers;
listing runs on the driver through tf.io.gfile, imported when it is called.
"""

from __future__ import annotations

import csv
import io
import posixpath
import re
from typing import BinaryIO

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from PIL import Image, UnidentifiedImageError

from components.rejections import ImageRejected, Reason

# Names a CSV header may give the column of image URIs.
URI_COLUMNS = frozenset({"uri", "image_uri", "image", "path", "filename", "file", "image_path", "url"})
# Pillow's format names -> ours. MPO is the multi-picture JPEG many cameras write.
FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "BMP": "bmp", "GIF": "gif", "TIFF": "tiff", "WEBP": "webp"}
# File signatures, to tell a broken image from something that is no image at all.
SIGNATURES = {
    b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF8": "GIF", b"BM": "BMP",
    b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"RIFF": "WEBP",
}
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_READ_CHUNK_BYTES = 2**20


def list_files(directory: str) -> list[str]:
    """The URIs of every file below `directory` (any tf.io.gfile path), sorted."""
    import tensorflow as tf

    return sorted(posixpath.join(d, name) for d, _, files in tf.io.gfile.walk(directory) for name in files)


def read_csv_rows(path: str) -> list[tuple[int, list[str]]]:
    """The rows of the CSV file `path` (any tf.io.gfile path) that hold anything, numbered from 1."""
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "r") as f:
        text = f.read()
    return [(n, row) for n, row in enumerate(csv.reader(io.StringIO(text)), start=1) if any(c.strip() for c in row)]


def resolve_uri(uri: str, folder: str) -> str:
    """`uri` as given when it has a scheme (gs://...) or is absolute; else relative to `folder`."""
    return uri if _SCHEME.match(uri) or posixpath.isabs(uri) else posixpath.join(folder, uri)


def read_file(uri: str, max_bytes: int, limit_name: str) -> bytes:
    """The bytes at `uri` (local, gs://, ...); a missing, unreadable or oversized file is rejected.

    Reads at most `max_bytes` + 1 bytes, in chunks; `limit_name` is the setting `max_bytes` comes
    from, for the rejection's detail.
    """
    try:
        with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            data = _read_at_most(f, max_bytes + 1)
    except Exception as e:  # each filesystem raises its own errors
        if not _exists(uri):
            raise ImageRejected(Reason.MISSING, "no such file")
        raise ImageRejected(Reason.UNREADABLE, f"read failed: {e}")
    check_size(data, max_bytes, limit_name)
    return data


def check_size(data: bytes, max_bytes: int, limit_name: str) -> None:
    """Rejects `data` when it is longer than `max_bytes`, the setting `limit_name`."""
    if len(data) > max_bytes:
        raise ImageRejected(Reason.TOO_LARGE, f"more than {limit_name}={max_bytes} bytes")


def open_image(data: bytes) -> Image.Image:
    """The image of file bytes `data`, its header parsed (pixels not decoded yet; animations at their
    first frame). Rejects a file that is no image (NOT_IMAGE), one whose header does not parse
    (CORRUPT) and one past Pillow's decompression-bomb limit (TOO_LARGE)."""
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        claimed = next((fmt for sig, fmt in SIGNATURES.items() if data.startswith(sig)), None)
        if claimed:
            raise ImageRejected(Reason.CORRUPT, f"has a {claimed} signature but its header does not parse")
        raise ImageRejected(Reason.NOT_IMAGE, f"not a recognised image format (starts with {data[:8]!r})")
    except Image.DecompressionBombError as e:
        raise ImageRejected(Reason.TOO_LARGE, str(e)) from e
    except Exception as e:  # a recognised header that is itself broken
        raise ImageRejected(Reason.CORRUPT, f"image header does not parse: {e}") from e
    image.seek(0)
    return image


def _exists(uri: str) -> bool:
    """Whether `uri` exists; True when the filesystem cannot tell (the read's error is then the reason)."""
    try:
        return FileSystems.exists(uri)
    except Exception:  # each filesystem raises its own errors
        return True


def _read_at_most(stream: BinaryIO, size: int) -> bytes:
    """Up to `size` bytes of `stream`, in chunks: one read(size) would allocate `size` bytes each time."""
    chunks, total = [], 0
    while total < size and (chunk := stream.read(min(_READ_CHUNK_BYTES, size - total))):
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def source_channels(image: Image.Image) -> int:
    """The channels of the source image (before conversion to RGB): 1 gray, 3 colour, 4 with alpha."""
    if image.mode == "P":
        return 4 if "transparency" in image.info else 3
    return 4 if image.mode == "PA" else len(image.getbands())

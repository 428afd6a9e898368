"""The inputs of a batch scoring run: listing them (driver), cutting them into fixed batches, and
reading them on the workers.

Inputs:
  - a glob of image files (`gs://bucket/images/*.jpg`, `/data/**`), or a directory (every file below it);
  - a CSV of URIs: the first column is the URI, an optional header row names it (`uri`, `path`, ...),
    further columns are ignored, relative URIs are resolved against the CSV's folder;
  - an ingest output directory: its TFRecords (all splits or some), key `image/source`, bytes
    `image/encoded`.

Batches are cut from the sorted URIs (files) or in record order (records), never by the runner: the
same inputs meet the model in the same batches on any runner and worker count, which is what makes
repeated runs byte-identical (a model's float results depend on the batch an image is computed in).

Workers stay TensorFlow-free: files and records are read through Beam's FileSystems (local, gs://),
records are parsed by components.records, and image headers are checked with Pillow (never decoded: the serving graph
decodes).
"""

from __future__ import annotations

import csv
import io
import logging
import posixpath
import re
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import TaggedOutput

from components import records
from components.batch_predict.results import ErrorRow, Reason
from components.config import BatchPredictConfig

logger = logging.getLogger(__name__)

ERRORS = "errors"
URI_HEADERS = {"uri", "image_uri", "image", "path", "filename", "file", "image_path", "url"}
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
# Formats the serving graph decodes (tf.io.decode_jpeg / decode_image), by Pillow's names.
DECODABLE_FORMATS = {"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP"}
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")
_PROGRESS_EVERY = 2000


@dataclass(frozen=True)
class Listing:
    """What a run scores. `uris` for files (sorted), `record_files` for an ingest output."""

    kind: str  # "files" | "records"
    count: int  # inputs, errors found while listing included
    uris: list[str] = field(default_factory=list)
    record_files: list[str] = field(default_factory=list)
    errors: list[ErrorRow] = field(default_factory=list)  # found while listing (malformed CSV rows)
    fingerprint: str = ""  # the ingest output's, for records


def list_inputs(path: str, splits: Sequence[str] = ()) -> Listing:
    """Lists a glob, a directory, a CSV of URIs or an ingest output (driver side; any gfile path)."""
    import tensorflow as tf

    from components.artifacts import MANIFEST_FILE
    from components.manifest import read_manifest

    if tf.io.gfile.isdir(path):
        if tf.io.gfile.exists(posixpath.join(path, MANIFEST_FILE)):
            return _list_records(path, read_manifest(path, "ingest"), splits)
        uris = sorted(posixpath.join(d, name) for d, _, files in tf.io.gfile.walk(path) for name in files)
        if not uris:
            raise FileNotFoundError(f"input directory {path} holds no file")
        return _files(uris, splits)
    if path.lower().endswith(".csv") and tf.io.gfile.exists(path):
        return _read_csv(path, splits)
    uris = sorted(u for u in tf.io.gfile.glob(path) if not tf.io.gfile.isdir(u))
    if not uris:
        raise FileNotFoundError(f"no file matches the input {path} (give a glob of images, a CSV of URIs or an "
                                "ingest output directory)")
    return _files(uris, splits)


def _files(uris: list[str], splits: Sequence[str], errors: list[ErrorRow] = ()) -> Listing:
    if splits:
        raise ValueError("--split applies to an ingest output directory only")
    return Listing("files", len(uris) + len(errors), uris=uris, errors=list(errors))


def _read_csv(path: str, splits: Sequence[str]) -> Listing:
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "r") as f:
        rows = [(n, row) for n, row in enumerate(csv.reader(io.StringIO(f.read())), start=1)
                if any(cell.strip() for cell in row)]
    if rows and rows[0][1][0].strip().lower() in URI_HEADERS:
        rows = rows[1:]
    base = posixpath.dirname(path)
    uris, errors = [], []
    for line, row in rows:
        uri = row[0].strip()
        if not uri:
            errors.append(ErrorRow(f"{path}:{line}", Reason.MALFORMED_ROW.value, f"empty uri (first column): {row!r}"))
            continue
        if not _SCHEME.match(uri) and not posixpath.isabs(uri):
            uri = posixpath.join(base, uri)
        uris.append(uri)
    if not uris and not errors:
        raise ValueError(f"CSV {path} has no rows; expected one URI per row in the first column")
    return _files(sorted(uris), splits, errors)


def _list_records(directory: str, manifest, splits: Sequence[str]) -> Listing:
    shards = [s for s in manifest.outputs["shards"] if not splits or s["split"] in splits]
    if not shards:
        raise ValueError(f"{directory} has no records of the split(s) {list(splits)}")
    files = [posixpath.join(directory, s["file"]) for s in sorted(shards, key=lambda s: s["file"])]
    return Listing("records", sum(s["records"] for s in shards), record_files=files, fingerprint=manifest.fingerprint)


def plan_batches(uris: Sequence[str], size: int) -> list[list[str]]:
    """Sorted URIs cut into batches of `size` (the last one shorter)."""
    return [list(uris[i:i + size]) for i in range(0, len(uris), size)]


def check_image(uri: str, data: bytes, settings: BatchPredictConfig) -> ErrorRow | None:
    """An ErrorRow when `data` cannot be scored: empty, too large, not an image the serving graph
    decodes, or a broken header. Reads the header only; the graph decodes the pixels."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        return ErrorRow(uri, Reason.EMPTY_FILE.value, "file has zero bytes")
    if len(data) > settings.max_image_bytes:
        return ErrorRow(uri, Reason.TOO_LARGE.value,
                        f"more than batch_predict.max_image_bytes={settings.max_image_bytes} bytes")
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt, (width, height) = image.format, image.size
    except UnidentifiedImageError:
        if data.startswith(_SIGNATURES):
            return ErrorRow(uri, Reason.CORRUPT.value, "has an image signature but its header does not parse")
        return ErrorRow(uri, Reason.NOT_IMAGE.value, f"not a recognised image format (starts with {data[:8]!r})")
    except Image.DecompressionBombError as e:
        return ErrorRow(uri, Reason.TOO_LARGE.value, str(e))
    except Exception as e:  # a recognised header that is itself broken
        return ErrorRow(uri, Reason.CORRUPT.value, f"image header does not parse: {e}")
    if fmt not in DECODABLE_FORMATS:
        return ErrorRow(uri, Reason.UNSUPPORTED_FORMAT.value,
                        f"{fmt} is not decoded by the serving graph (JPEG, PNG, GIF, BMP, WebP)")
    if width * height > settings.max_pixels:
        return ErrorRow(uri, Reason.TOO_LARGE.value, f"{width}x{height} = {width * height} pixels > "
                        f"batch_predict.max_pixels={settings.max_pixels}")
    return None


def read_file(uri: str, max_bytes: int) -> bytes | ErrorRow:
    """The bytes at `uri` (at most max_bytes + 1 of them), or an ErrorRow (missing, unreadable)."""
    try:
        with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            return f.read(max_bytes + 1)
    except Exception as e:  # each filesystem raises its own errors
        try:
            exists = FileSystems.exists(uri)
        except Exception:
            exists = True
        if not exists:
            return ErrorRow(uri, Reason.MISSING.value, "no such file")
        return ErrorRow(uri, Reason.UNREADABLE.value, f"read failed: {e}")


class _Reader(beam.DoFn):
    def __init__(self, settings: BatchPredictConfig, batch_size: int):
        self._settings = settings
        self._batch_size = batch_size
        self._seen = 0

    def _error(self, uri: str, data: bytes | ErrorRow) -> ErrorRow | None:
        """Why the input at `uri` cannot be scored, or None."""
        self._seen += 1
        if self._seen % _PROGRESS_EVERY == 0:
            logger.info("read %d inputs in this worker", self._seen)
        error = data if isinstance(data, ErrorRow) else check_image(uri, data, self._settings)
        if error is not None:
            beam.metrics.Metrics.counter("batch_predict", f"error_{error.reason}").inc()
        return error


class ReadImages(_Reader):
    """A batch of URIs -> one batch [(uri, bytes)] of the readable images; the others as tagged ErrorRows."""

    def process(self, uris: list[str]) -> Iterator:
        batch = []
        for uri in uris:
            data = read_file(uri, self._settings.max_image_bytes)
            error = self._error(uri, data)
            if error is None:
                batch.append((uri, data))
            else:
                yield TaggedOutput(ERRORS, error)
        if batch:
            yield batch


class ReadRecords(_Reader):
    """An ingest shard -> batches [(image/source, image/encoded)] in record order; bad records as ErrorRows."""

    def process(self, path: str) -> Iterator:
        batch = []
        for index, record in enumerate(read_tfrecords(path)):
            features = records.example_bytes(record, ("image/source", "image/encoded"))
            uri = features["image/source"].decode("utf-8", "replace") if "image/source" in features \
                else f"{path}#{index}"
            data = features.get("image/encoded")
            if data is None:
                data = ErrorRow(uri, Reason.MALFORMED_ROW.value, f"record {index} of {path} has no image/encoded")
            error = self._error(uri, data)
            if error is not None:
                yield TaggedOutput(ERRORS, error)
                continue
            batch.append((uri, data))
            if len(batch) == self._batch_size:
                yield batch
                batch = []
        if batch:
            yield batch


def read_tfrecords(path: str) -> Iterator[bytes]:
    """The records of a TFRecord file (gzip'd when it ends in .gz), CRCs checked; TensorFlow-free."""
    compression = CompressionTypes.GZIP if path.endswith(".gz") else CompressionTypes.UNCOMPRESSED
    with FileSystems.open(path, compression_type=compression) as f:
        yield from records.read_records(f, path)

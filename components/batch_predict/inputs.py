"""The inputs of a batch scoring run: listing them (driver), cutting them into fixed batches, and
reading them on the workers.

Inputs:
  - a glob of image files (`gs://bucket/images/*.jpg`, `/data/**`), or a directory (every file below it);
  - a CSV of URIs: the first column is the URI, an optional header row names it (`uri`, `path`, ...:
    components.image_inputs.URI_COLUMNS), further columns are ignored, relative URIs are resolved
    against the CSV's folder;
  - an ingest output directory: its TFRecords (all splits or some), key `image/source`, bytes
    `image/encoded`.

Batches are cut from the sorted URIs (files) or in record order (records), never by the runner: the
same inputs meet the model in the same batches on any runner and worker count, which is what makes
repeated runs byte-identical (a model's float results depend on the batch an image is computed in).

Workers stay TensorFlow-free: files and records are read through Beam's FileSystems (local, gs://),
records are parsed by components.records, and image headers are checked with Pillow (never decoded: the serving graph
decodes). Files are read and headers opened by components.image_inputs, as ingest does.
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterator, Sequence

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import TaggedOutput

from components import image_limits, records
from components.config import BatchPredictConfig
from components.image_inputs import (FORMATS, URI_COLUMNS, check_size, list_files, open_image, read_csv_rows,
                                     read_file, resolve_uri)
from components.rejections import ImageRejected, Reason, Rejection

logger = logging.getLogger(__name__)

ERRORS = "errors"
# Formats the serving graph decodes (tf.io.decode_jpeg / decode_image), by components.image_inputs' names.
DECODABLE_FORMATS = {name.lower() for name in image_limits.ACCEPTED_FORMATS}
MAX_IMAGE_BYTES_SETTING = "batch_predict.max_image_bytes"
_PROGRESS_EVERY = 2000


@dataclass(frozen=True)
class Listing:
    """What a run scores. `uris` for files (sorted), `record_files` for an ingest output."""

    kind: str  # "files" | "records"
    count: int  # inputs, errors found while listing included
    uris: list[str] = field(default_factory=list)
    record_files: list[str] = field(default_factory=list)
    errors: list[Rejection] = field(default_factory=list)  # found while listing (malformed CSV rows)
    fingerprint: str = ""  # the ingest output's, for records


def list_inputs(path: str, splits: Sequence[str] = ()) -> Listing:
    """Lists a glob, a directory, a CSV of URIs or an ingest output (driver side; any gfile path)."""
    import tensorflow as tf

    from components.artifacts import MANIFEST_FILE
    from components.manifest import read_manifest

    if tf.io.gfile.isdir(path):
        if tf.io.gfile.exists(posixpath.join(path, MANIFEST_FILE)):
            return _list_records(path, read_manifest(path, "ingest"), splits)
        uris = list_files(path)
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


def _files(uris: list[str], splits: Sequence[str], errors: list[Rejection] = ()) -> Listing:
    if splits:
        raise ValueError("--split applies to an ingest output directory only")
    return Listing("files", len(uris) + len(errors), uris=uris, errors=list(errors))


def _read_csv(path: str, splits: Sequence[str]) -> Listing:
    rows = read_csv_rows(path)
    if rows and rows[0][1][0].strip().lower() in URI_COLUMNS:
        rows = rows[1:]
    base = posixpath.dirname(path)
    uris, errors = [], []
    for line, row in rows:
        uri = row[0].strip()
        if not uri:
            errors.append(Rejection(f"{path}:{line}", Reason.MALFORMED_ROW, f"empty uri (first column): {row!r}"))
            continue
        uris.append(resolve_uri(uri, base))
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


def check_header(data: bytes, settings: BatchPredictConfig) -> None:
    """Rejects `data` when it cannot be scored: empty, too large, not an image the serving graph
    decodes, or a broken header. Reads the header only; the graph decodes the pixels."""
    if not data:
        raise ImageRejected(Reason.EMPTY_FILE, "file has zero bytes")
    check_size(data, settings.max_image_bytes, MAX_IMAGE_BYTES_SETTING)
    with open_image(data) as image:
        fmt, (width, height) = image.format, image.size
    if FORMATS.get(fmt) not in DECODABLE_FORMATS:
        raise ImageRejected(Reason.UNSUPPORTED_FORMAT,
                            f"{fmt} is not decoded by the serving graph ({', '.join(image_limits.ACCEPTED_FORMATS)})")
    if width * height > settings.max_pixels:
        raise ImageRejected(Reason.TOO_LARGE, f"{width}x{height} = {width * height} pixels > "
                            f"batch_predict.max_pixels={settings.max_pixels}")


class _Reader(beam.DoFn):
    def __init__(self, settings: BatchPredictConfig, batch_size: int):
        self._settings = settings
        self._batch_size = batch_size
        self._seen = 0

    def _checked(self, uri: str, read: Callable[[], bytes]) -> bytes | Rejection:
        """`read()`, the bytes of the input at `uri`, once they can be scored; else why they cannot."""
        self._seen += 1
        if self._seen % _PROGRESS_EVERY == 0:
            logger.info("read %d inputs in this worker", self._seen)
        try:
            data = read()
            check_header(data, self._settings)
            return data
        except ImageRejected as rejected:
            beam.metrics.Metrics.counter("batch_predict", f"error_{rejected.reason.value}").inc()
            return Rejection(uri, rejected.reason, rejected.detail)


class ReadImages(_Reader):
    """A batch of URIs -> one batch [(uri, bytes)] of the readable images; the others as tagged Rejections."""

    def process(self, uris: list[str]) -> Iterator:
        batch = []
        for uri in uris:
            data = self._checked(uri, partial(read_file, uri, self._settings.max_image_bytes, MAX_IMAGE_BYTES_SETTING))
            if isinstance(data, Rejection):
                yield TaggedOutput(ERRORS, data)
            else:
                batch.append((uri, data))
        if batch:
            yield batch


class ReadRecords(_Reader):
    """An ingest shard -> batches [(image/source, image/encoded)] in record order; bad records as Rejections."""

    def process(self, path: str) -> Iterator:
        batch = []
        for index, record in enumerate(read_tfrecords(path)):
            features = records.example_bytes(record, ("image/source", "image/encoded"))
            uri = features["image/source"].decode("utf-8", "replace") if "image/source" in features \
                else f"{path}#{index}"
            data = self._checked(uri, partial(_encoded_image, features, f"record {index} of {path}"))
            if isinstance(data, Rejection):
                yield TaggedOutput(ERRORS, data)
                continue
            batch.append((uri, data))
            if len(batch) == self._batch_size:
                yield batch
                batch = []
        if batch:
            yield batch


def _encoded_image(features: dict[str, bytes], record: str) -> bytes:
    """The image bytes of a record's `features`; a record without them is rejected."""
    if "image/encoded" not in features:
        raise ImageRejected(Reason.MALFORMED_ROW, f"{record} has no image/encoded")
    return features["image/encoded"]


def read_tfrecords(path: str) -> Iterator[bytes]:
    """The records of a TFRecord file (gzip'd when it ends in .gz), CRCs checked; TensorFlow-free."""
    compression = CompressionTypes.GZIP if path.endswith(".gz") else CompressionTypes.UNCOMPRESSED
    with FileSystems.open(path, compression_type=compression) as f:
        yield from records.read_records(f, path)

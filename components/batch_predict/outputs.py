"""Prediction rows and the files they go to: jsonl, csv, parquet (pyarrow) or tfrecord
(tf.train.Example, gzip'd), sharded by a hash of the URI, rows sorted by URI within a shard, so
the same inputs and model give byte-identical files. TensorFlow-free.

A row: uri, label, class_id, score, top_k [{label, class_id, probability}], model_name,
model_version (a string, as TF Serving writes versions), and `probabilities` (every class) when
batch_predict.probabilities is on. Floats are the model's float32 values: exact in parquet and
tfrecord, and in jsonl/csv as the shortest decimal of that float32 widened to float64.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import posixpath
import struct
from collections import Counter
from typing import Any, Iterable, Iterator

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from components.batch_predict.results import Failure, Prediction
from components.records import length_delimited, varint
from components.rejections import Rejection

EXTENSIONS = {"jsonl": ".jsonl", "csv": ".csv", "parquet": ".parquet", "tfrecord": ".tfrecord.gz"}
CSV_COLUMNS = ("uri", "label", "class_id", "score", "top_k", "model_name", "model_version")
# Rows per prediction file when batch_predict.output_shards is 0 (auto).
ROWS_PER_SHARD = 100_000
TFRECORD_COMPRESSION_LEVEL = 6


def shard_name(index: int, count: int, fmt: str) -> str:
    """`predictions-00000-of-00004.jsonl`."""
    return f"predictions-{index:05d}-of-{count:05d}{EXTENSIONS[fmt]}"


def shard_of(uri: str, count: int) -> int:
    """The prediction file of a URI: a hash, so it depends on nothing but the URI."""
    return int.from_bytes(hashlib.sha256(uri.encode("utf-8")).digest()[:8], "big") % count


def prediction_row(uri: str, prediction: Prediction, labels: list[str] | None, model_name: str,
                   model_version: str) -> dict[str, Any]:
    """The output row of one prediction; top-k labels come from the model's label list."""
    try:
        top_k = [{"label": labels[c] if labels else prediction.label, "class_id": c, "probability": p}
                 for c, p in prediction.top_k]
    except IndexError:
        raise ValueError(f"the model returned class ids {[c for c, _ in prediction.top_k]} but its labels list "
                         f"has {len(labels)} classes") from None
    row = {"uri": uri, "label": prediction.label, "class_id": prediction.class_id, "score": prediction.score,
           "top_k": top_k, "model_name": model_name, "model_version": model_version}
    if prediction.probabilities is not None:
        row["probabilities"] = list(prediction.probabilities)
    return row


class ToRows(beam.DoFn):
    """(uri, PredictionResult) -> a prediction row, or a Rejection tagged `errors`."""

    def __init__(self, labels: list[str] | None, model_name: str, model_version: str, errors_tag: str):
        self._labels = labels
        self._model_name = model_name
        self._model_version = model_version
        self._errors = errors_tag

    def process(self, element) -> Iterator:
        uri, result = element
        inference = result.inference
        if isinstance(inference, Failure):
            beam.metrics.Metrics.counter("batch_predict", f"error_{inference.reason.value}").inc()
            yield beam.pvalue.TaggedOutput(self._errors, Rejection(uri, inference.reason, inference.detail))
        else:
            beam.metrics.Metrics.counter("batch_predict", "predictions").inc()
            yield prediction_row(uri, inference, self._labels, self._model_name, self._model_version)


def encode_rows(rows: list[dict[str, Any]], fmt: str, probabilities: bool) -> bytes:
    """The bytes of one prediction file holding `rows` (already in order)."""
    if fmt == "jsonl":
        return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode("utf-8")
    if fmt == "csv":
        return _csv(rows, probabilities)
    if fmt == "parquet":
        return _parquet(rows, probabilities)
    if fmt == "tfrecord":
        return _tfrecord(rows)
    raise ValueError(f"unknown prediction format {fmt!r}")


def _csv(rows: list[dict[str, Any]], probabilities: bool) -> bytes:
    columns = CSV_COLUMNS + (("probabilities",) if probabilities else ())
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([json.dumps(row[c], sort_keys=True) if c in ("top_k", "probabilities") else row[c]
                         for c in columns])
    return text.getvalue().encode("utf-8")


def parquet_schema(probabilities: bool):
    import pyarrow as pa

    fields = [
        ("uri", pa.string()), ("label", pa.string()), ("class_id", pa.int64()), ("score", pa.float32()),
        ("top_k", pa.list_(pa.struct([("label", pa.string()), ("class_id", pa.int64()),
                                      ("probability", pa.float32())]))),
        ("model_name", pa.string()), ("model_version", pa.string()),
    ]
    if probabilities:
        fields.append(("probabilities", pa.list_(pa.float32())))
    return pa.schema(fields)


def _parquet(rows: list[dict[str, Any]], probabilities: bool) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema(probabilities)
    table = pa.Table.from_pydict({name: [row[name] for row in rows] for name in schema.names}, schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def _tfrecord(rows: list[dict[str, Any]]) -> bytes:
    from components.records import TFRecordWriter

    buffer = io.BytesIO()
    with TFRecordWriter(buffer, TFRECORD_COMPRESSION_LEVEL) as writer:  # closing leaves `buffer` open
        for row in rows:
            writer.write(encode_prediction_example(row))
    return buffer.getvalue()


def encode_prediction_example(row: dict[str, Any]) -> bytes:
    """A prediction row as a tf.train.Example, byte for byte what TensorFlow's deterministic
    serialization gives (keys sorted). Features: uri, label, class_id, score, top_k/label,
    top_k/class_id, top_k/probability, model/name, model/version (and probabilities)."""
    features = {
        "uri": ("bytes", [row["uri"]]),
        "label": ("bytes", [row["label"]]),
        "class_id": ("int64", [row["class_id"]]),
        "score": ("float", [row["score"]]),
        "top_k/label": ("bytes", [t["label"] for t in row["top_k"]]),
        "top_k/class_id": ("int64", [t["class_id"] for t in row["top_k"]]),
        "top_k/probability": ("float", [t["probability"] for t in row["top_k"]]),
        "model/name": ("bytes", [row["model_name"]]),
        "model/version": ("bytes", [row["model_version"]]),
    }
    if "probabilities" in row:
        features["probabilities"] = ("float", row["probabilities"])
    entries = []
    for key in sorted(features):
        kind, values = features[key]
        if kind == "bytes":  # BytesList{repeated bytes value = 1}
            payload = b"".join(length_delimited(1, v.encode("utf-8") if isinstance(v, str) else bytes(v)) for v in values)
            feature = length_delimited(1, payload)
        elif kind == "float":  # FloatList{repeated float value = 1 [packed]}
            feature = length_delimited(2, length_delimited(1, struct.pack(f"<{len(values)}f", *values)) if values else b"")
        else:  # Int64List{repeated int64 value = 1 [packed]}
            feature = length_delimited(3, length_delimited(1, b"".join(varint(int(v)) for v in values)) if values else b"")
        entries.append(length_delimited(1, length_delimited(1, key.encode()) + length_delimited(2, feature)))
    return length_delimited(1, b"".join(entries))


def _order(row: dict[str, Any]) -> tuple[str, str]:
    # The URI, then the whole row: a URI listed twice gives rows in a fixed order too.
    return row["uri"], json.dumps(row, sort_keys=True)


class WriteShard(beam.DoFn):
    """(shard index, rows) -> the prediction file, rows sorted by URI; emits a summary of it."""

    def __init__(self, directory: str, fmt: str, count: int, probabilities: bool):
        self._directory = directory
        self._fmt = fmt
        self._count = count
        self._probabilities = probabilities

    def process(self, element: tuple[int, Iterable[dict[str, Any] | None]]) -> Iterator[dict[str, Any]]:
        index, group = element
        rows = sorted((row for row in group if row is not None), key=_order)
        data = encode_rows(rows, self._fmt, self._probabilities)
        name = shard_name(index, self._count, self._fmt)
        with FileSystems.create(posixpath.join(self._directory, name),
                                compression_type=CompressionTypes.UNCOMPRESSED) as f:
            f.write(data)
        yield {"file": name, "rows": len(rows), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
               "classes": dict(sorted(Counter(row["label"] for row in rows).items()))}


def errors_jsonl(errors: Iterable[Rejection]) -> str:
    return "".join(e.to_json() + "\n" for e in sorted(errors))

"""The TensorFlow-free record writer produces exactly what TensorFlow writes and reads."""

from __future__ import annotations

import io
import subprocess
import sys

import tensorflow as tf

from components import dataset, records

FEATURES = {
    "image/encoded": b"\x00\xff" * 100 + b"",
    "image/format": "jpeg",
    "image/height": 480,
    "image/width": 2**40,
    "image/channels": -3,
    "image/sha256": "ab" * 32,
    "image/source": "gs://bucket/caf\u00e9.jpg",
    "image/original_format": "",
    "label/text": "cat",
    "label/id": 0,
}


def tf_example(features):
    feature = {}
    for key, value in features.items():
        if records.FEATURE_TYPES[key] == "int64":
            feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        else:
            raw = value.encode() if isinstance(value, str) else value
            feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[raw]))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def test_encode_example_matches_tensorflow_deterministic_serialization():
    assert records.encode_example(FEATURES) == tf_example(FEATURES).SerializeToString(deterministic=True)


def test_tfrecord_writer_output_reads_back_with_tensorflow(tmp_path):
    path = tmp_path / "x.tfrecord.gz"
    payloads = [records.encode_example({**FEATURES, "label/id": i}) for i in range(5)] + [b""]
    with open(path, "wb") as raw, records.TFRecordWriter(raw, compression_level=1) as writer:
        for p in payloads:
            writer.write(p)
    read = [r.numpy() for r in tf.data.TFRecordDataset(str(path), compression_type="GZIP")]
    assert read == payloads
    parsed = dataset.parse_example(tf.constant(payloads[:5]))
    assert parsed["label/id"].numpy().tolist() == [0, 1, 2, 3, 4]
    assert parsed["image/width"].numpy()[0] == 2**40 and parsed["image/channels"].numpy()[0] == -3


def test_same_records_give_the_same_bytes():
    def write(level):
        buffer = io.BytesIO()
        writer = records.TFRecordWriter(buffer, compression_level=level)
        writer.write(records.encode_example(FEATURES))
        writer.close()
        return buffer.getvalue()

    assert write(0) == write(0) and write(6) == write(6)


def test_beam_workers_do_not_import_tensorflow():
    # Importing TF costs ~4 s per DirectRunner worker; the worker-side modules must not need it.
    code = ("import sys, components.ingest.pipeline, components.batch_predict.inputs, components.records; "
            "sys.exit('tensorflow' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0

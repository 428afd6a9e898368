"""The image record schema, and a TensorFlow-free writer of gzip'd TFRecord shards.

Each record is a `tf.train.Example`:

| key                   | type  | meaning                                                        |
|-----------------------|-------|----------------------------------------------------------------|
| image/encoded         | bytes | JPEG or PNG bytes: the source file as given, or re-encoded PNG |
| image/format          | bytes | `jpeg` or `png`: the format of image/encoded                   |
| image/height          | int64 | height after EXIF orientation                                  |
| image/width           | int64 | width after EXIF orientation                                   |
| image/channels        | int64 | channels of the source image (1 gray, 2 gray+alpha, 3, 4)      |
| image/sha256          | bytes | hex SHA-256 of the source file bytes (dedup and split key)     |
| image/source          | bytes | URI the image was read from                                    |
| image/original_format | bytes | format of the source file (jpeg, png, bmp, gif, tiff, webp)    |
| label/text            | bytes | class name                                                     |
| label/id              | int64 | index of label/text in labels.txt                              |

Beam workers write records without importing TensorFlow (which costs seconds per worker):
`encode_example` emits the same bytes as TF's deterministic serialization, and
`TFRecordWriter` the framing of `tf.io.TFRecordWriter` with GZIP. `components.dataset` reads them.
"""

from __future__ import annotations

import gzip
import struct
from typing import BinaryIO, Iterator, Sequence

import google_crc32c

SPLITS = ("train", "valid", "test")
SHARD_SUFFIX = ".tfrecord.gz"
COMPRESSION = "GZIP"

FEATURE_TYPES = {
    "image/encoded": "bytes",
    "image/format": "bytes",
    "image/height": "int64",
    "image/width": "int64",
    "image/channels": "int64",
    "image/sha256": "bytes",
    "image/source": "bytes",
    "image/original_format": "bytes",
    "label/text": "bytes",
    "label/id": "int64",
}

_SORTED_KEYS = sorted(FEATURE_TYPES)
_ONE_BYTE_VARINTS = [bytes([value]) for value in range(0x80)]


def shard_name(split: str, index: int, count: int) -> str:
    """`train-00000-of-00004.tfrecord.gz`."""
    return f"{split}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"


def encode_example(features: dict[str, bytes | str | int]) -> bytes:
    """Serializes one record (exactly the keys of FEATURE_TYPES) as a tf.train.Example.

    Keys are sorted, as in `Example.SerializeToString(deterministic=True)`.
    """
    if features.keys() != FEATURE_TYPES.keys():
        raise KeyError(f"record keys differ from the schema: {sorted(features.keys() ^ FEATURE_TYPES.keys())}")
    entries = []
    for key in _SORTED_KEYS:
        value = features[key]
        if FEATURE_TYPES[key] == "int64":
            feature = length_delimited(3, length_delimited(1, varint(int(value))))  # Int64List{value: [v]} (packed)
        else:
            feature = length_delimited(1, length_delimited(1, value.encode() if isinstance(value, str) else bytes(value)))  # BytesList
        entries.append(length_delimited(1, _KEY_FIELDS[key] + length_delimited(2, feature)))  # map<string, Feature> entry
    return length_delimited(1, b"".join(entries))  # Example{features: Features{feature: ...}}


class TFRecordWriter:
    """Writes records to a binary file object as a gzip'd TFRecord stream.

    The gzip header carries no name or time, so the same records give the same bytes.
    """

    def __init__(self, fileobj: BinaryIO, compression_level: int):
        self._stream = gzip.GzipFile(filename="", mode="wb", fileobj=fileobj, compresslevel=compression_level, mtime=0)

    def write(self, record: bytes) -> None:
        length = struct.pack("<Q", len(record))
        self._stream.write(b"".join((length, _masked_crc(length), record, _masked_crc(record))))

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> "TFRecordWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _masked_crc(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _ONE_BYTE_VARINTS[value]
    value &= (1 << 64) - 1  # negative int64 as two's complement, like protobuf
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


# The key field of each feature's map entry, as encode_example writes it.
_KEY_FIELDS = {key: length_delimited(1, key.encode()) for key in FEATURE_TYPES}


def read_records(stream: BinaryIO, name: str) -> Iterator[bytes]:
    """The records of an open (decompressed) TFRecord stream, CRCs checked; `name` is for errors."""
    while True:
        header = stream.read(12)
        if not header:
            return
        if len(header) < 12 or _masked_crc(header[:8]) != header[8:]:
            raise ValueError(f"{name}: corrupt TFRecord framing")
        (length,) = struct.unpack("<Q", header[:8])
        data = stream.read(length)
        if len(data) < length or _masked_crc(data) != stream.read(4):
            raise ValueError(f"{name}: truncated or corrupt TFRecord")
        yield data


def example_bytes(serialized: bytes, keys: Sequence[str]) -> dict[str, bytes]:
    """The first value of each bytes feature `keys` of a serialized tf.train.Example."""
    wanted = {k.encode(): k for k in keys}
    found = {}
    for number, features in _fields(serialized):
        if number != 1:
            continue
        for entry_number, entry in _fields(features):  # map<string, Feature> entries
            if entry_number != 1:
                continue
            key = feature = None
            for n, value in _fields(entry):
                if n == 1:
                    key = bytes(value)
                elif n == 2:
                    feature = value
            if key in wanted and feature is not None:
                for kind, values in _fields(feature):
                    if kind == 1:  # BytesList
                        for n, value in _fields(values):
                            if n == 1:
                                found.setdefault(wanted[key], bytes(value))
    return found


def _fields(buffer) -> Iterator[tuple[int, object]]:
    """(field number, value) of a protobuf message: ints for varints, bytes otherwise."""
    view = memoryview(buffer)
    position, end = 0, len(view)
    while position < end:
        key, position = _read_varint(view, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, position = _read_varint(view, position)
        elif wire == 2:
            length, position = _read_varint(view, position)
            value, position = view[position:position + length], position + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, position = view[position:position + size], position + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, value


def _read_varint(view: memoryview, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = view[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7

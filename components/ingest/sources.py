"""Lists the inputs of an ingest run: a folder with one sub-folder per class, or a CSV.

CSV layouts (an optional header row names the columns): `uri,label` (the book's),
`split,uri,label` (TFRecorder's) and `uri,label,split`. The names the URI column may have and
how relative URIs resolve (against the CSV's folder) are components.image_inputs', shared with
batch scoring. Rows that cannot be used become rejections here; everything else is checked later.
Listing runs on the driver; Beam workers only use `InputImage`, so TensorFlow is imported lazily.
"""

from __future__ import annotations

import json
import logging
import posixpath
from dataclasses import dataclass

from components.image_inputs import URI_COLUMNS, list_files, read_csv_rows, resolve_uri
from components.ingest.layout import EXPECTED_LAYOUT
from components.rejections import Reason, Rejection

logger = logging.getLogger(__name__)

SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "valid": "valid", "validation": "valid", "val": "valid", "eval": "valid",
    "test": "test", "testing": "test",
}
_HEADER_COLUMNS = URI_COLUMNS | {"label", "class", "split"}


@dataclass(frozen=True)
class InputImage:
    """One image to ingest: where it is, its label and an explicit split if the input gave one."""

    uri: str
    label: str
    split: str | None = None

    def to_json(self) -> str:
        return json.dumps({"uri": self.uri, "label": self.label, "split": self.split})

    @classmethod
    def from_json(cls, line: str) -> InputImage:
        return cls(**json.loads(line))


@dataclass(frozen=True)
class Inputs:
    images: list[InputImage]
    rejections: list[Rejection]
    # Labels named by the input (folder names or CSV labels), sorted.
    labels: list[str]

    @property
    def count(self) -> int:
        return len(self.images) + len(self.rejections)


def list_inputs(path: str) -> Inputs:
    """Lists a class-folder tree or a CSV file (any tf.io.gfile path, e.g. gs://)."""
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"ingest input {path} does not exist; expected {EXPECTED_LAYOUT}")
    inputs = _list_folder(path) if tf.io.gfile.isdir(path) else _read_csv(path)
    logger.info("Listed %d inputs (%d rejected while listing) in %s", inputs.count, len(inputs.rejections), path)
    return inputs


def _list_folder(root: str) -> Inputs:
    images, rejections, labels = [], [], set()
    for uri in list_files(root):
        relative = posixpath.relpath(posixpath.dirname(uri), root.rstrip("/"))
        if relative == ".":
            rejections.append(Rejection(uri, Reason.MISSING_LABEL, "file is not inside a class folder"))
            continue
        label = relative.split("/")[0]
        labels.add(label)
        images.append(InputImage(uri, label))
    return Inputs(images, rejections, sorted(labels))


def _read_csv(path: str) -> Inputs:
    base = posixpath.dirname(path)
    rows = read_csv_rows(path)
    if not rows:
        raise ValueError(f"CSV {path} has no rows; expected uri,label or split,uri,label")
    layout, rows = _csv_layout(path, rows)
    images, rejections, labels = [], [], set()
    for line, row in rows:
        where = f"{path}:{line}"
        if len(row) != len(layout):
            rejections.append(Rejection(
                where, Reason.MALFORMED_ROW,
                f"expected {len(layout)} fields ({','.join(layout)}), got {len(row)}: {row!r}",
            ))
            continue
        fields = dict(zip(layout, (c.strip() for c in row)))
        if not fields["uri"]:
            rejections.append(Rejection(where, Reason.MALFORMED_ROW, "empty uri field"))
            continue
        uri = resolve_uri(fields["uri"], base)
        split = None
        if "split" in fields:
            split = SPLIT_ALIASES.get(fields["split"].lower())
            if split is None:
                rejections.append(Rejection(
                    uri, Reason.MALFORMED_ROW,
                    f"{where}: unknown split {fields['split']!r}; use train, valid or test",
                ))
                continue
        if not fields["label"]:
            rejections.append(Rejection(uri, Reason.MISSING_LABEL, f"{where}: empty label"))
            continue
        labels.add(fields["label"])
        images.append(InputImage(uri, fields["label"], split))
    return Inputs(images, rejections, sorted(labels))


def _csv_layout(path: str, rows: list[tuple[int, list[str]]]) -> tuple[tuple[str, ...], list]:
    """Column names from a header row, or guessed from the first row's field count and values."""
    first = [c.strip().lower() for c in rows[0][1]]
    if set(first) <= _HEADER_COLUMNS and ("label" in first or "class" in first):
        names = tuple("uri" if c in URI_COLUMNS else "label" if c == "class" else c for c in first)
        if "uri" not in names:
            raise ValueError(f"CSV {path}: header {rows[0][1]} has no uri column ({sorted(URI_COLUMNS)})")
        return names, rows[1:]
    if len(first) == 2:
        return ("uri", "label"), rows
    if len(first) == 3:
        if first[0] in SPLIT_ALIASES:
            return ("split", "uri", "label"), rows
        if first[2] in SPLIT_ALIASES:
            return ("uri", "label", "split"), rows
    raise ValueError(
        f"CSV {path}:{rows[0][0]}: cannot tell the columns of {rows[0][1]!r}; "
        "use uri,label or split,uri,label (or a header row naming uri, label and split)"
    )

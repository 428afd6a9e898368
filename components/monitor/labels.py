"""Labels that arrive after the predictions: a CSV (header `sha256,label` or `key,label`, or both key
columns) or JSONL (`{"sha256": ..., "label": ...}` or `{"key": ..., "label": ...}`) joined to the served
images by the image's sha256 or by the request key (`predict_with_key`).

Every line is accounted: labels that match no served image, labels for a class the model does not
have, lines without a key or label, and keys given two different labels (both refused) are counted,
with a few examples of each; served images without a label are counted by the monitor.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from components.files import excerpt

logger = logging.getLogger(__name__)

KEY_COLUMNS = ("sha256", "key")
EXAMPLES = 5  # examples kept per kind of problem


class LabelsError(ValueError):
    """The labels file cannot be used at all (missing, no label column): the message names it."""


@dataclass
class LabelReading:
    lines: int = 0
    labels: int = 0  # usable (key, label) pairs
    matched: int = 0  # pairs that found at least one served image
    problems: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def refuse(self, problem: str, where: str) -> None:
        self.problems[problem] += 1
        examples = self.examples.setdefault(problem, [])
        if len(examples) < EXAMPLES:
            examples.append(where)

    def to_json(self) -> dict:
        return {"lines": self.lines, "labels": self.labels, "matched": self.matched,
                "unmatched": self.labels - self.matched, "problems": dict(self.problems), "examples": self.examples}


def read_labels(path: str, classes: Iterable[str]) -> tuple[dict[str, str], LabelReading]:
    """{sha256 or key: label} of the labels file at `path`, and what reading it found."""
    known = set(classes)
    reading = LabelReading()
    pairs: dict[str, str] = {}
    conflicting: set[str] = set()
    for number, row in _rows(path):
        reading.lines += 1
        where = f"{path}:{number}"
        label = str(row.get("label") or "").strip()
        keys = [str(row[c]).strip() for c in KEY_COLUMNS if str(row.get(c) or "").strip()]
        if not label or not keys:
            reading.refuse("no label or no sha256/key", where)
            continue
        if label not in known:
            reading.refuse(f"label not among the model's classes ({label[:40]})", where)
            continue
        for key in keys:
            if key in pairs and pairs[key] != label:
                conflicting.add(key)
                reading.refuse("key labelled twice, differently", f"{where} ({key[:16]})")
            pairs[key] = label
    for key in conflicting:
        del pairs[key]
    reading.labels = len(pairs)
    logger.info("Read %d labels from %s (%d lines, %d refused)", len(pairs), path, reading.lines,
                sum(reading.problems.values()))
    return pairs, reading


def _rows(path: str) -> Iterable[tuple[int, dict]]:
    try:
        with open(path, newline="") as f:
            if path.endswith((".jsonl", ".json")):
                for number, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError as e:
                            raise LabelsError(f"{path}:{number}: not JSON ({e.msg}): {excerpt(line, e.pos)}") from e
                        yield number, row if isinstance(row, dict) else {}
                return
            reader = csv.DictReader(f)
            if "label" not in (reader.fieldnames or []) or not set(KEY_COLUMNS) & set(reader.fieldnames or []):
                raise LabelsError(f"{path}: a labels CSV needs a header with `label` and `sha256` or `key`, got "
                                  f"{(reader.fieldnames or [])[:10]}")
            for number, row in enumerate(reader, 2):
                yield number, row
    except OSError as e:
        raise LabelsError(f"cannot read the labels file {path}: {e.strerror or e}") from e

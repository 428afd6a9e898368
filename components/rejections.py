"""Why an input of a stage gives no output: the reasons, and the row each such input becomes.

Ingest writes one `Rejection` per input that did not become a record (`rejects.jsonl`), batch
scoring one per input that has no prediction (`errors.jsonl`): the same columns (uri, reason,
detail), one set of reasons. Each stage meets only some of them.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass


class Reason(str, enum.Enum):
    MISSING = "missing"  # the URI does not exist
    UNREADABLE = "unreadable"  # it exists but reading failed (permissions, I/O)
    EMPTY_FILE = "empty_file"  # zero bytes
    NOT_IMAGE = "not_image"  # not a format any decoder recognises
    # an image format not in ingest.formats, or one the serving graph does not decode (batch scoring)
    UNSUPPORTED_FORMAT = "unsupported_format"
    CORRUPT = "corrupt"  # recognised but truncated or undecodable
    TOO_SMALL = "too_small"  # shorter side below ingest.min_side
    # over a stage's byte or pixel limit (a decompression bomb), or the served model's pixel limit
    TOO_LARGE = "too_large"
    MISSING_LABEL = "missing_label"  # empty label, or a file outside any class folder
    UNKNOWN_LABEL = "unknown_label"  # not in the configured ingest.labels
    MALFORMED_ROW = "malformed_row"  # a CSV row that cannot be parsed, or a record without image bytes
    DUPLICATE = "duplicate"  # same bytes as another input with the same label (one copy kept)
    LABEL_CONFLICT = "label_conflict"  # same bytes with different labels (all copies rejected)
    CHANGED = "changed_during_ingest"  # the file's bytes changed between checking and writing
    INFERENCE_ERROR = "inference_error"  # the model (or endpoint) refused this one image for another reason


@dataclass(frozen=True, order=True)
class Rejection:
    """One input without output: one line of ingest's rejects.jsonl or batch scoring's errors.jsonl."""

    uri: str
    reason: Reason
    detail: str

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "reason": self.reason.value}, sort_keys=True)


class ImageRejected(Exception):
    """Raised while reading or checking one image; carries the reason and a human-readable detail."""

    def __init__(self, reason: Reason, detail: str):
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail

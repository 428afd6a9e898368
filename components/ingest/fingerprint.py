"""The content fingerprint of an ingest input: what pipeline caching and retraining decisions key on.

Two inputs have the same fingerprint exactly when they list the same images (uri, label, split)
with the same bytes, and the same unusable rows. Modification times play no part, so a pipeline
step keyed on it reruns when an image is added, removed, relabelled or changed in place, and not
when files are merely touched or copied over with the same bytes. A moved dataset (other URIs) is
another input.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # it loads Beam: command lines that only import this module start fast
    from components.ingest.sources import InputImage

logger = logging.getLogger(__name__)

# Files are hashed concurrently: object stores (gs://, s3://) answer each read with latency.
READ_THREADS = 16
_CHUNK = 1 << 20


@dataclass(frozen=True)
class SourceFingerprint:
    """`inputs`: images and unusable rows, as ingest's stats count them; `sha256`: their content."""

    source: str
    inputs: int
    sha256: str


def fingerprint_source(path: str) -> SourceFingerprint:
    """Lists `path` as ingest does and hashes every listed file's bytes (a missing file hashes as such)."""
    from components.ingest.sources import list_inputs

    inputs = list_inputs(path)
    with ThreadPoolExecutor(READ_THREADS) as pool:
        contents = list(pool.map(_file_sha256, inputs.images))
    digest = hashlib.sha256()
    for image, content in zip(inputs.images, contents):
        digest.update(f"image\t{image.uri}\t{image.label}\t{image.split or ''}\t{content}\n".encode())
    for rejection in sorted(inputs.rejections, key=lambda r: (r.uri, r.detail)):
        digest.update(f"row\t{rejection.uri}\t{rejection.reason.value}\t{rejection.detail}\n".encode())
    fingerprint = SourceFingerprint(path, inputs.count, digest.hexdigest())
    logger.info("Fingerprinted %d inputs of %s: %s", fingerprint.inputs, path, fingerprint.sha256[:16])
    return fingerprint


def _file_sha256(image: InputImage) -> str:
    import tensorflow as tf

    digest = hashlib.sha256()
    try:
        with tf.io.gfile.GFile(image.uri, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except tf.errors.OpError as e:  # ingest rejects it with its reason; here it only must differ from any content
        return f"unreadable:{type(e).__name__}"
    return digest.hexdigest()

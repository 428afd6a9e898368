"""What scoring one image gives: a `Prediction`, or a `Failure` with a reason; and how a failing
batch is narrowed down to the images that fail.

TensorFlow-free (numpy only): the remote scorers and the output writers run without it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from components import image_limits
from components.artifacts import CLASS_ID, LABEL, PROBABILITIES, SCORE, SERVING_SIGNATURE
from components.rejections import Reason


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one image. Floats are the model's float32 values, exactly."""

    class_id: int
    label: str
    score: float
    # (class id, probability) of the top-k classes, most probable first (ties: lower id first).
    top_k: tuple[tuple[int, float], ...]
    # Every class probability, when batch_predict.probabilities is on.
    probabilities: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Failure:
    """The model (or endpoint) refused this image alone."""

    reason: Reason
    detail: str


class InputError(Exception):
    """A batch was refused because of (at least) one of its inputs: a 400 / INVALID_ARGUMENT, a
    decode error in the graph. Raised by the call passed to `isolate`, with the server's message."""


def predictions_from_outputs(outputs: Mapping[str, np.ndarray], top_k: int, probabilities: bool) -> list[Prediction]:
    """Per-image predictions from the batched outputs of `serving_default` (numpy arrays).

    Vectorised per batch (one argsort, one `tolist` per array), so the per-image Python work is
    building one small object.
    """
    probs = np.asarray(outputs[PROBABILITIES], dtype=np.float32)
    if probs.ndim != 2:
        raise ValueError(f"{SERVING_SIGNATURE} returned probabilities of shape {probs.shape}; expected [N, C]")
    k = min(top_k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    top_p = np.take_along_axis(probs, order, axis=1).tolist()
    order = order.tolist()
    labels = [_text(v) for v in np.asarray(outputs[LABEL]).reshape(-1)]
    class_ids = np.asarray(outputs[CLASS_ID]).reshape(-1).astype(np.int64).tolist()
    scores = np.asarray(outputs[SCORE], dtype=np.float32).reshape(-1).tolist()
    rows = probs.tolist() if probabilities else [None] * len(probs)
    return [
        Prediction(class_ids[i], labels[i], scores[i], tuple(zip(order[i], top_p[i])),
                   tuple(rows[i]) if probabilities else None)
        for i in range(len(probs))
    ]


def isolate(items: Sequence, call: Callable[[Sequence], list]) -> list:
    """`call(items)`; when it raises InputError, the batch is bisected until each failing item is
    alone, and that item gets a Failure. One bad image costs about 2*log2(batch) calls, not a job."""
    try:
        results = call(items)
    except InputError as e:
        if len(items) == 1:
            return [failure_from_message(str(e))]
        middle = len(items) // 2
        return isolate(items[:middle], call) + isolate(items[middle:], call)
    if len(results) != len(items):
        raise ValueError(f"the model returned {len(results)} results for {len(items)} images")
    return results


_NOISE = re.compile(r"^(Graph execution error:|Detected at node|<stack traces unavailable>|\s*\[\[|\s*$)")
_ASSERTION = re.compile(r"^assertion failed: \[(.*)\]$")
_DECODE_WORDS = re.compile(r"decod|jpeg|png|gif|bmp|webp|image|uncompress|truncat|premature", re.IGNORECASE)
# The serving graph's own refusals (components.image_limits), before it decodes anything.
_REFUSALS = (
    (image_limits.TOO_MANY_PIXELS, Reason.TOO_LARGE), (image_limits.TOO_MANY_FRAME_PIXELS, Reason.TOO_LARGE),
    (image_limits.TOO_LONG, Reason.TOO_LARGE), (image_limits.EMPTY, Reason.EMPTY_FILE),
    (image_limits.NOT_AN_IMAGE, Reason.NOT_IMAGE),
)


def failure_from_message(message: str) -> Failure:
    """A Failure for one image from an error message (TensorFlow's or a server's): the reason of a
    refusal by the serving graph's input checks, `corrupt` when it is about decoding the image, else
    `inference_error`. The detail is the message's first line without TensorFlow's wrapping."""
    lines = [line.strip() for line in message.splitlines() if not _NOISE.match(line)]
    detail = lines[0] if lines else message.strip()
    detail = _ASSERTION.sub(r"\1", detail)[:500]
    for template, reason in _REFUSALS:
        if image_limits.matches(template, detail):
            return Failure(reason, detail)
    if "Unknown image file format" in detail:
        return Failure(Reason.NOT_IMAGE, detail)
    reason = Reason.CORRUPT if _DECODE_WORDS.search(message) else Reason.INFERENCE_ERROR
    return Failure(reason, detail)


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

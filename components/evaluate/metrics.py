"""Classification metrics in plain numpy: accuracy, top-k, log loss, per-class P/R/F1, ROC-AUC and
average precision, confusion matrix, calibration (ECE), the same headline numbers per data slice,
and the most confident mistakes.

Every result is JSON-serialisable (floats rounded to 6 decimals, ints, None where undefined) and
matches scikit-learn's definitions (tests/test_evaluate_metrics.py checks them against it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# -log(p) of the true class is taken at no less than this probability (a certain mistake costs ~34.5).
MIN_PROBABILITY = 1e-15
DECIMALS = 6
AVERAGED = ("precision", "recall", "f1", "roc_auc", "pr_auc")
# size_bucket's values, smallest first: (lower bound of the shorter side, name).
SIZE_BUCKETS = ((0, "<64"), (64, "64-127"), (128, "128-255"), (256, "256-511"), (512, ">=512"))
_SIZE_BUCKET_ORDER = {name: position for position, (_, name) in enumerate(SIZE_BUCKETS)}


def classification_metrics(label_ids: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str], *,
                           top_k: int = 3, calibration_bins: int = 10) -> dict[str, Any]:
    """All metrics of `probabilities` [N, C] against the true class ids `label_ids` [N] (see the module doc)."""
    label_ids, probabilities = _check_inputs(label_ids, probabilities)
    class_names = list(class_names)
    num_classes = probabilities.shape[1]
    if len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names but probabilities has {num_classes} columns "
                         f"(shape {probabilities.shape})")
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names are not unique: {class_names}")
    if calibration_bins < 1:
        raise ValueError(f"calibration_bins must be at least 1, got {calibration_bins}")
    k = _clamp_top_k(top_k, num_classes)

    predicted = np.argmax(probabilities, axis=1)
    confusion = _confusion(label_ids, predicted, num_classes)
    support = confusion.sum(axis=1)
    per_class = _per_class(confusion, label_ids, probabilities)
    calibration = _calibration(label_ids, probabilities, calibration_bins)
    ece = sum(b["count"] / len(label_ids) * abs(b["accuracy"] - b["confidence"]) for b in calibration if b["count"])
    return {
        "examples": int(len(label_ids)),
        "accuracy": _round(np.mean(predicted == label_ids)),
        "top_k_accuracy": {"k": k, "value": _round(np.mean(_top_k_hits(label_ids, probabilities, k)))},
        "log_loss": _round(np.mean(_true_class_losses(label_ids, probabilities))),
        "per_class": {name: {key: _round(value) for key, value in row.items()}
                      for name, row in zip(class_names, per_class)},
        "macro": {key: _round(_average([row[key] for row in per_class])) for key in AVERAGED},
        "weighted": {key: _round(_average([row[key] for row in per_class], support)) for key in AVERAGED},
        "confusion_matrix": {"labels": class_names, "matrix": confusion.tolist()},
        "ece": _round(ece),
        "calibration": [{key: _round(value) for key, value in b.items()} for b in calibration],
    }


def sliced_metrics(label_ids: np.ndarray, probabilities: np.ndarray, slices: Mapping[str, Sequence[str]], *,
                   top_k: int = 3) -> dict[str, dict[str, dict[str, Any]]]:
    """Headline metrics per value of each slice feature: {feature: {value: {"examples", "accuracy",
    "top_k_accuracy", "macro_recall", "log_loss"}}}, values in `slice_order`. `slices` holds one value per
    example."""
    label_ids, probabilities = _check_inputs(label_ids, probabilities)
    num_classes = probabilities.shape[1]
    k = _clamp_top_k(top_k, num_classes)
    predicted = np.argmax(probabilities, axis=1)
    hits = _top_k_hits(label_ids, probabilities, k)
    losses = _true_class_losses(label_ids, probabilities)
    result: dict[str, dict[str, dict[str, Any]]] = {}
    for feature, values in slices.items():
        values = np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values], dtype=object)
        if len(values) != len(label_ids):
            raise ValueError(f"slice {feature!r} has {len(values)} values but label_ids has {len(label_ids)} examples")
        result[feature] = {}
        for value in sorted(set(values), key=slice_order):
            mask = values == value
            confusion = _confusion(label_ids[mask], predicted[mask], num_classes)
            result[feature][value] = {
                "examples": int(mask.sum()),
                "accuracy": _round(np.mean(predicted[mask] == label_ids[mask])),
                "top_k_accuracy": _round(np.mean(hits[mask])),
                "macro_recall": _round(_average(_recalls(confusion))),
                "log_loss": _round(np.mean(losses[mask])),
            }
    return result


def size_bucket(height: int, width: int) -> str:
    """The slice value of an image's original size, by its shorter side: "<64" ... ">=512"."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got height={height} width={width}")
    shorter = min(height, width)
    return [name for lower, name in SIZE_BUCKETS if shorter >= lower][-1]


def slice_order(value: str) -> tuple[int, float, str]:
    """Sort key of slice values: size buckets smallest first, then numbers by value, then other text."""
    if value in _SIZE_BUCKET_ORDER:
        return 0, float(_SIZE_BUCKET_ORDER[value]), ""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    return (1, number, "") if math.isfinite(number) else (2, 0.0, value)


def most_confident_mistakes(label_ids: np.ndarray, probabilities: np.ndarray, count: int) -> list[int]:
    """The indices of up to `count` misclassified examples, highest predicted-class probability first
    (ties by index)."""
    label_ids, probabilities = _check_inputs(label_ids, probabilities)
    predicted = np.argmax(probabilities, axis=1)
    wrong = np.flatnonzero(predicted != label_ids)
    order = np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")
    return [int(i) for i in wrong[order][:max(count, 0)]]


def _check_inputs(label_ids: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inputs as arrays, or a ValueError that says which argument is wrong."""
    label_ids = np.asarray(label_ids)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if label_ids.ndim != 1:
        raise ValueError(f"label_ids must be 1-D [N], got shape {label_ids.shape}")
    if probabilities.ndim != 2:
        raise ValueError(f"probabilities must be 2-D [N, C], got shape {probabilities.shape}")
    if label_ids.shape[0] != probabilities.shape[0]:
        raise ValueError(f"label_ids has shape {label_ids.shape} but probabilities has shape {probabilities.shape}: "
                         "one row of probabilities per label is needed")
    if label_ids.shape[0] == 0:
        raise ValueError("no examples: label_ids and probabilities are empty")
    if probabilities.shape[1] == 0:
        raise ValueError(f"probabilities has no classes (shape {probabilities.shape})")
    if not np.issubdtype(label_ids.dtype, np.integer):
        raise ValueError(f"label_ids must be integer class ids, got dtype {label_ids.dtype}")
    if label_ids.min() < 0 or label_ids.max() >= probabilities.shape[1]:
        raise ValueError(f"label_ids must be in [0, {probabilities.shape[1] - 1}] (probabilities has shape "
                         f"{probabilities.shape}), got values from {label_ids.min()} to {label_ids.max()}")
    if not np.all(np.isfinite(probabilities)):
        raise ValueError("probabilities contains NaN or infinite values")
    row_sums = probabilities.sum(axis=1)
    if not np.allclose(row_sums, 1.0, atol=1e-3):
        log.warning("probability rows do not sum to 1 (from %.4f to %.4f): are these logits?",
                    row_sums.min(), row_sums.max())
    return label_ids.astype(np.int64), probabilities


def _clamp_top_k(top_k: int, num_classes: int) -> int:
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    return min(top_k, num_classes)


def _top_k_hits(label_ids: np.ndarray, probabilities: np.ndarray, k: int) -> np.ndarray:
    """Whether each true class is among the k highest probabilities. Ties rank the lower class id first,
    as np.argmax does, so k=1 gives the accuracy."""
    true_p = probabilities[np.arange(len(label_ids)), label_ids][:, None]
    lower_ids = np.arange(probabilities.shape[1])[None, :] < label_ids[:, None]
    ahead = (probabilities > true_p) | ((probabilities == true_p) & lower_ids)
    return ahead.sum(axis=1) < k


def _true_class_losses(label_ids: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """-log of each example's true-class probability (at least MIN_PROBABILITY)."""
    true_p = probabilities[np.arange(len(label_ids)), label_ids]
    return -np.log(np.maximum(true_p, MIN_PROBABILITY))


def _confusion(label_ids: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """C x C counts, rows = true class, columns = predicted class."""
    counts = np.bincount(label_ids * num_classes + predicted, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _recalls(confusion: np.ndarray) -> list[float | None]:
    """Recall per class, None for a class with no support."""
    support = confusion.sum(axis=1)
    return [float(confusion[c, c] / support[c]) if support[c] else None for c in range(len(support))]


def _per_class(confusion: np.ndarray, label_ids: np.ndarray, probabilities: np.ndarray) -> list[dict[str, Any]]:
    """Precision, recall, F1, support, ROC-AUC and average precision of each class (one-vs-rest)."""
    rows = []
    for c, recall in enumerate(_recalls(confusion)):
        true_positives, predictions = confusion[c, c], confusion[:, c].sum()
        precision = float(true_positives / predictions) if predictions else 0.0
        if recall is None:
            f1 = None
        else:
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        positives = label_ids == c
        rows.append({"precision": precision, "recall": recall, "f1": f1, "support": int(positives.sum()),
                     "roc_auc": _roc_auc(positives, probabilities[:, c]),
                     "pr_auc": _average_precision(positives, probabilities[:, c])})
    return rows


def _average_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks of `scores`, tied scores sharing the mean of their ranks."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    group_ranks = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat(group_ranks, ends - starts)
    return ranks


def _roc_auc(positives: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve as the Mann-Whitney U statistic; None without positives or negatives."""
    n_pos = int(positives.sum())
    n_neg = len(positives) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    rank_sum = _average_ranks(scores)[positives].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _average_precision(positives: np.ndarray, scores: np.ndarray) -> float | None:
    """Sum over distinct thresholds (tied scores as one) of (R_n - R_{n-1}) * P_n; None without positives."""
    n_pos = int(positives.sum())
    if n_pos == 0:
        return None
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_positives = scores[order], positives[order]
    # the last index of each group of tied scores: a threshold takes in the whole group
    last = np.r_[np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]), len(scores) - 1]
    true_positives = np.cumsum(sorted_positives)[last]
    precision = true_positives / (last + 1)
    recall_steps = np.diff(np.r_[0, true_positives]) / n_pos
    return float(np.sum(recall_steps * precision))


def _calibration(label_ids: np.ndarray, probabilities: np.ndarray, bins: int) -> list[dict[str, Any]]:
    """Top-1 confidence against accuracy in `bins` equal-width bins of [0, 1]: (lo, hi], the first also
    takes 0 and the last anything above 1."""
    confidence = probabilities.max(axis=1)
    correct = np.argmax(probabilities, axis=1) == label_ids
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    result = []
    for b in range(bins):
        in_bin = index == b
        count = int(in_bin.sum())
        result.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count,
                       "confidence": float(confidence[in_bin].mean()) if count else None,
                       "accuracy": float(correct[in_bin].mean()) if count else None})
    return result


def _average(values: Sequence[float | None], weights: Sequence[float] | np.ndarray | None = None) -> float | None:
    """Mean of the values that are not None (weighted if weights are given); None if none is left or
    their weights sum to 0."""
    kept = [(v, 1.0 if weights is None else float(weights[i])) for i, v in enumerate(values) if v is not None]
    total = sum(w for _, w in kept)
    if not kept or total == 0:
        return None
    return sum(v * w for v, w in kept) / total


def _round(value: Any) -> Any:
    """Floats rounded to DECIMALS (numpy scalars made plain); ints and None as they are."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return round(value, DECIMALS) if math.isfinite(value) else None

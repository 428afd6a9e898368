"""Evaluation metrics against scikit-learn, calibration against a plain loop, slices against subsets,
the most confident mistakes, and the plots and HTML report as real files."""

from __future__ import annotations

import base64
import io
import json
import re

import matplotlib.image
import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

from components.evaluate.metrics import (SIZE_BUCKETS, classification_metrics, most_confident_mistakes, size_bucket,
                                         slice_order, sliced_metrics)
from components.evaluate.report import plot_calibration, plot_confusion_matrix, thumbnail, write_report

CLASS_NAMES = ["cat", "dog", "<cat&dog>", "fox", "owl"]
C = len(CLASS_NAMES)
NEVER_PREDICTED = 3  # has support, its probability is never the highest
NO_SUPPORT = 4  # never the true class, sometimes predicted
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """Integer logits, so many probabilities tie within a row and across rows."""
    rng = np.random.default_rng(0)
    n = 400
    labels = rng.integers(0, NO_SUPPORT, n)
    logits = rng.integers(0, 2, (n, C)).astype(float)
    logits[:, NEVER_PREDICTED] = -5.0
    logits[np.arange(n), labels] += rng.integers(0, 3, n)
    return labels, softmax(logits)


@pytest.fixture(scope="module")
def result(data) -> dict:
    labels, probabilities = data
    return classification_metrics(labels, probabilities, CLASS_NAMES, top_k=2, calibration_bins=7)


def test_data_has_the_hard_cases(data):
    labels, probabilities = data
    predicted = probabilities.argmax(axis=1)
    assert NEVER_PREDICTED not in predicted and NEVER_PREDICTED in labels
    assert NO_SUPPORT in predicted and NO_SUPPORT not in labels
    assert (probabilities == probabilities.max(axis=1, keepdims=True)).sum(axis=1).max() > 1  # argmax ties
    assert len(np.unique(probabilities[:, 0])) < len(probabilities) // 4  # ties across examples


def test_result_is_json_with_exactly_the_keys(result):
    assert json.loads(json.dumps(result)) == result
    assert set(result) == {"examples", "accuracy", "top_k_accuracy", "log_loss", "per_class", "macro", "weighted",
                           "confusion_matrix", "ece", "calibration"}
    assert list(result["per_class"]) == CLASS_NAMES
    for average in ("macro", "weighted"):
        assert set(result[average]) == {"precision", "recall", "f1", "roc_auc", "pr_auc"}


def test_headline_metrics_match_sklearn(data, result):
    labels, probabilities = data
    assert result["examples"] == len(labels)
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(labels, probabilities.argmax(axis=1)), abs=1e-6)
    assert result["log_loss"] == pytest.approx(skm.log_loss(labels, probabilities, labels=range(C)), abs=1e-6)
    matrix = skm.confusion_matrix(labels, probabilities.argmax(axis=1), labels=range(C))
    assert result["confusion_matrix"] == {"labels": CLASS_NAMES, "matrix": matrix.tolist()}


@pytest.mark.parametrize("k", [1, 2, 3])
def test_top_k_matches_sklearn_with_ties_broken_like_argmax(data, k):
    labels, probabilities = data
    value = classification_metrics(labels, probabilities, CLASS_NAMES, top_k=k)["top_k_accuracy"]
    # sklearn ranks the higher class id first among ties; reversing the columns makes that the lower id, as argmax
    expected = skm.top_k_accuracy_score(C - 1 - labels, probabilities[:, ::-1], k=k, labels=range(C))
    assert value == {"k": k, "value": pytest.approx(expected, abs=1e-6)}
    if k == 1:
        assert value["value"] == pytest.approx(skm.accuracy_score(labels, probabilities.argmax(axis=1)), abs=1e-6)


def test_top_k_without_ties_matches_sklearn_directly_and_k_is_clamped():
    rng = np.random.default_rng(1)
    labels, probabilities = rng.integers(0, C, 200), softmax(rng.normal(size=(200, C)))
    value = classification_metrics(labels, probabilities, CLASS_NAMES, top_k=3)["top_k_accuracy"]["value"]
    assert value == pytest.approx(skm.top_k_accuracy_score(labels, probabilities, k=3, labels=range(C)), abs=1e-6)
    clamped = classification_metrics(labels, probabilities, CLASS_NAMES, top_k=99)["top_k_accuracy"]
    assert clamped == {"k": C, "value": 1.0}


def test_per_class_matches_sklearn(data, result):
    labels, probabilities = data
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, probabilities.argmax(axis=1), labels=range(C), zero_division=0)
    for c, name in enumerate(CLASS_NAMES):
        row = result["per_class"][name]
        assert row["precision"] == pytest.approx(precision[c], abs=1e-6)
        assert row["support"] == support[c]
        if c == NO_SUPPORT:
            assert row["recall"] is row["f1"] is row["roc_auc"] is row["pr_auc"] is None
            assert row["precision"] == 0.0  # predicted, never right
            continue
        positives = labels == c
        assert row["recall"] == pytest.approx(recall[c], abs=1e-6)
        assert row["f1"] == pytest.approx(f1[c], abs=1e-6)
        assert row["roc_auc"] == pytest.approx(skm.roc_auc_score(positives, probabilities[:, c]), abs=1e-6)
        assert row["pr_auc"] == pytest.approx(skm.average_precision_score(positives, probabilities[:, c]), abs=1e-6)
    assert result["per_class"][CLASS_NAMES[NEVER_PREDICTED]]["precision"] == 0.0
    assert result["per_class"][CLASS_NAMES[NEVER_PREDICTED]]["recall"] == 0.0


def test_averages_skip_undefined_classes_and_weight_by_support(data, result):
    labels, probabilities = data
    defined = [c for c in range(C) if c != NO_SUPPORT]
    rows = [result["per_class"][name] for name in CLASS_NAMES]
    for key in ("recall", "f1", "roc_auc", "pr_auc"):
        assert result["macro"][key] == pytest.approx(np.mean([rows[c][key] for c in defined]), abs=2e-6)
    assert result["macro"]["precision"] == pytest.approx(np.mean([r["precision"] for r in rows]), abs=2e-6)
    sk_weighted = skm.precision_recall_fscore_support(labels, probabilities.argmax(axis=1), labels=range(C),
                                                      average="weighted", zero_division=0)
    for key, expected in zip(("precision", "recall", "f1"), sk_weighted):
        assert result["weighted"][key] == pytest.approx(expected, abs=1e-6)
    positives = np.eye(C)[labels][:, defined]
    for key, score in (("roc_auc", skm.roc_auc_score), ("pr_auc", skm.average_precision_score)):
        expected = score(positives, probabilities[:, defined], average="weighted")
        assert result["weighted"][key] == pytest.approx(expected, abs=1e-6)


def test_single_class_data_has_no_roc_auc():
    labels = np.zeros(6, dtype=int)
    probabilities = softmax(np.random.default_rng(2).normal(size=(6, 3)))
    result = classification_metrics(labels, probabilities, ["a", "b", "c"])
    assert result["macro"]["roc_auc"] is None and result["weighted"]["roc_auc"] is None
    assert result["per_class"]["a"]["pr_auc"] == 1.0


def test_ece_matches_a_loop(data, result):
    labels, probabilities = data
    confidence, correct = probabilities.max(axis=1), probabilities.argmax(axis=1) == labels
    bins = len(result["calibration"])
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for b, row in enumerate(result["calibration"]):
        lo, hi = edges[b], edges[b + 1]
        members = [i for i, p in enumerate(confidence) if (lo < p <= hi) or (b == 0 and p == 0)]
        assert (row["lower"], row["upper"], row["count"]) == (pytest.approx(lo), pytest.approx(hi), len(members))
        if members:
            accuracy, mean_confidence = correct[members].mean(), confidence[members].mean()
            assert (row["accuracy"], row["confidence"]) == (pytest.approx(accuracy, abs=1e-6),
                                                            pytest.approx(mean_confidence, abs=1e-6))
            ece += len(members) / len(labels) * abs(accuracy - mean_confidence)
        else:
            assert row["accuracy"] is row["confidence"] is None
    assert sum(row["count"] for row in result["calibration"]) == len(labels)
    assert result["ece"] == pytest.approx(ece, abs=1e-6)


def test_calibration_bin_edges():
    probabilities = np.array([[1.0, 0.0], [0.5, 0.5], [0.6, 0.4], [0.75, 0.25]])
    calibration = classification_metrics(np.array([0, 1, 0, 1]), probabilities, ["a", "b"],
                                         calibration_bins=4)["calibration"]
    assert [b["count"] for b in calibration] == [0, 1, 2, 1]  # 0.5 -> (0.25, 0.5], 0.75 -> (0.5, 0.75], 1.0 -> last
    assert calibration[0]["accuracy"] is None
    assert calibration[2] == {"lower": 0.5, "upper": 0.75, "count": 2, "confidence": 0.675, "accuracy": 0.5}


def test_slices_match_metrics_of_the_subset(data):
    labels, probabilities = data
    rng = np.random.default_rng(3)
    slices = {"image/original_format": list(rng.choice(["png", "jpeg"], len(labels))),
              "image/size": [size_bucket(int(h), int(w)) for h, w in rng.integers(20, 700, (len(labels), 2))]}
    result = sliced_metrics(labels, probabilities, slices, top_k=2)
    assert json.loads(json.dumps(result)) == result
    assert list(result) == list(slices)
    for feature, values in slices.items():
        assert list(result[feature]) == sorted(set(values), key=slice_order)
        for value, got in result[feature].items():
            mask = np.array(values) == value
            full = classification_metrics(labels[mask], probabilities[mask], CLASS_NAMES, top_k=2)
            assert got == {"examples": full["examples"], "accuracy": full["accuracy"],
                           "top_k_accuracy": full["top_k_accuracy"]["value"],
                           "macro_recall": pytest.approx(full["macro"]["recall"], abs=2e-6),
                           "log_loss": pytest.approx(full["log_loss"], abs=2e-6)}


def test_slice_order_is_numeric_for_size_buckets_and_numbers():
    buckets = [name for _, name in SIZE_BUCKETS]
    assert sorted(reversed(buckets), key=slice_order) == ["<64", "64-127", "128-255", "256-511", ">=512"] == buckets
    assert sorted(["10", "3", "png", "1", "jpeg", "nan"], key=slice_order) == ["1", "3", "10", "jpeg", "nan", "png"]
    result = sliced_metrics(np.array([0, 1, 0, 1]), np.full((4, 2), 0.5),
                            {"size": ["128-255", "<64", "64-127", "256-511"]})
    assert list(result["size"]) == ["<64", "64-127", "128-255", "256-511"]


def test_most_confident_mistakes():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9], [0.7, 0.3]])
    labels = np.array([0, 0, 0, 1, 0, 1])  # mistakes: 1 (0.8), 2 (0.7), 3 (0.6), 4 (0.9), 5 (0.7)
    assert most_confident_mistakes(labels, probabilities, 10) == [4, 1, 2, 5, 3]
    assert most_confident_mistakes(labels, probabilities, 2) == [4, 1]
    assert most_confident_mistakes(labels[:1], probabilities[:1], 5) == []


def test_size_bucket():
    assert [size_bucket(h, 1000) for h in (1, 63, 64, 127, 128, 255, 256, 511, 512, 4000)] == [
        "<64", "<64", "64-127", "64-127", "128-255", "128-255", "256-511", "256-511", ">=512", ">=512"]
    assert size_bucket(1000, 100) == "64-127"
    with pytest.raises(ValueError, match="positive"):
        size_bucket(0, 10)


@pytest.mark.parametrize("labels, probabilities, names, message", [
    (np.array([0, 1]), np.full((3, 2), 0.5), ["a", "b"],
     r"label_ids has shape \(2,\) but probabilities has shape \(3, 2\)"),
    (np.array([], dtype=int), np.zeros((0, 2)), ["a", "b"], "no examples"),
    (np.array([0, 2]), np.full((2, 2), 0.5), ["a", "b"], r"label_ids must be in \[0, 1\]"),
    (np.array([0, -1]), np.full((2, 2), 0.5), ["a", "b"], r"label_ids must be in \[0, 1\]"),
    (np.array([0, 1]), np.full((2, 2), 0.5), ["a", "b", "c"],
     r"class_names has 3 names but probabilities has 2 columns"),
    (np.array([0, 1]), np.full(2, 0.5), ["a", "b"], "probabilities must be 2-D"),
    (np.array([[0, 1]]), np.full((2, 2), 0.5), ["a", "b"], "label_ids must be 1-D"),
    (np.array([0.0, 1.0]), np.full((2, 2), 0.5), ["a", "b"], "label_ids must be integer"),
    (np.array([0, 1]), np.array([[0.5, np.nan], [0.5, 0.5]]), ["a", "b"], "NaN"),
    (np.array([0, 1]), np.full((2, 2), 0.5), ["a", "a"], "not unique"),
])
def test_validation(labels, probabilities, names, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(labels, probabilities, names)


def test_validation_of_options_and_slices():
    labels, probabilities = np.array([0, 1]), np.full((2, 2), 0.5)
    with pytest.raises(ValueError, match="top_k"):
        classification_metrics(labels, probabilities, ["a", "b"], top_k=0)
    with pytest.raises(ValueError, match="calibration_bins"):
        classification_metrics(labels, probabilities, ["a", "b"], calibration_bins=0)
    with pytest.raises(ValueError, match="slice 'format' has 3 values but label_ids has 2"):
        sliced_metrics(labels, probabilities, {"format": ["png", "png", "jpeg"]})


def read_png(path) -> np.ndarray:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    return matplotlib.image.imread(path)


def test_plots_write_png_files(tmp_path, result):
    matrix = tmp_path / "confusion.png"
    plot_confusion_matrix(result["confusion_matrix"]["matrix"], CLASS_NAMES, str(matrix), title="test")
    height, width, channels = read_png(matrix).shape
    assert 300 <= height <= 1000 and 300 <= width <= 1100 and channels in (3, 4)
    assert width > height  # room for the colour bar

    calibration = tmp_path / "calibration.png"
    plot_calibration(result["calibration"], str(calibration), title="test")
    assert read_png(calibration).shape[:2] == (650, 600)  # 6 x 6.5 inches at 100 dpi: diagram over histogram

    with pytest.raises(ValueError, match="shape"):
        plot_confusion_matrix([[1, 2], [3, 4]], CLASS_NAMES, str(tmp_path / "bad.png"))


CHAMPION = {"model": "models:/demo@champion", "version": 3, "run_id": "abc123",
            "run_url": "http://mlflow.example:5000/#/experiments/1/runs/abc123", "ui_command": None}
MISTAKES = [{"uri": "file:///data/dog/<1>.png", "label": "dog", "predicted": "<cat&dog>", "confidence": 0.97},
            {"uri": "file:///data/cat/2.jpg", "label": "cat", "predicted": "fox", "confidence": 0.61}]


def make_report(tmp_path, data, result, blessed: bool, champion: bool, mistakes: list[dict] = MISTAKES) -> str:
    labels, probabilities = data
    sizes = [["256-511", "<64", "64-127", "128-255"][i % 4] for i in range(len(labels))]
    split = dict(result, slices=sliced_metrics(labels, probabilities, {"image/original_format": ["png"] * len(labels),
                                                                       "size": sizes}))
    evaluation = {"model": "runs/demo/train/model", "data": "runs/demo/transform", "created": "2024-01-01T00:00:00",
                  "seconds": 1.5, "images_per_second": 266.7, "splits": {"test": split},
                  "champion": {**CHAMPION, "splits": {"test": result}} if champion else None,
                  "misclassified": {"split": "test", "total": 5 if mistakes else 0, "examples": mistakes}}
    evaluation = json.loads(json.dumps(evaluation, sort_keys=True))  # as evaluation.json holds it
    reasons = [] if blessed else ["accuracy 0.41 < 0.9 on test", "log loss rose by 0.2 > 0.05"]
    blessing = {"blessed": blessed, "reasons": reasons, "champion": CHAMPION if champion else None,
                "checks": [{"name": "min_accuracy", "kind": "absolute", "split": "test", "metric": "accuracy",
                            "value": result["accuracy"], "threshold": 0.9, "passed": blessed},
                           {"name": "no_regression", "kind": "change", "split": "test", "metric": "log_loss",
                            "value": None, "threshold": 0.05, "passed": blessed}]}
    png = tmp_path / "c.png"
    plot_calibration(result["calibration"], str(png))
    path = tmp_path / "report.html"
    write_report(str(path), evaluation, blessing, {"test": {"Calibration (test) <1>": png.read_bytes()}},
                 {m["uri"]: thumbnail(png.read_bytes()) for m in mistakes})
    return path.read_text(encoding="utf-8")


def test_report_is_one_self_contained_escaped_html_file(tmp_path, data, result):
    page = make_report(tmp_path, data, result, blessed=False, champion=True)
    assert "NOT BLESSED" in page
    assert "accuracy 0.41 &lt; 0.9 on test" in page and "log loss rose by 0.2 &gt; 0.05" in page
    for name in CLASS_NAMES:
        assert html_escaped(name) in page
    assert "&lt;cat&amp;dog&gt;" in page and "<cat&dog>" not in page
    assert "Calibration (test) &lt;1&gt;" in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 1 and base64.b64decode(images[0]).startswith(PNG_SIGNATURE)
    assert not re.search(r'src="(?!data:)', page)  # nothing loaded from elsewhere
    assert re.findall(r'href="([^"]*)"', page) == [CHAMPION["run_url"]]  # the one link: the champion's run
    assert ("models:/demo@champion</strong>, version 3, MLflow run <code>abc123</code><br>Its run in the MLflow UI: "
            f'<a href="{CHAMPION["run_url"]}">') in page
    assert "difference" in page and "+0.0000" in page
    assert "n/a" in page  # the check without a value, the class without support
    assert "image/original_format" in page and f"{result['accuracy']:.4f}" in page


def test_report_lists_size_buckets_in_numeric_order(tmp_path, data, result):
    page = make_report(tmp_path, data, result, blessed=True, champion=False)
    table = re.search(r'<table data-slice="size">(.*?)</table>', page).group(1)
    assert re.findall(r"<tr><td>([^<]*)</td>", table) == ["&lt;64", "64-127", "128-255", "256-511"]


def test_report_shows_the_most_confident_mistakes_as_thumbnails(tmp_path, data, result):
    page = make_report(tmp_path, data, result, blessed=True, champion=False)
    assert "5 test images misclassified; the 2 with the highest confidence in the predicted class" in page
    thumbnails = re.findall(r'src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(thumbnails) == 2
    assert Image.open(io.BytesIO(base64.b64decode(thumbnails[0]))).size == (118, 128)  # 600 x 650 pixels: the longer side 128
    assert 'true <strong class="true-label">dog</strong>, predicted <strong class="predicted-label">' \
           '&lt;cat&amp;dog&gt;</strong> (0.9700)' in page
    assert "file:///data/dog/&lt;1&gt;.png" in page

    none = make_report(tmp_path, data, result, blessed=True, champion=False, mistakes=[])
    assert "No test image is misclassified." in none and "image/jpeg" not in none


def test_report_blessed_without_champion(tmp_path, data, result):
    page = make_report(tmp_path, data, result, blessed=True, champion=False)
    assert "BLESSED" in page and "NOT BLESSED" not in page
    assert "difference" not in page
    assert "Champion: none to compare with (absolute thresholds only)." in page


def html_escaped(name: str) -> str:
    return name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

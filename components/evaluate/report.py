"""The evaluation's pictures (confusion matrix, reliability diagram, thumbnails of mistakes) and its one
self-contained HTML report.

Paths may be local or anything tf.io.gfile opens (gs://...); TensorFlow is imported only for the latter.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

from components.evaluate.metrics import slice_order

# Headline rows of a split: (label, path into a classification_metrics dict).
HEADLINE = [("accuracy", ("accuracy",)), ("top-k accuracy", ("top_k_accuracy", "value")),
            ("log loss", ("log_loss",)), ("ECE", ("ece",))] + [
    (f"{average} {label}", (average, key))
    for average in ("macro", "weighted")
    for label, key in (("precision", "precision"), ("recall", "recall"), ("F1", "f1"),
                       ("ROC-AUC", "roc_auc"), ("PR-AUC", "pr_auc"))]
LOWER_IS_BETTER = {("log_loss",), ("ece",)}
PER_CLASS_COLUMNS = ("precision", "recall", "f1", "support", "roc_auc", "pr_auc")
SLICE_COLUMNS = ("examples", "accuracy", "top_k_accuracy", "macro_recall", "log_loss")
THUMBNAIL_PIXELS = 128  # the longer side of a mistake's thumbnail

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
.meta { color: #555; }
.banner { font-size: 2em; font-weight: bold; padding: .5em 1em; border-radius: 6px; color: #fff; }
.banner.blessed { background: #2e7d32; } .banner.not-blessed { background: #c62828; }
.reasons { margin: .5em 0 1.5em 0; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f3f3f3; }
.pass { color: #2e7d32; font-weight: bold; } .fail { color: #c62828; font-weight: bold; }
.better { color: #2e7d32; } .worse { color: #c62828; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.figures figure { margin: 1em 0; flex: 1 1 400px; max-width: 540px; }
.figures img { width: 100%; border: 1px solid #eee; }
.champion, .tuning { margin: .5em 0 1.5em 0; line-height: 1.6; }
code { background: #f3f3f3; padding: 0 .2em; overflow-wrap: anywhere; }
.gallery { display: flex; flex-wrap: wrap; gap: 1em; }
.gallery figure { margin: 0; width: 150px; font-size: .85em; }
.gallery img { display: block; width: 128px; height: 128px; object-fit: contain; image-rendering: pixelated;
  background: #f3f3f3; border: 1px solid #ddd; margin-bottom: .3em; }
.gallery .uri { display: block; color: #777; font-size: .8em; word-break: break-all; }
"""


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str, *,
                          title: str = "") -> None:
    """Heat map of the confusion matrix coloured by row-normalised recall, each cell with its count, as a PNG."""
    import numpy as np

    counts = np.asarray(matrix, dtype=np.int64)
    n = len(class_names)
    if counts.shape != (n, n):
        raise ValueError(f"matrix has shape {counts.shape} but there are {n} class names")
    support = counts.sum(axis=1, keepdims=True)
    recall = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)

    plt = _pyplot()
    side = min(4.0 + 0.5 * n, 20.0)
    figure, axis = plt.subplots(figsize=(side + 1.0, side))
    image = axis.imshow(recall, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axis, label="recall (row-normalised)")
    axis.set_xticks(range(n), labels=list(class_names), rotation=45, ha="right")
    axis.set_yticks(range(n), labels=list(class_names))
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    fontsize = max(5, 11 - n // 5)
    for row in range(n):
        for column in range(n):
            axis.text(column, row, str(counts[row, column]), ha="center", va="center", fontsize=fontsize,
                      color="white" if recall[row, column] > 0.5 else "black")
    axis.set_title(title or "confusion matrix")
    _save_png(figure, path)


def plot_calibration(calibration: list[dict], path: str, *, title: str = "") -> None:
    """Reliability diagram as a PNG: accuracy per confidence bin against the diagonal and the bins'
    mean confidence; under it, the images per bin as a histogram with its counts."""
    plt = _pyplot()
    figure, (axis, histogram) = plt.subplots(2, 1, figsize=(6, 6.5), sharex=True,
                                             gridspec_kw={"height_ratios": [3, 1]})
    centres = [(b["lower"] + b["upper"]) / 2 for b in calibration]
    widths = [b["upper"] - b["lower"] for b in calibration]
    counts = [b["count"] for b in calibration]
    axis.bar(centres, [b["accuracy"] or 0.0 for b in calibration], width=widths, edgecolor="#1f4e79",
             color="#6fa8dc", label="accuracy")
    confident = [(c, b["confidence"]) for c, b in zip(centres, calibration) if b["count"]]
    if confident:
        axis.plot(*zip(*confident), "o", color="#e69138", markersize=5, label="mean confidence")
    axis.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("accuracy")
    axis.set_title(title or "reliability diagram")
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left")
    histogram.bar(centres, counts, width=widths, edgecolor="#555", color="#bbb")
    top = max(counts, default=0) or 1
    for centre, count in zip(centres, counts):
        if count:
            histogram.text(centre, count + 0.04 * top, str(count), ha="center", va="bottom", fontsize=8)
    histogram.set_ylim(0, top * 1.35)
    histogram.set_ylabel("images")
    histogram.set_xlabel("top-1 confidence")
    histogram.grid(alpha=0.3, axis="y")
    _save_png(figure, path)


def thumbnail(encoded: bytes, size: int = THUMBNAIL_PIXELS) -> bytes:
    """A JPEG or PNG image as a JPEG whose longer side is at most `size` pixels."""
    from PIL import Image

    with Image.open(io.BytesIO(encoded)) as image:
        image.draft("RGB", (size, size))  # JPEGs decode at a reduced scale
        small = image.convert("RGB")
    small.thumbnail((size, size))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def write_report(path: str, evaluation: dict, blessing: dict, figures: Mapping[str, Mapping[str, bytes]],
                 thumbnails: Mapping[str, bytes] = {}) -> None:
    """One self-contained HTML file: the blessing, its checks, the champion, each split's metrics (next
    to the champion's), per class and per slice with its `figures` (split -> title -> PNG), and the most
    confident mistakes (`thumbnails`: JPEG by URI)."""
    champion = evaluation.get("champion") or {}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Evaluation: {_text(evaluation.get('model', ''))}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Evaluation of {_text(evaluation.get('model', ''))}</h1>",
        _meta(evaluation),
        _banner(blessing),
        _champion(evaluation.get("champion")),
        _tuning(evaluation.get("tuning")),
        "<h2>Checks</h2>",
        _checks_table(blessing.get("checks", [])),
    ]
    for split, metrics in evaluation.get("splits", {}).items():
        parts += [f"<h2>Split: {_text(split)}</h2>",
                  _headline_table(metrics, champion.get("splits", {}).get(split)),
                  "<h3>Per class</h3>", _per_class_table(metrics.get("per_class", {}))]
        for feature, values in metrics.get("slices", {}).items():
            parts += [f'<h3>Slice: {_text(feature)}</h3>', _slice_table(feature, values)]
        if figures.get(split):
            parts.append('<div class="figures">' + "".join(
                f'<figure><img src="{_data_uri("image/png", png)}" alt="{_text(title)}">'
                f"<figcaption>{_text(title)}</figcaption></figure>" for title, png in figures[split].items())
                + "</div>")
    if evaluation.get("misclassified"):
        parts += _gallery(evaluation["misclassified"], thumbnails)
    parts.append("</body></html>")
    _write_bytes(path, "\n".join(parts).encode("utf-8"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_png(figure, path: str) -> None:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    _pyplot().close(figure)
    _write_bytes(path, buffer.getvalue())


def _write_bytes(path: str, data: bytes) -> None:
    """Local paths with open(), anything with a scheme (gs://, hdfs://...) with tf.io.gfile."""
    if "://" in path:
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)


def _text(value: Any) -> str:
    return html.escape(str(value))


def _data_uri(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def _number(value: Any, signed: bool = False) -> str:
    """Ints as they are, other numbers to 4 decimals, None as n/a; all escaped."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:+d}" if signed else str(value)
    if isinstance(value, float):
        return f"{value:+.4f}" if signed else f"{value:.4f}"
    return _text(value)


def _lookup(metrics: Mapping[str, Any] | None, keys: Sequence[str]) -> Any:
    for key in keys:
        if not isinstance(metrics, Mapping):
            return None
        metrics = metrics.get(key)
    return metrics


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], attributes: str = "") -> str:
    """A table from already escaped cells (and attributes)."""
    head = "".join(f"<th>{cell}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table{attributes}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _meta(evaluation: Mapping[str, Any]) -> str:
    items = [("data", _text(evaluation.get("data", "n/a"))),
             ("created", _text(evaluation.get("created", "n/a"))),
             ("seconds", _text(evaluation.get("seconds", "n/a"))),
             ("images/s", _text(evaluation.get("images_per_second", "n/a")))]
    return '<p class="meta">' + " &middot; ".join(f"{name}: {value}" for name, value in items) + "</p>"


def _banner(blessing: Mapping[str, Any]) -> str:
    blessed = bool(blessing.get("blessed"))
    reasons = "".join(f"<li>{_text(reason)}</li>" for reason in blessing.get("reasons", []))
    banner = (f'<div class="banner {"blessed" if blessed else "not-blessed"}">'
              f'{"BLESSED" if blessed else "NOT BLESSED"}</div>')
    return banner + (f'<ul class="reasons">{reasons}</ul>' if reasons else "")


def _tuning(tuning: Mapping[str, Any] | None) -> str:
    """Where the model's hyperparameters came from: the configuration, or the best trial of a search."""
    if not tuning:
        return '<p class="tuning">Hyperparameters: as configured (no search).</p>'
    values = ", ".join(f"{_text(key)} <code>{_text(value)}</code>" for key, value in sorted(tuning["hyperparameters"].items()))
    return (f'<p class="tuning">Hyperparameters: tuned, the best of {_text(tuning["trials"])} '
            f'{_text(tuning["algorithm"])} trials (trial {_text(tuning["best_trial"])}, {_text(tuning["objective"])} '
            f'{tuning["best_objective"]:.4f}) in <code>{_text(tuning["output"])}</code>: {values}.</p>')


def _champion(champion: Mapping[str, Any] | None) -> str:
    """Which champion the candidate was compared with: its version, its run and that run's MLflow page."""
    if not champion:
        return '<p class="champion">Champion: none to compare with (absolute thresholds only).</p>'
    text = f"Champion: <strong>{_text(champion['model'])}</strong>"
    if champion.get("version") is not None:
        text += f", version {_text(champion['version'])}"
    if champion.get("run_id"):
        text += f", MLflow run <code>{_text(champion['run_id'])}</code>"
    if champion.get("run_url"):
        link = f'<a href="{_text(champion["run_url"])}">{_text(champion["run_url"])}</a>'
        text += (f"<br>Its run in the MLflow UI: start it with <code>{_text(champion['ui_command'])}</code>, "
                 f"then open {link}" if champion.get("ui_command") else f"<br>Its run in the MLflow UI: {link}")
    return f'<p class="champion">{text}</p>'


def _checks_table(checks: Sequence[Mapping[str, Any]]) -> str:
    if not checks:
        return "<p>No checks.</p>"
    rows = [[_text(c.get("name", "")), _text(c.get("kind", "")), _text(c.get("split", "")),
             _text(c.get("metric", "")), _number(c.get("value")), _number(c.get("threshold")),
             '<span class="pass">pass</span>' if c.get("passed") else '<span class="fail">FAIL</span>']
            for c in checks]
    return _table(["check", "kind", "split", "metric", "value", "threshold", "result"], rows)


def _headline_table(metrics: Mapping[str, Any], champion: Mapping[str, Any] | None) -> str:
    k = _lookup(metrics, ("top_k_accuracy", "k"))
    header = ["metric", "model"] + (["champion", "difference"] if champion else [])
    rows = []
    for label, keys in HEADLINE:
        value = _lookup(metrics, keys)
        row = [_text(label.replace("top-k", f"top-{k}") if k else label), _number(value)]
        if champion:
            other = _lookup(champion, keys)
            row += [_number(other), _difference(value, other, keys in LOWER_IS_BETTER)]
        rows.append(row)
    return _table(header, rows)


def _difference(value: Any, other: Any, lower_is_better: bool) -> str:
    if not isinstance(value, (int, float)) or not isinstance(other, (int, float)):
        return "n/a"
    delta = value - other
    better = delta < 0 if lower_is_better else delta > 0
    text = _number(float(delta), signed=True)
    return text if delta == 0 else f'<span class="{"better" if better else "worse"}">{text}</span>'


def _per_class_table(per_class: Mapping[str, Mapping[str, Any]]) -> str:
    rows = [[_text(name)] + [_number(row.get(column)) for column in PER_CLASS_COLUMNS]
            for name, row in per_class.items()]
    return _table(["class", *PER_CLASS_COLUMNS], rows)


def _slice_table(feature: str, values: Mapping[str, Mapping[str, Any]]) -> str:
    """The slice's rows in `slice_order` (evaluation.json keeps its keys sorted as text)."""
    rows = [[_text(value)] + [_number(values[value].get(column)) for column in SLICE_COLUMNS]
            for value in sorted(values, key=slice_order)]
    return _table(["value", *SLICE_COLUMNS], rows, f' data-slice="{_text(feature)}"')


def _gallery(misclassified: Mapping[str, Any], thumbnails: Mapping[str, bytes]) -> list[str]:
    """The most confident mistakes as thumbnails with their true and predicted labels, confidence and URI."""
    split, examples, total = misclassified["split"], misclassified["examples"], misclassified["total"]
    parts = [f"<h2>Most confident mistakes ({_text(split)})</h2>"]
    if not total:
        return parts + [f'<p class="no-mistakes">No {_text(split)} image is misclassified.</p>']
    shown = ("" if not examples else ", the most confident first:" if len(examples) == total
             else f"; the {len(examples)} with the highest confidence in the predicted class:")
    parts.append(f"<p>{total} {_text(split)} image{'s' if total != 1 else ''} misclassified{shown}</p>")
    figures = []
    for example in examples:
        figures.append(
            f'<figure class="mistake"><img src="{_data_uri("image/jpeg", thumbnails[example["uri"]])}" '
            f'alt="{_text(example["uri"])}" title="{_text(example["uri"])}"><figcaption>'
            f'true <strong class="true-label">{_text(example["label"])}</strong>, '
            f'predicted <strong class="predicted-label">{_text(example["predicted"])}</strong> '
            f'({_number(example["confidence"])})<span class="uri">{_text(example["uri"])}</span>'
            f"</figcaption></figure>")
    return parts + ['<div class="gallery">' + "".join(figures) + "</div>"]

"""The monitor stage: served predictions per time window against the baseline, alerts, and the live metric.

Per window (`monitor.window`, aligned to the epoch) and as moving averages over
`monitor.moving_average_windows` windows:
- on the labelled sample: accuracy, per-class recall and the evaluate slices (components.evaluate.metrics);
- the predicted-class distribution (chi-square) and the confidence distribution (KS) against the
  baseline's evaluation, and the class-probability vectors (MMD permutation test);
- input drift against the training data: brightness, contrast, width and height (KS), format and
  channels (chi-square).
A window alerts when its accuracy (with at least `min_labelled` labels) is below `min_accuracy` or more
than `max_accuracy_drop` below the baseline's, or (with `drift_alerts` and at least `min_drift_sample`
predictions) when a drift test's p-value is below `drift_alpha`. The status is the newest window's.

Writes monitor.json (everything), live_metrics.json (the newest window's numbers, which `python -m
pipeline retrain --live-metric accuracy --live-metric-source .../live_metrics.json` reads), monitor.html
with its plots, and the manifest; optionally the labelled images as an image folder ingest takes.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import posixpath
import urllib.request
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from components.artifacts import LIVE_METRICS_FILE, MONITOR_FILE, fingerprint
from components.config import Config, MonitorConfig, window_seconds
from components.evaluate.metrics import classification_metrics, size_bucket, sliced_metrics
from components.files import write_json
from components.manifest import Manifest, write_manifest
from components.monitor import drift
from components.monitor.baseline import Baseline, read_baseline
from components.monitor.images import CATEGORICAL_FACTS, UNREADABLE
from components.monitor.labels import LabelReading, read_labels
from components.monitor.observations import Observation, read_observations
from components.staging import staged_output

logger = logging.getLogger(__name__)

DRIFTED_FACTS = ("brightness", "contrast", "width", "height")  # KS against the training images
SLICES = {"image/original_format": lambda o: o.facts.format, "image/channels": lambda o: o.facts.channels,
          "size": lambda o: size_bucket(int(o.facts.height), int(o.facts.width))
          if o.facts.format != UNREADABLE else UNREADABLE}
WEBHOOK_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class MonitorResult:
    output: str
    status: str  # "ok", "alert" or "no data"
    summary: dict


def run_monitor(logs: Sequence[str], labels: str | None, baseline: str, output: str, config: Config, *,
                model: str = "", webhook: str = "", export_labelled: str = "",
                overwrite: bool = False) -> MonitorResult:
    """Monitors the prediction logs `logs` (globs, files or directories) against `baseline`; see the module doc."""
    settings = config.monitor
    reference = read_baseline(baseline, settings.baseline_images, settings.seed)
    observations, log_reading = read_observations(logs, model, keep_images=bool(export_labelled))
    truth, label_reading = (read_labels(labels, reference.labels) if labels else ({}, LabelReading()))
    labelled = _join(observations, truth, label_reading)
    windows = _windows(observations, labelled, reference, settings)
    _moving_averages(windows, settings.moving_average_windows)
    status = windows[-1]["status"] if windows else "no data"
    summary = {
        "status": status, "window": settings.window, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "baseline": {"evaluation": reference.evaluation, "split": reference.split, "accuracy": reference.accuracy,
                     "predictions": int(len(reference.scores)), "training_images": len(reference.training_facts)},
        "logs": log_reading.to_json(), "labels": label_reading.to_json(),
        "predictions": len(observations), "labelled": len(labelled),
        "unlabelled": len(observations) - len(labelled), "windows": windows,
        "alerts": [{"window": w["start"], "reasons": w["alerts"]} for w in windows if w["alerts"]],
        "config": {"monitor": config.to_dict()["monitor"]},
    }
    with staged_output(output, overwrite) as work_dir:
        write_json(posixpath.join(work_dir, MONITOR_FILE), summary)
        write_json(posixpath.join(work_dir, LIVE_METRICS_FILE), live_metrics(summary))
        from components.monitor.report import write_report  # matplotlib loads only to write the report

        write_report(work_dir, summary)
        write_manifest(work_dir, Manifest(
            stage="monitor",
            fingerprint=fingerprint({"logs": sorted(logs), "labels": labels or "", "baseline": reference.evaluation,
                                     "records": log_reading.records, "config": summary["config"]}),
            inputs={"logs": ",".join(logs), "labels": labels or "", "baseline": reference.evaluation},
            config=summary["config"], outputs={"status": status, "predictions": len(observations),
                                               "labelled": len(labelled)}))
    if export_labelled:
        _export_labelled(observations, labelled, export_labelled)
    if webhook and summary["alerts"] and status == "alert":
        _notify(webhook, summary)
    logger.info("Monitor: %s; %d predictions (%d labelled) in %d windows; %d windows alerted; %s", status,
                len(observations), len(labelled), len(windows), len(summary["alerts"]), output)
    return MonitorResult(output, status, summary)


def live_metrics(summary: dict) -> dict:
    """The newest window's numbers as one flat JSON object (the retrain policy's live metric document)."""
    if not summary["windows"]:
        return {"status": summary["status"]}
    newest = summary["windows"][-1]
    document = {"status": newest["status"], "window_start": newest["start"], "predictions": newest["predictions"],
                "labelled": newest["labelled"], "alerts": len(newest["alerts"]),
                "min_drift_p_value": newest["min_drift_p_value"]}
    for name in ("accuracy", "accuracy_moving_average", "mean_score"):
        if newest.get(name) is not None:
            document[name] = newest[name]
    return document


def _join(observations: list[Observation], truth: dict[str, str], reading: LabelReading) -> dict[int, str]:
    """{observation index: label}: by request key first, then by image sha256."""
    labelled, used = {}, set()
    for i, observation in enumerate(observations):
        for key in (observation.key, observation.sha256):
            if key and key in truth:
                labelled[i] = truth[key]
                used.add(key)
                break
    reading.matched = len(used)
    return labelled


def _windows(observations: list[Observation], labelled: dict[int, str], reference: Baseline,
             settings: MonitorConfig) -> list[dict]:
    seconds = window_seconds(settings.window)
    groups: dict[int, list[int]] = {}
    for i, observation in enumerate(observations):
        groups.setdefault(observation.time // seconds * seconds, []).append(i)
    return [_window(start, seconds, [observations[i] for i in members], {j: labelled[i] for j, i in
                    enumerate(members) if i in labelled}, reference, settings)
            for start, members in sorted(groups.items())]


def _window(start: int, seconds: int, observations: list[Observation], labels: dict[int, str],
            reference: Baseline, settings: MonitorConfig) -> dict:
    alpha = settings.drift_alpha
    probabilities = np.stack([o.probabilities for o in observations])
    window = {"start": _iso(start), "end": _iso(start + seconds), "start_secs": start,
              "predictions": len(observations), "labelled": len(labels),
              "versions": dict(Counter(str(o.version) for o in observations)),
              "predicted": dict(Counter(o.label for o in observations)),
              "mean_score": round(float(np.mean([o.score for o in observations])), 6)}
    if labels and probabilities.shape[1] == len(reference.labels):
        index = {name: i for i, name in enumerate(reference.labels)}
        members = sorted(labels)
        label_ids = np.asarray([index[labels[j]] for j in members])
        chosen = probabilities[members]
        metrics = classification_metrics(label_ids, chosen, reference.labels, top_k=1)
        window["accuracy"] = metrics["accuracy"]
        window["per_class_recall"] = {name: row["recall"] for name, row in metrics["per_class"].items()}
        window["slices"] = sliced_metrics(label_ids, chosen, {name: [value(observations[j]) for j in members]
                                                              for name, value in SLICES.items()}, top_k=1)
    else:
        window["accuracy"] = None
    tests = {
        "predicted_class": drift.chi_square_test(reference.predicted, Counter(o.label for o in observations), alpha),
        "confidence": drift.ks_test(reference.scores, [o.score for o in observations], alpha),
        "probabilities_mmd": drift.mmd_test(reference.probabilities, probabilities, alpha,
                                            permutations=settings.mmd_permutations, seed=settings.seed,
                                            max_samples=settings.mmd_samples)
        if probabilities.shape[1] == reference.probabilities.shape[1] else None,
    }
    for name in DRIFTED_FACTS:
        tests[f"image_{name}"] = drift.ks_test([getattr(f, name) for f in reference.training_facts],
                                               [getattr(o.facts, name) for o in observations], alpha)
    for name in CATEGORICAL_FACTS:
        tests[f"image_{name}"] = drift.chi_square_test(Counter(getattr(f, name) for f in reference.training_facts),
                                                       Counter(getattr(o.facts, name) for o in observations), alpha)
    window["drift"] = {name: test.to_json() for name, test in tests.items() if test is not None}
    p_values = [t["p_value"] for t in window["drift"].values() if t["p_value"] is not None]
    window["min_drift_p_value"] = min(p_values) if p_values else None
    window["alerts"] = _alerts(window, reference, settings)
    window["status"] = "alert" if window["alerts"] else "ok"
    return window


def _alerts(window: dict, reference: Baseline, settings: MonitorConfig) -> list[str]:
    alerts = []
    accuracy = window["accuracy"]
    if accuracy is not None and window["labelled"] >= settings.min_labelled:
        if settings.min_accuracy and accuracy < settings.min_accuracy:
            alerts.append(f"accuracy {accuracy:.4f} < monitor.min_accuracy {settings.min_accuracy}")
        if reference.accuracy - accuracy > settings.max_accuracy_drop:
            alerts.append(f"accuracy {accuracy:.4f} is {reference.accuracy - accuracy:.4f} below the baseline's "
                          f"{reference.accuracy:.4f} (monitor.max_accuracy_drop {settings.max_accuracy_drop})")
    if settings.drift_alerts and window["predictions"] >= settings.min_drift_sample:
        for name, test in window["drift"].items():
            if test["drift"]:
                alerts.append(f"drift in {name}: p={test['p_value']:.3g} < {settings.drift_alpha}")
    return alerts


def _moving_averages(windows: list[dict], span: int) -> None:
    """Labelled-weighted accuracy and prediction-weighted mean score over the last `span` windows."""
    for i, window in enumerate(windows):
        recent = windows[max(0, i - span + 1):i + 1]
        labelled = sum(w["labelled"] for w in recent if w["accuracy"] is not None)
        window["accuracy_moving_average"] = round(sum(w["accuracy"] * w["labelled"] for w in recent
                                                      if w["accuracy"] is not None) / labelled, 6) if labelled else None
        predictions = sum(w["predictions"] for w in recent)
        window["mean_score_moving_average"] = round(sum(w["mean_score"] * w["predictions"] for w in recent)
                                                    / predictions, 6)


def _iso(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat()


def _export_labelled(observations: list[Observation], labelled: dict[int, str], directory: str) -> None:
    """The labelled served images as `<directory>/<label>/<sha256>.<format>`, an image folder ingest takes."""
    written = 0
    for i, label in labelled.items():
        observation = observations[i]
        if observation.image is None:
            continue
        path = os.path.join(directory, label, f"{observation.sha256}.{observation.facts.format}")
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + ".tmp", "wb") as f:
                f.write(observation.image)
            os.replace(path + ".tmp", path)
            written += 1
    logger.info("Exported %d labelled images (%d new) to %s", len(labelled), written, directory)


def _notify(url: str, summary: dict) -> None:
    """POSTs the alerts as JSON; a webhook that fails is logged, never the end of the monitor."""
    body = json.dumps({"status": summary["status"], "alerts": summary["alerts"][-10:],
                       "predictions": summary["predictions"], "labelled": summary["labelled"]}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SECONDS) as response:
            logger.info("Alert sent to %s: HTTP %d", url, response.status)
    except OSError as e:
        logger.error("Cannot send the alert to %s: %s", url, e)


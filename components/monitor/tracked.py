"""What MLflow keeps of a monitor output: the newest window's numbers, every window as a step (its
accuracy, moving average, mean score, smallest drift p-value, traffic), the report and its plots."""

from __future__ import annotations

from components.manifest import Manifest
from components.artifacts import LIVE_METRICS_FILE, MONITOR_FILE, MONITOR_PLOTS, MONITOR_REPORT_FILE
from components.tracking.stage_log import StageLog, numbers, read_optional

WINDOW_METRICS = ("predictions", "labelled", "accuracy", "accuracy_moving_average", "mean_score",
                  "mean_score_moving_average", "min_drift_p_value")


def tracked_outputs(output: str, manifest: Manifest) -> StageLog:
    """`live.*`: the newest window (live_metrics.json); `alerted_windows`; per window (step = its index)
    the WINDOW_METRICS."""
    summary = read_optional(output, MONITOR_FILE) or {}
    windows = summary.get("windows", [])
    metrics = numbers(read_optional(output, LIVE_METRICS_FILE) or {}, "live.")
    metrics.update({"alerted_windows": float(len(summary.get("alerts", []))),
                    "predictions": float(summary.get("predictions", 0)), "labelled": float(summary.get("labelled", 0))})
    history = [(step, numbers({name: window.get(name) for name in WINDOW_METRICS}))
               for step, window in enumerate(windows)]
    return StageLog(metrics, history=history,
                    artifacts=(MONITOR_FILE, LIVE_METRICS_FILE, MONITOR_REPORT_FILE, *MONITOR_PLOTS))

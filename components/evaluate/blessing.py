"""The blessing: absolute thresholds on the candidate, change thresholds against the champion.

As TFX's Evaluator: a model is blessed when every check passes. With no champion, the absolute
checks alone decide; the change checks compare both models on the same split of the same data.
"""

from __future__ import annotations

from typing import Any, Mapping

from components.config import EvaluateConfig


def _check(name: str, kind: str, split: str, metric: str, value: float | None, threshold: float) -> dict[str, Any]:
    return {"name": name, "kind": kind, "split": split, "metric": metric, "value": value, "threshold": threshold,
            "passed": value is not None and value >= threshold}


def bless(candidate: Mapping[str, Any], champion_metrics: Mapping[str, Any] | None, settings: EvaluateConfig,
          *, champion: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Decides on `candidate`'s metrics of the first configured split (and the champion's, if any).

    Returns {"blessed", "checks": [...], "reasons": [...], "champion"}; each check names its
    metric, value, threshold and whether it passed, and every failed check is a reason. "champion"
    is `champion`: which model it was compared with (components.evaluate.champion.Champion.describe).
    """
    split = settings.splits[0]
    metrics = candidate[split]
    checks = [_check(f"{split} accuracy >= {settings.min_accuracy}", "absolute", split, "accuracy",
                     metrics["accuracy"], settings.min_accuracy)]
    for name, row in metrics["per_class"].items():
        if row["support"]:
            checks.append(_check(f"{split} recall of {name!r} >= {settings.min_class_recall}", "absolute", split,
                                 f"per_class.{name}.recall", row["recall"], settings.min_class_recall))
    if champion_metrics is not None:
        base = champion_metrics[split]
        for metric, value, reference, drop in (
                ("accuracy", metrics["accuracy"], base["accuracy"], settings.max_accuracy_drop),
                ("macro.f1", metrics["macro"]["f1"], base["macro"]["f1"], settings.max_macro_f1_drop)):
            threshold = round(reference - drop, 6)
            checks.append(_check(f"{split} {metric} >= champion's {reference} - {drop}", "change", split, metric,
                                 value, threshold))
    failed = [c for c in checks if not c["passed"]]
    reasons = [f"failed: {c['name']} (got {c['value']})" for c in failed] or [
        f"all {len(checks)} checks passed" + ("" if champion_metrics is not None
                                              else "; no champion yet, absolute thresholds only")]
    return {"blessed": not failed, "checks": checks, "reasons": reasons,
            "champion": dict(champion) if champion is not None else None}

"""monitor.html: the status, the alerts, time series per window (accuracy and its moving average, the drift
tests' p-values, traffic and labels) as PNG plots, and a table of the windows."""

from __future__ import annotations

import datetime
import html
import posixpath

import matplotlib

from components.artifacts import MONITOR_PLOTS, MONITOR_REPORT_FILE

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ACCURACY_PLOT, DRIFT_PLOT, TRAFFIC_PLOT = MONITOR_PLOTS
_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:70em} table{border-collapse:collapse} "
          "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right} .alert{color:#b00;font-weight:bold} "
          ".ok{color:#070;font-weight:bold} img{max-width:100%}")


def write_report(directory: str, summary: dict) -> None:
    """Writes monitor.html and its plots into `directory`."""
    windows = summary["windows"]
    if windows:
        _plots(directory, windows, summary)
    status = summary["status"]
    rows = "".join(
        f"<tr><td>{html.escape(w['start'][:19])}</td><td>{w['predictions']}</td><td>{w['labelled']}</td>"
        f"<td>{_number(w['accuracy'])}</td><td>{_number(w['accuracy_moving_average'])}</td>"
        f"<td>{_number(w['mean_score'])}</td><td>{_number(w['min_drift_p_value'], '.2g')}</td>"
        f"<td class='{w['status']}'>{w['status']}</td></tr>" for w in windows)
    alerts = "".join(f"<li><b>{html.escape(a['window'][:19])}</b>: {html.escape('; '.join(a['reasons']))}</li>"
                     for a in summary["alerts"]) or "<li>none</li>"
    labels = summary["labels"]
    plots = "".join(f'<p><img src="{name}" alt="{name}"></p>' for name in (ACCURACY_PLOT, DRIFT_PLOT, TRAFFIC_PLOT)
                    ) if windows else "<p>No predictions were logged.</p>"
    baseline = summary["baseline"]
    page = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>cvpipe monitor</title>
<style>{_STYLE}</style></head><body>
<h1>Served model monitor: <span class="{'alert' if status == 'alert' else 'ok'}">{html.escape(status)}</span></h1>
<p>{summary['predictions']} predictions ({summary['labelled']} labelled, {summary['unlabelled']} unlabelled) in
{len(windows)} windows of {html.escape(summary['window'])}; {labels['labels']} labels read,
{labels['unmatched']} matched no prediction, {sum(labels['problems'].values())} refused.
Baseline: {html.escape(baseline['evaluation'])} ({html.escape(baseline['split'])} accuracy
{baseline['accuracy']:.4f}, {baseline['training_images']} training images).</p>
<h2>Alerts</h2><ul>{alerts}</ul>
{plots}
<h2>Windows</h2><table><tr><th>start (UTC)</th><th>predictions</th><th>labelled</th><th>accuracy</th>
<th>moving average</th><th>mean score</th><th>smallest drift p</th><th>status</th></tr>{rows}</table>
<p>Generated {html.escape(summary['created'][:19])} UTC; details in monitor.json.</p></body></html>"""
    with open(posixpath.join(directory, MONITOR_REPORT_FILE), "w") as f:
        f.write(page)


def _number(value: float | None, spec: str = ".4f") -> str:
    return "" if value is None else format(value, spec)


def _plots(directory: str, windows: list[dict], summary: dict) -> None:
    times = [datetime.datetime.fromisoformat(w["start"]) for w in windows]
    figure, axis = plt.subplots(figsize=(9, 3.5))
    accuracy = [(t, w["accuracy"]) for t, w in zip(times, windows) if w["accuracy"] is not None]
    if accuracy:
        axis.plot(*zip(*accuracy), "o-", label="accuracy (labelled sample)")
    moving = [(t, w["accuracy_moving_average"]) for t, w in zip(times, windows)
              if w["accuracy_moving_average"] is not None]
    if moving:
        axis.plot(*zip(*moving), "--", label="moving average")
    axis.axhline(summary["baseline"]["accuracy"], color="grey", linestyle=":", label="baseline")
    axis.set_ylim(0, 1.02)
    _finish(figure, axis, "Accuracy per window", posixpath.join(directory, ACCURACY_PLOT))

    figure, axis = plt.subplots(figsize=(9, 3.5))
    for name in windows[0]["drift"]:
        points = [(t, max(w["drift"][name]["p_value"], 1e-12)) for t, w in zip(times, windows)
                  if name in w["drift"] and w["drift"][name]["p_value"] is not None]
        if points:
            axis.plot(*zip(*points), "o-", label=name, markersize=3)
    axis.set_yscale("log")
    axis.axhline(summary["config"]["monitor"]["drift_alpha"], color="red", linestyle=":", label="alpha")
    _finish(figure, axis, "Drift tests: p-value per window (lower: more drift)", posixpath.join(directory, DRIFT_PLOT))

    figure, axis = plt.subplots(figsize=(9, 3))
    axis.bar(times, [w["predictions"] for w in windows], width=0.8 * _width(times), label="predictions")
    axis.bar(times, [w["labelled"] for w in windows], width=0.8 * _width(times), label="labelled")
    _finish(figure, axis, "Traffic per window", posixpath.join(directory, TRAFFIC_PLOT))


def _width(times: list[datetime.datetime]) -> float:
    """A bar width in days (matplotlib's date unit): the smallest gap between windows."""
    gaps = [(b - a).total_seconds() / 86400 for a, b in zip(times, times[1:])]
    return min(gaps) if gaps else 1.0


def _finish(figure, axis, title: str, path: str) -> None:
    axis.set_title(title)
    axis.legend(fontsize=7, loc="best")
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)

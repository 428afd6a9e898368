"""tuning.png: a search's objective per trial (the best so far as a line) and against each hyperparameter."""

from __future__ import annotations

import math
from typing import Any, Mapping

import tensorflow as tf


def plot_tuning(tuning: Mapping[str, Any], path: str) -> None:
    """The objective of every finished trial in start order, then one panel per hyperparameter (switches
    and names as categories), the best trial marked; written as a PNG to `path` (any tf.io.gfile path)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    objective, maximise = tuning["objective"], tuning["direction"] == "max"
    finished = [t for t in tuning["trials"] if t["objective"] is not None]
    best = tuning.get("best")
    keys = tuning["space"]
    columns = min(4, len(keys) + 1)
    rows = math.ceil((len(keys) + 1) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
    panels = list(axes.flat)

    order = panels[0]
    numbers = list(range(1, len(finished) + 1))
    values = [t["objective"] for t in finished]
    stopped = [t.get("stopped_at_epoch") is not None for t in finished]
    order.scatter([n for n, s in zip(numbers, stopped) if not s], [v for v, s in zip(values, stopped) if not s],
                  color="#1565c0", label="trial")
    if any(stopped):
        order.scatter([n for n, s in zip(numbers, stopped) if s], [v for v, s in zip(values, stopped) if s],
                      marker="x", color="#757575", label="stopped early")
    running = []
    for value in values:
        running.append(value if not running else (max if maximise else min)(running[-1], value))
    order.step(numbers, running, where="post", color="#c62828", label="best so far")
    order.set_xlabel("trial (in start order)")
    order.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    order.set_ylabel(objective)
    order.set_title(f"{tuning['algorithm']}: {len(finished)} trials")
    order.grid(alpha=0.3)
    order.legend(fontsize=8)

    for axis, key in zip(panels[1:], keys):
        xs = [t["hyperparameters"].get(key) for t in finished]
        categorical = any(isinstance(x, (bool, str)) for x in xs)
        if categorical:
            categories = ["False", "True"] if all(isinstance(x, bool) for x in xs) else sorted({str(x) for x in xs})
            positions = [categories.index(str(x)) for x in xs]
            axis.set_xticks(range(len(categories)), categories)
        else:
            positions = xs
            if all(x is not None and x > 0 for x in xs) and xs and max(xs) / min(xs) >= 20:
                axis.set_xscale("log")
        axis.scatter(positions, values, color="#1565c0", alpha=0.8)
        if best is not None and best in finished:
            axis.scatter([positions[finished.index(best)]], [best["objective"]], s=120, facecolors="none",
                         edgecolors="#c62828", linewidths=2, label="best")
        axis.set_title(key)
        axis.set_ylabel(objective)
        axis.grid(alpha=0.3)
    for axis in panels[len(keys) + 1:]:
        axis.axis("off")
    figure.tight_layout()
    with tf.io.gfile.GFile(path, "wb") as f:
        figure.savefig(f, format="png", dpi=90)
    plt.close(figure)

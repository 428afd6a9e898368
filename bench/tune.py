"""Hyperparameter search cost: seconds per trial and what stopping hopeless trials early saves.

Rows, on `settings.train_images` demo images at 64x64 and the same trial budget: random search with every
trial trained to the end (the baseline), random search with the median stopping rule, and Hyperband
(most trials trained for a fraction of the epochs). `vs_baseline` is the baseline's seconds over the
variant's (> 1: a saving); each row also gives the epochs trained and the best validation accuracy found.
"""

from __future__ import annotations

import logging
import shutil
import tempfile

from bench.fixtures import transformed
from bench.settings import BenchSettings
from components.config import load_config
from components.tune.search import run_tuning

logger = logging.getLogger(__name__)

TRIALS, EPOCHS = 4, 6  # the budget of every variant: trials, and the most epochs a trial trains
VARIANTS = {  # variant -> tune.* settings
    "random, every trial to the end": ["tune.algorithm=random", "tune.median_stop_after_epochs=0"],
    "random, median stop from epoch 3": ["tune.algorithm=random", "tune.median_stop_after_epochs=3",
                                         "tune.median_stop_min_trials=1"],
    "hyperband, factor 3": ["tune.algorithm=hyperband", "tune.hyperband_factor=3"],
}


def run(settings: BenchSettings) -> list[dict]:
    """A row per search variant: seconds, seconds per trial, epochs trained, best val_accuracy."""
    transform_dir = transformed(settings.data_dir, settings.train_images, 64).output
    rows, baseline = [], None
    for variant, overrides in VARIANTS.items():
        config = load_config(overrides=["tracking.enabled=false", "train.tensorboard_images=0",
                                        f"tune.max_trials={TRIALS}", f"tune.epochs={EPOCHS}", *overrides])
        output = tempfile.mkdtemp(prefix="cvpipe-bench-tune-")
        try:
            tuning = run_tuning(transform_dir, output, config).tuning
        finally:
            shutil.rmtree(output, ignore_errors=True)
        seconds = tuning["wall_seconds"]
        baseline = baseline or seconds
        rows.append({"benchmark": "tune", "variant": f"{variant}: {TRIALS} trials of at most {EPOCHS} epochs",
                     "seconds": seconds, "seconds_per_trial": round(seconds / len(tuning["trials"]), 1),
                     "trained_epochs": tuning["trained_epochs"], "best_val_accuracy": tuning["best"]["objective"],
                     "vs_baseline": round(baseline / seconds, 2),
                     "note": f"{seconds / len(tuning['trials']):.0f} s per trial, {tuning['trained_epochs']} epochs, "
                             f"best val_accuracy {tuning['best']['objective']:.3f}; baseline: random search, every "
                             "trial to the end (> 1: time saved)"})
        logger.info("tune %s: %.0f s, %d epochs, best val_accuracy %.4f", variant, seconds,
                    tuning["trained_epochs"], tuning["best"]["objective"])
    return rows

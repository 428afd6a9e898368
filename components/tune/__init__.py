"""Hyperparameter search over the train stage (KerasTuner here; the same space as a Katib Experiment)."""

from __future__ import annotations

import argparse

from components.config import TUNE_ALGORITHMS, TuneConfig, meaning_of

# Flags of the tune command lines that set one tune.* value each: (type, choices).
_FLAGS = {"algorithm": (str, TUNE_ALGORITHMS), "max_trials": (int, None), "max_minutes": (float, None),
          "epochs": (int, None), "seed": (int, None)}


def add_tune_flags(parser: argparse.ArgumentParser, *names: str) -> None:
    """Adds `--algorithm`, `--max-trials`, ... (those of `names`; all by default), one tune.* value each."""
    for name in names or _FLAGS:
        kind, choices = _FLAGS[name]
        parser.add_argument("--" + name.replace("_", "-"), type=kind, choices=choices,
                            help=f"{meaning_of(TuneConfig, name)} (tune.{name}, default: {getattr(TuneConfig(), name)})")


def tune_overrides(args: argparse.Namespace) -> list[str]:
    """The `tune.key=value` overrides of the tune flags given on the command line."""
    return [f"tune.{name}={getattr(args, name)}" for name in _FLAGS if getattr(args, name, None) is not None]

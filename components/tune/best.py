"""A finished search as the train stage takes it: the best trial's hyperparameters and the record that
training.json keeps of the search. Needs no TensorFlow."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

from components.artifacts import MANIFEST_FILE, TUNING_FILE
from components.config import Config
from components.files import exists, read_json
from components.tune.space import overlay, with_overlay


@dataclass(frozen=True)
class BestTrial:
    """The best trial of the search in `output`: its hyperparameters (by `train.` key) and the search."""

    output: str
    tuning: dict[str, Any]

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return self.tuning["best"]["hyperparameters"]

    def apply(self, config: Config) -> Config:
        """`config` with the best trial's hyperparameters set (what best_config.yaml sets)."""
        return with_overlay(config, overlay(self.hyperparameters))

    def record(self) -> dict[str, Any]:
        """What training.json keeps of the search (`tuning`): where, how, and the best trial's result."""
        best = self.tuning["best"]
        return {"output": self.output, "algorithm": self.tuning["algorithm"], "objective": self.tuning["objective"],
                "trials": len(self.tuning["trials"]), "best_trial": best["trial"], "best_objective": best["objective"],
                "hyperparameters": best["hyperparameters"]}


def read_best_trial(output: str) -> BestTrial:
    """The best trial of the finished search in `output` (a tune output); a ValueError otherwise."""
    output = output.rstrip("/")
    if not exists(posixpath.join(output, MANIFEST_FILE)):
        raise ValueError(f"{output} is not a finished search (no {MANIFEST_FILE}): run or resume "
                         "`python -m components.tune` there first")
    return BestTrial(output, read_json(posixpath.join(output, TUNING_FILE)))

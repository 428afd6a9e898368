"""The search space (`tune.space`) as KerasTuner hyperparameters, and a trial's values as configuration.

A hyperparameter is named by its `train.` key (`learning_rate`, `augment.flip`), so a trial's values
are a configuration overlay as they are: `{"train": {"learning_rate": ..., "augment": {"flip": ...}}}`.
Needs no TensorFlow; KerasTuner is imported by `hyperparameters` only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from components.config import Config, HyperParameter, config_from_dict, train_key_type

if TYPE_CHECKING:
    import keras_tuner

# KerasTuner's own values in a trial (hyperband's bracket, round and epochs): not hyperparameters of ours.
TUNER_PREFIX = "tuner/"


def hyperparameters(space: Sequence[HyperParameter]) -> "keras_tuner.HyperParameters":
    """The KerasTuner search space of `space`; choices keep the type of their `train.` key."""
    import keras_tuner

    search = keras_tuner.HyperParameters()
    for parameter in space:
        kind = train_key_type(parameter.key)
        if parameter.values:
            values = [kind(v) for v in parameter.values]
            if kind is bool:
                search.Choice(parameter.key, values, ordered=False)
            else:
                search.Choice(parameter.key, values)
        elif kind is int:
            search.Int(parameter.key, int(parameter.min), int(parameter.max), step=int(parameter.step or 1),
                       sampling="log" if parameter.log else "linear")
        else:
            search.Float(parameter.key, parameter.min, parameter.max, step=parameter.step or None,
                         sampling="log" if parameter.log else "linear")
    return search


def searched_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's hyperparameter values by `train.` key without KerasTuner's own (`tuner/...`), as plain
    Python values of each key's type (the oracles give numpy scalars, and switches as 0 and 1)."""
    return {key: train_key_type(key)(value.item() if hasattr(value, "item") else value)
            for key, value in values.items() if not key.startswith(TUNER_PREFIX)}


def overlay(values: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration overlay that sets `values` (by `train.` key): `components.train --config` takes it."""
    train: dict[str, Any] = {}
    for key, value in searched_values(values).items():
        node = train
        *sections, name = key.split(".")
        for part in sections:
            node = node.setdefault(part, {})
        node[name] = value
    return {"train": train}


def with_overlay(config: Config, layer: Mapping[str, Any]) -> Config:
    """`config` with the sections of the overlay `layer` merged in (its values win), validated."""
    merged = config.to_dict()

    def merge(into: dict[str, Any], values: Mapping[str, Any]) -> None:
        for key, value in values.items():
            if isinstance(value, Mapping) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    merge(merged, layer)
    return config_from_dict(merged, source="the tuning overlay")

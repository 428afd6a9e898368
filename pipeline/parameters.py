"""The pipeline's typed run parameters and how they set the one configuration object.

A run's configuration is the `config` parameter (the whole `Config` as a mapping; its default is
the configuration the pipeline was compiled with) with the typed parameters below set on top.
The typed parameters default to the same compiled configuration and always win: change those keys
through the typed parameters, the others through `config`. An empty string leaves the value alone.
"""

from __future__ import annotations

from typing import Any, Mapping

from components.config import Config, config_from_dict

# Typed pipeline parameter -> the configuration key it sets.
CONFIG_KEYS = {
    "model_name": "tracking.registered_model",  # also the served model's name
    "image_size": "transform.image_size",
    "model": "train.model",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "learning_rate": "train.learning_rate",
    "tune": "tune.enabled",
    "tune_trials": "tune.max_trials",
    "tune_algorithm": "tune.algorithm",
    "min_accuracy": "evaluate.min_accuracy",
    "min_class_recall": "evaluate.min_class_recall",
    "max_accuracy_drop": "evaluate.max_accuracy_drop",
    "beam_runner": "beam.runner",
    "beam_options": "beam.options",
    "mlflow_tracking_uri": "tracking.tracking_uri",
}
# What each cached step reads: it gets only these sections, so a change elsewhere (say, epochs)
# leaves its cache key, and so its output, alone.
STEP_SECTIONS = {
    "ingest": ("ingest", "beam"),
    "transform": ("transform", "beam"),
}


def parameter_defaults(config: Config) -> dict[str, Any]:
    """The typed parameters' values in `config`: the defaults of a pipeline compiled with it."""
    values = config.to_dict()
    defaults = {}
    for name, key in CONFIG_KEYS.items():
        section, field = key.split(".")
        defaults[name] = values[section][field]
    return defaults


def resolve_config(config: Mapping[str, Any], parameters: Mapping[str, Any]) -> Config:
    """`config` with the typed `parameters` set on it, validated (an empty string keeps the config's value)."""
    data = {section: dict(values) for section, values in config.items()}
    for name, value in parameters.items():
        if value == "":
            continue
        section, field = CONFIG_KEYS[name].split(".")
        data.setdefault(section, {})[field] = value
    return config_from_dict(data, source="the pipeline's config and parameters")


def step_config(config: Config, step: str) -> dict[str, Any]:
    """The sections of `config` that the cached `step` reads."""
    values = config.to_dict()
    return {section: values[section] for section in STEP_SECTIONS[step]}

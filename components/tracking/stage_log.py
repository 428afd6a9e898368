"""What a stage output logs to MLflow: the `StageLog` each stage's `tracked_outputs` returns.

Every stage declares its own next to its code (`components/<stage>/tracked.py`); `stages` finds it
by the stage's name and `runs.log_stage` logs it. The helpers here read an output's JSON files and
turn them into metrics.
"""

from __future__ import annotations

import logging
import math
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import tensorflow as tf

from components.files import read_json

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageLog:
    """What MLflow keeps of one stage output, besides its manifest (always an artifact) and the
    params of its manifest's config.

    `metrics` are logged at step 0 and `history` at the step of each entry (a training epoch);
    names are dotted paths, made valid MLflow keys when logged. `documents` are JSON artifacts made
    from the output's files, by artifact name. `artifacts` name the output's files and directories
    to copy; those missing are skipped. (The run's tag `cvpipe.dataset_fingerprint` is the
    manifest's `dataset_fingerprint`.) `children` are stage outputs inside this one, each logged as
    a child run of this run: (stage, output, run name), e.g. a search's trials. `parent_metrics` and
    `parent_tags` also go on the pipeline run, when the stage runs in one.
    """

    metrics: Mapping[str, float] = field(default_factory=dict)
    history: Sequence[tuple[int, Mapping[str, float]]] = ()
    documents: Mapping[str, Any] = field(default_factory=dict)
    artifacts: Sequence[str] = ()
    children: Sequence[tuple[str, str, str]] = ()
    parent_metrics: Mapping[str, float] = field(default_factory=dict)
    parent_tags: Mapping[str, str] = field(default_factory=dict)


def read_optional(output: str, name: str) -> Any:
    """The JSON file `name` of the output, or None (logged at debug level) when it is missing."""
    path = posixpath.join(output, name)
    if not tf.io.gfile.exists(path):
        logger.debug("%s has no %s: not tracked", output, name)
        return None
    return read_json(path)


def numbers(data: Any, prefix: str = "") -> dict[str, float]:
    """Every finite number in nested dicts and lists, keyed by its dotted path (list items by index);
    booleans, strings and None are skipped."""
    if isinstance(data, Mapping):
        items = data.items()
    elif isinstance(data, (list, tuple)):
        items = enumerate(data)
    elif isinstance(data, (int, float)) and not isinstance(data, bool) and math.isfinite(data):
        return {prefix.rstrip("."): float(data)}
    else:
        return {}
    found: dict[str, float] = {}
    for name, value in items:
        found.update(numbers(value, f"{prefix}{name}."))
    return found

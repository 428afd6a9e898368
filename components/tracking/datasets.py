"""The splits of an ingest output as MLflow dataset inputs: what the UI's Datasets column shows.

A dataset is one split of one ingest output: named after the split, its digest the start of the
ingest output's fingerprint (`Manifest.dataset_fingerprint`, whole in its profile), its context
what the run used it for. MLflow keeps one record per name and digest in an experiment: the first
run to log it (the ingest stage's, in a pipeline run) gives its source.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from components.config import SPLITS
from components.manifest import Manifest

# How a run uses each split, as MLflow's context tag says it.
SPLIT_CONTEXTS = {"train": "training", "valid": "validation", "test": "test"}
# MLflow's SQL stores keep at most 36 characters of a digest: a fingerprint's first 12 identify it.
DIGEST_LENGTH = 12


def split_inputs(fingerprint: str, source: str, splits: Sequence[str] = SPLITS) -> list[DatasetInput]:
    """Dataset inputs of `splits` of the ingest output with this `fingerprint`, read from `source`."""
    scheme = source.partition("://")[0] if "://" in source else "local"
    return [DatasetInput(Dataset(split, fingerprint[:DIGEST_LENGTH], scheme, json.dumps({"uri": source}),
                                 profile=json.dumps({"fingerprint": fingerprint})),
                         [InputTag(MLFLOW_DATASET_CONTEXT, SPLIT_CONTEXTS[split])])
            for split in splits]


def stage_inputs(stage: str, manifest: Manifest) -> list[DatasetInput]:
    """The splits a stage output was made from, as dataset inputs: all of them for ingest (read from
    its images), the training and validation splits for train, the evaluated ones for evaluate; none
    for the other stages."""
    fingerprint = manifest.dataset_fingerprint
    if stage == "ingest":
        return split_inputs(fingerprint, manifest.inputs["images"])
    if stage == "train" and fingerprint:
        return split_inputs(fingerprint, manifest.inputs["transform"], ("train", "valid"))
    if stage == "evaluate" and fingerprint:
        return split_inputs(fingerprint, manifest.inputs["data"], manifest.config["evaluate"]["splits"])
    return []

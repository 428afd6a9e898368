"""What MLflow keeps of an ingest output: its statistics, a summary of its rejects, its labels."""

from __future__ import annotations

import json
import logging
import posixpath

import tensorflow as tf

from components.artifacts import LABELS_FILE, REJECTS_FILE, STATS_FILE
from components.manifest import Manifest
from components.tracking.stage_log import StageLog, numbers, read_optional

logger = logging.getLogger(__name__)

# Rejects kept in full in the summary; the others are only counted.
REJECT_EXAMPLES = 20
REJECTS_SUMMARY = "rejects_summary.json"


def tracked_outputs(output: str, manifest: Manifest) -> StageLog:
    """The numbers of stats.json and the reject counts by reason (`rejects.<reason>`) as metrics, a
    summary of rejects.jsonl (counts, total, the first rejects) as a document."""
    metrics = numbers(read_optional(output, STATS_FILE))
    documents = {}
    rejects_path = posixpath.join(output, REJECTS_FILE)
    if tf.io.gfile.exists(rejects_path):
        counts: dict[str, int] = {}
        examples = []
        with tf.io.gfile.GFile(rejects_path) as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    counts[row["reason"]] = counts.get(row["reason"], 0) + 1
                    if len(examples) < REJECT_EXAMPLES:
                        examples.append(row)
        metrics.update(numbers(counts, "rejects."))
        documents[REJECTS_SUMMARY] = {"counts": counts, "total": sum(counts.values()), "first": examples}
    else:
        logger.debug("%s has no %s: not tracked", output, REJECTS_FILE)
    return StageLog(metrics, documents=documents, artifacts=(STATS_FILE, LABELS_FILE))

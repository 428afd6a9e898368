"""The batch scoring Beam pipeline:

  inputs (fixed batches of URIs, or ingest shards) -> read + check (TF-free) -> RunInference
  (in process or an endpoint; batches pre-cut, keyed by URI) -> rows -> prediction files by a hash
  of the URI, sorted -> _shards.json;  every input that cannot be scored -> errors.jsonl

Only URIs cross the first shuffle for file inputs (the bytes are read after it); ingest shards are
read whole and their batches spread over the workers.
"""

from __future__ import annotations

import json
import posixpath

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler, RunInference

from components.artifacts import ERRORS_FILE
from components.batch_predict.handlers import keyed_prebatched
from components.batch_predict.inputs import ERRORS, Listing, ReadImages, ReadRecords, plan_batches
from components.batch_predict.outputs import ToRows, WriteShard, errors_jsonl, shard_of
from components.config import BatchPredictConfig

SHARDS_SUMMARY_FILE = "_shards.json"


def build_pipeline(pipeline: beam.Pipeline, listing: Listing, handler: ModelHandler, settings: BatchPredictConfig,
                   *, element_size: int, fmt: str, num_shards: int, labels: list[str] | None, model_name: str,
                   model_version: str, output_dir: str) -> None:
    """Adds the scoring transforms to `pipeline`; writes prediction files, errors.jsonl and
    _shards.json into `output_dir`. `element_size` images go to one RunInference call."""
    if listing.kind == "records":
        read = (pipeline
                | "RecordFiles" >> beam.Create(listing.record_files)
                | "SpreadFiles" >> beam.Reshuffle()
                | "ReadRecords" >> beam.ParDo(ReadRecords(settings, element_size)).with_outputs(ERRORS, main="batches"))
        batches = read.batches | "SpreadBatches" >> beam.Reshuffle()
    else:
        read = (pipeline
                | "Batches" >> beam.Create(plan_batches(listing.uris, element_size))
                | "SpreadBatches" >> beam.Reshuffle()
                | "ReadImages" >> beam.ParDo(ReadImages(settings, element_size)).with_outputs(ERRORS, main="batches"))
        batches = read.batches
    scored = (batches
              | "RunInference" >> RunInference(keyed_prebatched(handler))
              | "Rows" >> beam.ParDo(ToRows(labels, model_name, model_version, ERRORS))
              .with_outputs(ERRORS, main="rows"))
    summaries = (
        (scored.rows | "KeyByShard" >> beam.Map(lambda row, n: (shard_of(row["uri"], n), row), num_shards),
         pipeline | "EveryShard" >> beam.Create([(index, None) for index in range(num_shards)]))
        | "WithEmptyShards" >> beam.Flatten()
        | "GroupByShard" >> beam.GroupByKey()
        | "WriteShards" >> beam.ParDo(WriteShard(output_dir, fmt, num_shards, settings.probabilities))
    )
    (summaries
     | "AllShards" >> beam.combiners.ToList()
     | "WriteShardSummary" >> beam.Map(
         lambda shards, path: _write_text(path, json.dumps(sorted(shards, key=lambda s: s["file"]))),
         posixpath.join(output_dir, SHARDS_SUMMARY_FILE)))
    ((pipeline | "ListingErrors" >> beam.Create(listing.errors), read[ERRORS], scored[ERRORS])
     | "AllErrors" >> beam.Flatten()
     | "CollectErrors" >> beam.combiners.ToList()
     | "WriteErrors" >> beam.Map(lambda errors, path: _write_text(path, errors_jsonl(errors)),
                                 posixpath.join(output_dir, ERRORS_FILE)))


def _write_text(path: str, text: str) -> None:
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(text.encode("utf-8"))

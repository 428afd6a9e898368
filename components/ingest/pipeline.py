"""The ingest Beam pipeline: listed inputs -> checked images -> deduplicated -> split -> shards.

Only small metadata crosses the shuffles: the shard writer reads each kept file again (the
check stage decodes every image; writing needs only its bytes). Shards are written by one DoFn
per (split, shard), records sorted by content hash, so the same inputs and config give
byte-identical output on any runner. Workers do not import TensorFlow: files go through Beam's
FileSystems (local, gs://, ...) and records through components.records.

The pipeline also writes `rejects.jsonl` and `_shards.json` (a summary per shard) for the
driver to reconcile; it reads the images from `_inputs.jsonl`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import posixpath
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator

import apache_beam as beam
import google_crc32c
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import AsDict, AsList, TaggedOutput
from apache_beam.transforms.window import BoundedWindow
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from components import records
from components.artifacts import REJECTS_FILE
from components.config import IngestConfig
from components.image_inputs import read_file
from components.ingest.images import MAX_FILE_BYTES_SETTING, CheckedImage, check_image, stored_bytes
from components.ingest.lookahead import Lookahead, thread_count
from components.ingest.sources import InputImage
from components.ingest.splits import assign_split, shard_index
from components.rejections import ImageRejected, Reason, Rejection

logger = logging.getLogger(__name__)

REJECTED = "rejected"
INPUTS_FILE = "_inputs.jsonl"
SHARDS_SUMMARY_FILE = "_shards.json"
# Protobuf and TFRecord framing per record, for sizing shards before they are written.
_RECORD_OVERHEAD_BYTES = 300
_PROGRESS_EVERY = 500


@dataclass(frozen=True)
class Candidate:
    """An image that passed the checks."""

    image: InputImage
    checked: CheckedImage


@dataclass(frozen=True)
class Accepted:
    """A candidate kept after deduplication, with its split."""

    split: str
    candidate: Candidate


@dataclass(frozen=True)
class ShardSummary:
    file: str
    split: str
    records: int
    bytes: int
    source_bytes: int
    # sha256 over the (content hash, label) lines of the shard's records, in order.
    digest: str
    classes: dict[str, int]


class _ThreadedDoFn(beam.DoFn):
    """A DoFn whose work runs on `ingest.threads` threads; outputs leave in input order, in the input's window.

    Subclasses `_submit` each element from `process` and say what `_work` does on a thread and what
    `_outputs` its result gives.
    """

    _AHEAD_PER_THREAD = 1  # elements in flight or finished per thread, waiting for their turn

    def __init__(self, config: IngestConfig):
        self._config = config
        self._pool: Lookahead | None = None

    def setup(self) -> None:
        self._threads = thread_count(self._config.threads)

    def start_bundle(self) -> None:
        # A queue per bundle: nothing of a failed bundle is carried into the next one.
        self._pool = Lookahead(self._work, self._threads, self._AHEAD_PER_THREAD * self._threads, type(self).__name__)

    def finish_bundle(self) -> Iterator:
        for item, result in self._pool.drain():
            yield from self._outputs(item, result)
        self._pool.close()

    def teardown(self) -> None:
        if self._pool is not None:  # after a failed bundle, its threads are still up
            self._pool.close()

    def _submit(self, value: object, timestamp: Timestamp, window: BoundedWindow) -> Iterator:
        for item, result in self._pool.submit(WindowedValue(value, timestamp, (window,))):
            yield from self._outputs(item, result)

    def _work(self, item: WindowedValue) -> object:
        raise NotImplementedError

    def _outputs(self, item: WindowedValue, result: object) -> Iterator[WindowedValue | TaggedOutput]:
        raise NotImplementedError


class CheckImages(_ThreadedDoFn):
    """Reads and checks each input on a thread; emits (sha256, Candidate) or a tagged Rejection."""

    _AHEAD_PER_THREAD = 4

    def setup(self) -> None:
        super().setup()
        self._seen = 0
        self._checked_ok = beam.metrics.Metrics.counter("ingest", "checked_ok")  # rejections are rare

    def process(self, image: InputImage, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam) -> Iterator:
        yield from self._submit(image, timestamp, window)

    def _work(self, item: WindowedValue) -> CheckedImage | ImageRejected:
        try:
            data = read_file(item.value.uri, self._config.max_file_bytes, MAX_FILE_BYTES_SETTING)
            return check_image(data, self._config)
        except ImageRejected as rejected:  # a fresh one: the raised one's traceback holds the file and image
            return ImageRejected(rejected.reason, rejected.detail)

    def _outputs(self, item: WindowedValue, result: CheckedImage | ImageRejected) -> Iterator:
        image: InputImage = item.value
        self._seen += 1
        if self._seen % _PROGRESS_EVERY == 0:
            logger.info("checked %d images in this worker", self._seen)
        if isinstance(result, ImageRejected):
            beam.metrics.Metrics.counter("ingest", f"rejected_{result.reason.value}").inc()
            yield TaggedOutput(REJECTED, item.with_value(Rejection(image.uri, result.reason, result.detail)))
        else:
            self._checked_ok.inc()
            yield item.with_value((result.sha256, Candidate(image, result)))


class ResolveDuplicates(beam.DoFn):
    """Keeps one copy of identical content (the smallest URI) and assigns its split.

    Copies with another label are a conflict: every copy is rejected, since no label can be trusted.
    """

    def __init__(self, config: IngestConfig):
        self._splits = config.splits

    def process(self, element: tuple[str, Iterable[Candidate]]) -> Iterator:
        sha, group = element
        candidates = sorted(group, key=lambda c: c.image.uri)
        if len({c.image.label for c in candidates}) > 1:
            detail = f"same content (sha256 {sha[:12]}) labelled " + "; ".join(
                f"{c.image.label!r} at {c.image.uri}" for c in candidates
            )
            for c in candidates:
                yield TaggedOutput(REJECTED, Rejection(c.image.uri, Reason.LABEL_CONFLICT, detail))
            return
        kept, *copies = candidates
        for copy in copies:
            yield TaggedOutput(
                REJECTED, Rejection(copy.image.uri, Reason.DUPLICATE, f"same content as {kept.image.uri} (kept)")
            )
        yield Accepted(kept.image.split or assign_split(sha, self._splits), kept)


class WriteShard(_ThreadedDoFn):
    """Writes each shard file on a thread, records sorted by content hash; emits its ShardSummary.

    A file whose bytes changed since it was checked (size or CRC32C) is rejected instead of written.
    """

    def __init__(self, directory: str, config: IngestConfig, label_ids: dict[str, int]):
        super().__init__(config)
        self._directory = directory
        self._label_ids = label_ids

    def process(self, element: tuple[tuple[str, int], Iterable[Accepted]], num_shards: dict[str, int],
                timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam) -> Iterator:
        (split, index), group = element
        shard = (records.shard_name(split, index, num_shards[split]), split,
                 sorted(group, key=lambda a: a.candidate.checked.sha256))
        yield from self._submit(shard, timestamp, window)

    def _work(self, item: WindowedValue) -> tuple[ShardSummary, list[Rejection]]:
        name, split, ordered = item.value
        digest, classes, written, source_bytes, rejections = hashlib.sha256(), {}, 0, 0, []
        with FileSystems.create(posixpath.join(self._directory, name),
                                compression_type=CompressionTypes.UNCOMPRESSED) as raw, \
                records.TFRecordWriter(raw, self._config.compression_level) as writer:
            for accepted in ordered:
                image, checked = accepted.candidate.image, accepted.candidate.checked
                try:
                    data = read_file(image.uri, self._config.max_file_bytes, MAX_FILE_BYTES_SETTING)
                    if len(data) != checked.source_bytes or google_crc32c.value(data) != checked.crc32c:
                        raise ImageRejected(Reason.CHANGED, "content changed after it was checked; run ingest again")
                except ImageRejected as rejected:
                    rejections.append(Rejection(image.uri, rejected.reason, rejected.detail))
                    continue
                record = serialize_record(image, checked, stored_bytes(data, checked), self._label_ids[image.label])
                writer.write(record)
                written += len(record)
                source_bytes += checked.source_bytes
                digest.update(f"{checked.sha256}\t{image.label}\n".encode())
                classes[image.label] = classes.get(image.label, 0) + 1
        count = sum(classes.values())
        logger.info("wrote %s (%d records)", name, count)
        summary = ShardSummary(name, split, count, written, source_bytes, digest.hexdigest(), dict(sorted(classes.items())))
        return summary, rejections

    def _outputs(self, item: WindowedValue, result: tuple[ShardSummary, list[Rejection]]) -> Iterator:
        summary, rejections = result
        yield item.with_value(summary)
        for rejection in rejections:
            yield TaggedOutput(REJECTED, item.with_value(rejection))


def build_pipeline(
    pipeline: beam.Pipeline,
    images: list[InputImage],
    rejections: list[Rejection],
    label_ids: dict[str, int],
    config: IngestConfig,
    output_dir: str,
    spread_checks: bool = True,
) -> None:
    """Adds the ingest transforms to `pipeline`, writing shards and reports into `output_dir`.

    The images travel to the workers as a file, `INPUTS_FILE` in `output_dir`, written here: a
    Create of every image would embed them in the job graph (Dataflow caps it at 10 MB) and
    pickle them all before the first check. The file is read as one bundle; `spread_checks`
    reshuffles its images over the workers, which a single worker can do without: it then checks
    each image as it is read.
    """
    inputs_file = posixpath.join(output_dir, INPUTS_FILE)
    _write_text(inputs_file, "".join(image.to_json() + "\n" for image in images))
    listed = (
        pipeline
        | "ListingFile" >> beam.Create([inputs_file])
        | "ListedImages" >> beam.FlatMap(_read_listing)  # not ReadFromText: a path is no glob pattern
    )
    if spread_checks:
        listed |= "SpreadImages" >> beam.Reshuffle()
    checked = listed | "CheckImages" >> beam.ParDo(CheckImages(config)).with_outputs(REJECTED, main="ok")
    resolved = (
        checked.ok
        | "GroupByContent" >> beam.GroupByKey()
        | "ResolveDuplicates" >> beam.ParDo(ResolveDuplicates(config)).with_outputs(REJECTED, main="kept")
    )
    kept = resolved.kept
    num_shards = (
        kept
        | "RecordBytes" >> beam.Map(lambda a: (a.split, a.candidate.checked.source_bytes + _RECORD_OVERHEAD_BYTES))
        | "SplitBytes" >> beam.CombinePerKey(sum)
        | "NumShards" >> beam.MapTuple(lambda split, size: (split, max(1, math.ceil(size / config.target_shard_bytes))))
    )
    written = (
        kept
        | "AssignShard" >> beam.Map(
            lambda a, n: ((a.split, shard_index(a.candidate.checked.sha256, n[a.split])), a), AsDict(num_shards))
        | "GroupByShard" >> beam.GroupByKey()
        | "WriteShards" >> beam.ParDo(WriteShard(output_dir, config, label_ids), AsDict(num_shards))
        .with_outputs(REJECTED, main="summaries")
    )
    rejected = (checked[REJECTED], resolved[REJECTED], written[REJECTED]) | "AllRejections" >> beam.Flatten()
    (
        pipeline
        | "ReportsDirectory" >> beam.Create([output_dir])
        | "WriteReports" >> beam.Map(_write_reports, AsList(written.summaries), AsList(rejected), rejections)
    )


def serialize_record(image: InputImage, checked: CheckedImage, encoded: bytes, label_id: int) -> bytes:
    """The tf.train.Example of one accepted image (schema in components.records)."""
    return records.encode_example({
        "image/encoded": encoded,
        "image/format": checked.stored_format,
        "image/height": checked.height,
        "image/width": checked.width,
        "image/channels": checked.channels,
        "image/sha256": checked.sha256,
        "image/source": image.uri,
        "image/original_format": checked.original_format,
        "label/text": image.label,
        "label/id": label_id,
    })


def _write_reports(directory: str, summaries: list[ShardSummary], rejected: list[Rejection],
                   listing_rejections: list[Rejection]) -> None:
    """Writes SHARDS_SUMMARY_FILE and REJECTS_FILE (those of the listing included) into `directory`."""
    _write_text(posixpath.join(directory, SHARDS_SUMMARY_FILE),
                json.dumps([asdict(s) for s in sorted(summaries, key=lambda s: s.file)]))
    _write_text(posixpath.join(directory, REJECTS_FILE),
                "".join(r.to_json() + "\n" for r in sorted([*listing_rejections, *rejected])))


def _read_listing(path: str) -> Iterator[InputImage]:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        for line in io.TextIOWrapper(f, encoding="utf-8"):
            yield InputImage.from_json(line)


def _write_text(path: str, text: str) -> None:
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(text.encode())

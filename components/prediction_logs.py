"""Prediction logs: TF Serving's `PredictionLog` records in TFRecord files, as the project's server writes them
(`logging_config` in models.config) and `components.monitor` reads them.

A writer appends to `<filename_prefix>-<start time>-<host>-<pid>-<seq>.tfrecord.part` and renames it to
`... .tfrecord` once it holds `max_file_bytes` or the writer closes; it keeps at most `max_files` closed
files per prefix (the oldest go). Records are queued and written by the writer's own thread: `log()`
never waits on the disk (a full queue drops the record and counts it). Each record is written whole with
one `write()`, so a killed process leaves complete records and at most one torn last record in its
`.part` file; readers stop at the first record whose length or CRC does not check and count it, and the
next writer with the same prefix on the same host cuts such files (of processes no longer running) after
their last complete record and closes them.
Needs no TensorFlow (the TFRecord framing is written here: length, masked CRC-32C, data, masked CRC-32C).
"""

from __future__ import annotations

import glob
import logging
import os
import queue
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Union

import google_crc32c

logger = logging.getLogger(__name__)

FINAL_SUFFIX = ".tfrecord"
PART_SUFFIX = ".tfrecord.part"
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_FILES = 1000
DEFAULT_QUEUE_RECORDS = 10_000
_MASK_DELTA = 0xA282EAD8
_HOST = socket.gethostname().replace("/", "_") or "localhost"
Record = Union[bytes, Callable[[], bytes]]  # a serialized record, or what serializes it on the writer's thread


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(record: bytes) -> bytes:
    """One TFRecord: what tf.io.TFRecordWriter writes for `record`."""
    length = struct.pack("<Q", len(record))
    return length + struct.pack("<I", _masked_crc(length)) + record + struct.pack("<I", _masked_crc(record))


@dataclass
class FileReading:
    """What reading one log file found: its complete records, and where a torn record (if any) begins."""

    path: str
    records: int = 0
    complete_bytes: int = 0
    torn: bool = False


def read_records(path: str, reading: FileReading | None = None) -> Iterator[bytes]:
    """The complete records of a TFRecord file, up to the first torn or corrupt one (noted in `reading`)."""
    reading = reading or FileReading(path)
    with open(path, "rb") as f:
        data = f.read()
    offset = 0
    while offset < len(data):
        header = data[offset:offset + 12]
        if len(header) < 12:
            reading.torn = True
            return
        length = header[:8]
        (size,) = struct.unpack("<Q", length)
        if struct.unpack("<I", header[8:])[0] != _masked_crc(length) or offset + 16 + size > len(data):
            reading.torn = True
            return
        record = data[offset + 12:offset + 12 + size]
        if struct.unpack("<I", data[offset + 12 + size:offset + 16 + size])[0] != _masked_crc(record):
            reading.torn = True
            return
        offset += 16 + size
        reading.records += 1
        reading.complete_bytes = offset
        yield record


def log_files(patterns: Iterable[str]) -> list[str]:
    """The log files (closed and in progress) that `patterns` (globs, files or directories) name, sorted."""
    found: set[str] = set()
    for pattern in patterns:
        if os.path.isdir(pattern):
            pattern = os.path.join(pattern, "**", "*")
        found |= {p for p in glob.glob(pattern, recursive=True)
                  if os.path.isfile(p) and p.endswith((FINAL_SUFFIX, PART_SUFFIX))}
    return sorted(found)


def _left_by_a_dead_writer(path: str, prefix: str) -> bool:
    """Whether the `.part` file `path` is this host's and its process is gone (or is this one, restarted with
    the same pid, as in a container): no live writer appends to it."""
    # <prefix>-<stamp>-<host>-<pid>-<seq>.tfrecord.part; the host name may hold dashes.
    parts = path[len(prefix) + 1:].removesuffix(PART_SUFFIX).split("-", 1)[-1].rsplit("-", 2)
    if len(parts) != 3:
        return False
    host, pid, _ = parts
    if host != _HOST or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def recover(prefix: str) -> list[str]:
    """Closes the `.part` files a killed writer on this host left at `prefix`: cut after the last complete
    record and renamed (removed when they hold none). Returns the closed files."""
    closed = []
    for path in sorted(glob.glob(glob.escape(prefix) + "-*" + PART_SUFFIX)):
        if not _left_by_a_dead_writer(path, prefix):
            continue
        reading = FileReading(path)
        for _ in read_records(path, reading):
            pass
        if reading.records == 0:
            os.remove(path)
            continue
        if reading.torn:
            os.truncate(path, reading.complete_bytes)
        final = path.removesuffix(PART_SUFFIX) + FINAL_SUFFIX
        os.replace(path, final)
        closed.append(final)
        logger.warning("Recovered %d prediction log records from %s%s", reading.records, final,
                       " (a torn last record cut off)" if reading.torn else "")
    return closed


@dataclass
class WriterStats:
    written: int = 0
    dropped: int = 0  # the queue was full: the request went on, its record did not
    failed: int = 0  # the record could not be serialized, or the disk refused it (logged)
    files_closed: int = 0


class PredictionLogWriter:
    """Appends serialized records to rotated, size-bounded TFRecord files under `prefix`, from its own thread."""

    def __init__(self, prefix: str, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, max_files: int = DEFAULT_MAX_FILES,
                 queue_records: int = DEFAULT_QUEUE_RECORDS):
        if max_file_bytes < 1 or max_files < 1:
            raise ValueError("a prediction log needs max_file_bytes >= 1 and max_files >= 1")
        self.prefix, self.max_file_bytes, self.max_files = prefix, max_file_bytes, max_files
        self.stats = WriterStats()
        directory = os.path.dirname(prefix) or "."
        os.makedirs(directory, exist_ok=True)
        recover(prefix)
        self._queue: queue.Queue[Record | None] = queue.Queue(maxsize=queue_records)
        self._fd: int | None = None
        self._path = ""
        self._bytes = 0
        self._sequence = 0
        self._disk_error = False
        self._thread = threading.Thread(target=self._run, name=f"prediction-log {os.path.basename(prefix)}",
                                        daemon=True)
        self._thread.start()

    def log(self, record: Record) -> bool:
        """Queues one record (bytes, or a function the writer's thread calls for them); False (and counted)
        when the queue is full. Never blocks."""
        try:
            self._queue.put_nowait(record)
            return True
        except queue.Full:
            self.stats.dropped += 1
            return False

    def close(self, timeout: float = 30.0) -> None:
        """Writes what is queued, closes the current file and stops the thread."""
        self._queue.put(None)
        self._thread.join(timeout)

    def flush(self, timeout: float = 30.0) -> None:
        """Waits until every record queued so far is written (to the OS: a killed process keeps them)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)

    def _run(self) -> None:
        while True:
            record = self._queue.get()
            try:
                if record is None:
                    self._close_file()
                    return
                data = record if isinstance(record, bytes) else self._serialize(record)
                if data is not None:
                    self._write(frame(data))
            finally:
                self._queue.task_done()

    def _serialize(self, record: Callable[[], bytes]) -> bytes | None:
        try:
            return record()
        except Exception as e:  # a record that cannot be built is counted, never the end of logging
            self.stats.failed += 1
            logger.error("Cannot serialize a prediction log record for %s: %s", self.prefix, e, exc_info=True)
            return None

    def _write(self, data: bytes) -> None:
        try:
            if self._fd is None:
                self._open_file()
            written = os.write(self._fd, data)
            if written != len(data):  # the disk is full: cut the partial record, keep the file readable
                os.ftruncate(self._fd, self._bytes)
                raise OSError(f"short write ({written} of {len(data)} bytes)")
        except OSError as e:
            self.stats.failed += 1
            if not self._disk_error:
                logger.error("Cannot write prediction log %s: %s (records are counted as failed until a write "
                             "succeeds)", self._path, e)
            self._disk_error = True
            return
        self._disk_error = False
        self.stats.written += 1
        self._bytes += len(data)
        if self._bytes >= self.max_file_bytes:
            self._close_file()

    def _open_file(self) -> None:
        self._sequence += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self._path = f"{self.prefix}-{stamp}-{_HOST}-{os.getpid()}-{self._sequence:05d}{PART_SUFFIX}"
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._bytes = 0

    def _close_file(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        final = self._path.removesuffix(PART_SUFFIX) + FINAL_SUFFIX
        try:
            os.fsync(fd)
            os.close(fd)
            os.replace(self._path, final)
        except OSError as e:  # left as .part: the next writer on this host recovers it
            logger.error("Cannot close prediction log %s: %s", self._path, e)
            return
        self.stats.files_closed += 1
        closed = sorted(glob.glob(glob.escape(self.prefix) + "-*" + FINAL_SUFFIX))
        for old in closed[:max(0, len(closed) - self.max_files)]:
            os.remove(old)

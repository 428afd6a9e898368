"""How every cvpipe process logs: one format on stderr, quiet libraries, Beam workers' own lines relayed, and
TensorFlow's C++ start-up lines dropped.

TensorFlow's native libraries log through absl before absl's logging is initialised, straight to file
descriptor 2, and ignore TF_CPP_MIN_LOG_LEVEL for those lines (`WARNING: All log messages before
absl::InitializeLog() ...`, `cudart_stub.cc:31] Could not find cuda drivers ...`, then `failed call to
cuInit` when the devices are first listed). `quiet_tensorflow_start()` makes the process's first import of
TensorFlow (whoever imports it) run with file descriptor 2 captured (and, on a machine without a CUDA driver,
list the GPUs then), drops the known start-up lines and writes everything else back: real errors are kept.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
import tempfile
import types
from datetime import datetime
from typing import Sequence

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Rfc3339Formatter(logging.Formatter):
    """Times as RFC 3339 in local time with its offset (2026-12-04T13:20:00.123+01:00): unambiguous across
    machines, and what log readers parse (Katib's metrics collector takes a line's time from it)."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds")

# The DirectRunner relays each worker log line as one INFO line of protobuf text on this logger.
_RELAY_LOGGER = "apache_beam.runners.portability.local_job_service"
_RELAYED = re.compile(r'message: "(?P<message>(?:[^"\\]|\\.)*)".*?log_location: "(?P<location>[^"]*)"', re.S)

# TensorFlow's start-up lines on a machine without a GPU: none says anything the user can act on.
_TF_START_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|cudart_stub\.cc:\d+\] Could not find cuda drivers"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation_placer\.cc:\d+\] computation placer already registered"
    r"|oneDNN custom operations are on"
    r"|cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized"
    r"|To enable the following instructions: .* rebuild TensorFlow"
    r"|TF-TRT Warning: Could not find TensorRT"
)
# Only noise when the line above said there is no CUDA driver at all (on a GPU machine it is a real error).
_NO_DRIVER = re.compile(r"Could not find cuda drivers")
_CUINIT_FAILED = re.compile(r"cuda_platform\.cc:\d+\] failed call to cuInit")


class StartNoiseFilter:
    """Tells TensorFlow's start-up lines from the rest of a stream of lines (a process's stderr, or a log
    that collects several processes' output): cuInit's failure is noise only once a line said there is no
    CUDA driver at all."""

    def __init__(self, no_driver: bool = False):
        self.no_driver = no_driver

    def keep(self, line: str) -> bool:
        """Whether `line` is not start-up noise."""
        self.no_driver = self.no_driver or bool(_NO_DRIVER.search(line))
        return not _TF_START_NOISE.search(line) and not (self.no_driver and _CUINIT_FAILED.search(line))


class _WorkerLogFilter(logging.Filter):
    """Keeps cvpipe's own worker lines (unwrapped) and worker errors; drops Beam's chatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        relayed = _RELAYED.search(record.getMessage())
        if relayed is None:
            return record.levelno >= logging.WARNING
        if "/components/" not in relayed["location"] and record.levelno < logging.ERROR:
            return False
        record.msg, record.args = "[worker] " + relayed["message"], ()
        return True


class _TracebackFilter(logging.Filter):
    """--verbose: an error logged while an exception is handled carries that exception's traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and not record.exc_info and sys.exc_info()[1] is not None:
            record.exc_info = sys.exc_info()
        return True


def configure_logging(level: str | None = None, *, verbose: bool = False) -> None:
    """Logs to stderr at `level` (default: DEBUG when `verbose`, else $CVPIPE_LOG_LEVEL or INFO), Beam's own
    lines from WARNING, TensorFlow's start-up lines dropped; `verbose` adds tracebacks to logged errors."""
    default = "DEBUG" if verbose else os.environ.get("CVPIPE_LOG_LEVEL", "INFO")
    handler = logging.StreamHandler()
    handler.setFormatter(Rfc3339Formatter(LOG_FORMAT))
    logging.basicConfig(level=(level or default).upper(), handlers=[handler])
    quiet_tensorflow_start()
    for chatty in ("apache_beam", "absl", "tensorflow"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    relay = logging.getLogger(_RELAY_LOGGER)
    relay.setLevel(logging.INFO)
    relay.addFilter(_WorkerLogFilter())
    if verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_TracebackFilter())


def quiet_tensorflow_start() -> None:
    """Makes the process's first `import tensorflow` (wherever it happens) drop TensorFlow's start-up lines.

    Idempotent; does nothing once TensorFlow is loaded. Sets TF_CPP_MIN_LOG_LEVEL=2 (unless set) for the C++
    lines logged after start-up, and passes it on to subprocesses (Beam workers, pipeline steps).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowFinder())


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as usual, but runs its package's code with file descriptor 2 filtered."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: the package's own imports go the usual way
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_quietly(module: types.ModuleType) -> None:
            with _FilteredStderr() as captured:
                exec_module(module)
                if _NO_DRIVER.search(captured.text()):  # no GPU to initialise: cuInit logs its failure here, once
                    module.config.list_physical_devices("GPU")

        spec.loader.exec_module = exec_quietly  # type: ignore[method-assign]  # this spec's loader only
        return spec


class _FilteredStderr:
    """Captures file descriptor 2 in a temporary file; on exit writes back what is not start-up noise."""

    def __enter__(self) -> _FilteredStderr:
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._capture = tempfile.TemporaryFile()
        os.dup2(self._capture.fileno(), 2)
        return self

    def text(self) -> str:
        """What was written to file descriptor 2 so far."""
        sys.stderr.flush()
        return os.pread(self._capture.fileno(), os.fstat(self._capture.fileno()).st_size, 0).decode(errors="replace")

    def __exit__(self, *exc_info: object) -> None:
        text = self.text()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._capture.close()
        noise = StartNoiseFilter(no_driver=bool(_NO_DRIVER.search(text)))
        kept = [line for line in text.splitlines(keepends=True) if noise.keep(line)]
        if kept:
            sys.stderr.write("".join(kept))
            sys.stderr.flush()

"""The server's configuration files, read with `google.protobuf.text_format` into TF Serving's protos.

`--model_config_file` -> ModelServerConfig, `--batching_parameters_file` -> BatchingParameters,
`--monitoring_config_file` -> MonitoringConfig. Errors name the file and what is wrong in it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import tensorflow as tf
from google.protobuf import message, text_format
from tensorflow_serving.config import model_server_config_pb2

from serving.protos import BatchingParameters, MonitoringConfig

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # PrometheusExporter::kPrometheusPath
DEFAULT_BATCH_THREAD_POOL = "model_server_batch_threads"

M = TypeVar("M", bound=message.Message)


class ServerConfigError(ValueError):
    """A model server flag or configuration file (TF Serving's text protos) that cannot be used.

    Not cvpipe's own configuration: that is components.config.ConfigError.
    """


def read_text_proto(path: str, proto: M) -> M:
    """Parses the text-format protobuf file at `path` (any tf.io.gfile path) into `proto`."""
    kind = proto.DESCRIPTOR.full_name
    try:
        with tf.io.gfile.GFile(path) as f:
            text = f.read()
    except (OSError, tf.errors.OpError) as e:
        raise ServerConfigError(f"cannot read the {kind} file {path}: {e}") from e
    try:
        return text_format.Parse(text, proto)
    except text_format.ParseError as e:
        raise ServerConfigError(f"Invalid protobuf file: '{path}' is not a text-format {kind}: {e}") from e


def read_model_server_config(path: str) -> model_server_config_pb2.ModelServerConfig:
    """The models to serve, from a `--model_config_file`."""
    return read_text_proto(path, model_server_config_pb2.ModelServerConfig())


def single_model_config(name: str, base_path: str) -> model_server_config_pb2.ModelServerConfig:
    """The config `--model_name` and `--model_base_path` stand for (as main.cc builds it)."""
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.add(name=name, base_path=base_path, model_platform="tensorflow")
    return config


@dataclass(frozen=True)
class BatchingOptions:
    """Validated batching parameters; the defaults are TF Serving's when a field is not set."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = os.cpu_count() or 1
    allowed_batch_sizes: tuple[int, ...] = ()
    thread_pool_name: str = DEFAULT_BATCH_THREAD_POOL


def batching_options(path: str = "") -> BatchingOptions:
    """The batching options of `--enable_batching`: from `path` when given, else the defaults."""
    if not path:
        return BatchingOptions()
    params = read_text_proto(path, BatchingParameters())
    defaults = BatchingOptions()
    values = {name: getattr(params, name).value if params.HasField(name) else getattr(defaults, name)
              for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads",
                           "thread_pool_name")}
    options = BatchingOptions(**values, allowed_batch_sizes=tuple(params.allowed_batch_sizes))
    problems = []
    for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
        if getattr(options, name) < 1:
            problems.append(f"{name} must be >= 1, got {getattr(options, name)}")
    if options.batch_timeout_micros < 0:
        problems.append(f"batch_timeout_micros must be >= 0, got {options.batch_timeout_micros}")
    sizes = options.allowed_batch_sizes
    if sizes and (any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] < 1):
        problems.append(f"allowed_batch_sizes must be positive and increasing, got {list(sizes)}")
    if sizes and sizes[-1] != options.max_batch_size:
        problems.append(f"the last allowed_batch_sizes entry must equal max_batch_size "
                        f"({options.max_batch_size}), got {sizes[-1]}")
    if params.pad_variable_length_inputs:
        problems.append("pad_variable_length_inputs is not supported by this server: remove it (requests whose "
                        "inputs differ in shape beyond the batch dimension are batched separately instead)")
    if problems:
        raise ServerConfigError(f"batching parameters file {path}: " + "; ".join(problems))
    return options


def prometheus_path(path: str = "") -> str | None:
    """The Prometheus metrics path a `--monitoring_config_file` enables, or None (metrics off)."""
    if not path:
        return None
    config = read_text_proto(path, MonitoringConfig())
    if not config.prometheus_config.enable:
        return None
    metrics_path = config.prometheus_config.path or DEFAULT_PROMETHEUS_PATH
    if not metrics_path.startswith("/"):
        raise ServerConfigError(f"monitoring config file {path}: prometheus_config.path must start with '/', "
                          f"got {metrics_path!r}")
    return metrics_path

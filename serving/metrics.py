"""Prometheus metrics in the text exposition format (version 0.0.4), without prometheus_client.

Names follow TF Serving's exporter (`/tensorflow/serving/request_count` is exported as
`:tensorflow:serving:request_count`; latencies in microseconds) with extra labels where useful:

  :tensorflow:serving:request_count{model_name,signature_name,API,entrypoint,status}   counter
  :tensorflow:serving:request_latency{model_name,API,entrypoint}                      histogram, us
  :tensorflow:serving:batching_session:processed_batch_size{model_name,signature_name} histogram
  :tensorflow:serving:batching_session:queuing_latency{model_name,signature_name}      histogram, us
  :tensorflow:serving:request_log_count{model_name,status_code}                        counter (sampled requests)
  :cvpipe:serving:model_version_available{model_name,version}                         gauge (1 per version)
"""

from __future__ import annotations

import bisect
import math
import threading
from typing import Callable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS_US = tuple(float(f"{10 * 1.8 ** i:.4g}") for i in range(33))  # TF Serving's request latency buckets
BATCH_SIZE_BUCKETS = tuple(2 ** i for i in range(14))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    pairs = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    """A counter with labels."""

    def __init__(self, name: str, help_text: str, labels: Sequence[str]):
        self.name, self.help, self.label_names = name, help_text, tuple(labels)
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, labels: Sequence[str], amount: float = 1.0) -> None:
        key = tuple(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"] + [
            f"{self.name}{_labels(self.label_names, key)} {_number(value)}" for key, value in items]


class Histogram:
    """A histogram with labels and fixed upper bounds."""

    def __init__(self, name: str, help_text: str, labels: Sequence[str], buckets: Sequence[float]):
        self.name, self.help, self.label_names = name, help_text, tuple(labels)
        self.buckets = tuple(buckets)
        self._series: dict[tuple[str, ...], list] = {}  # labels -> [counts per bucket + inf, sum, count]
        self._lock = threading.Lock()

    def observe(self, labels: Sequence[str], value: float) -> None:
        key = tuple(labels)
        with self._lock:
            series = self._series.setdefault(key, [[0] * (len(self.buckets) + 1), 0.0, 0])
            series[0][bisect.bisect_left(self.buckets, value)] += 1
            series[1] += value
            series[2] += 1

    def render(self) -> list[str]:
        with self._lock:
            items = sorted((key, ([*series[0]], series[1], series[2])) for key, series in self._series.items())
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, (counts, total, count) in items:
            cumulative = 0
            for bound, n in zip((*self.buckets, math.inf), counts):
                cumulative += n
                le = 'le="' + _number(bound) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {cumulative}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_number(total)}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {count}")
        return lines


class ServingMetrics:
    """The server's metrics; `render()` is the body of the Prometheus endpoint."""

    def __init__(self, available_versions: Callable[[], list[tuple[str, int]]]):
        self._available_versions = available_versions
        self.request_count = Counter(
            ":tensorflow:serving:request_count", "The total number of requests.",
            ("model_name", "signature_name", "API", "entrypoint", "status"))
        self.request_latency = Histogram(
            ":tensorflow:serving:request_latency", "Distribution of wall time (in microseconds) for requests.",
            ("model_name", "API", "entrypoint"), LATENCY_BUCKETS_US)
        self.batch_size = Histogram(
            ":tensorflow:serving:batching_session:processed_batch_size",
            "Distribution of the sizes of the batches run (after padding to allowed_batch_sizes).",
            ("model_name", "signature_name"), BATCH_SIZE_BUCKETS)
        self.queuing_latency = Histogram(
            ":tensorflow:serving:batching_session:queuing_latency",
            "Distribution of the time (in microseconds) requests wait in a batching queue.",
            ("model_name", "signature_name"), LATENCY_BUCKETS_US)
        self.request_log_count = Counter(
            ":tensorflow:serving:request_log_count",
            "The total number of requests logged from the model server sliced down by model_name and status code.",
            ("model_name", "status_code"))

    def observe_request(self, model: str, signature: str, api: str, entrypoint: str, status: str,
                        seconds: float) -> None:
        """Counts one request and its latency (status: the canonical code name, `OK` on success)."""
        self.request_count.inc((model, signature, api, entrypoint, status))
        self.request_latency.observe((model, api, entrypoint), seconds * 1e6)

    def observe_batch(self, model: str, signature: str, size: int, waits: list[float]) -> None:
        """Records one batch run and how long its requests waited."""
        self.batch_size.observe((model, signature), size)
        for wait in waits:
            self.queuing_latency.observe((model, signature), wait * 1e6)

    def observe_log(self, model: str, status: str) -> None:
        """Counts one sampled request: queued for its prediction log (`OK`) or dropped (`RESOURCE_EXHAUSTED`)."""
        self.request_log_count.inc((model, status))

    def render(self) -> str:
        name = ":cvpipe:serving:model_version_available"
        lines = [f"# HELP {name} 1 for every model version that is AVAILABLE.", f"# TYPE {name} gauge"]
        lines += [f"{name}{_labels(('model_name', 'version'), (model, version))} 1"
                  for model, version in self._available_versions()]
        for metric in (self.request_count, self.request_latency, self.batch_size, self.queuing_latency,
                       self.request_log_count):
            lines += metric.render()
        return "\n".join(lines) + "\n"

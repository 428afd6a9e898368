"""Whether to run the pipeline now: the retrain policy behind `python -m pipeline retrain`.

The facts: the pipeline runs of the data source recorded in MLflow (`read_history`), the source's
current content fingerprint, the creation time of the registered model's champion and, optionally,
a live metric read from a JSON document. `decide` turns them into a `Decision` (a pure function);
`evaluate_policy` gathers them and calls it. Nothing here starts a run or writes anywhere, so cron
or a recurring run may call it as often as it likes.

The rules, each reported whether it fires or not:
- No finished pipeline run of the source: retrain.
- New data since the newest FINISHED run (the baseline, what the newest model was trained on):
  at least `min_new_images` new inputs or `min_new_fraction` more inputs. A single fingerprint
  cannot tell added images from edited ones, so when the count grew these thresholds decide; the
  same or a smaller count with another fingerprint means images were replaced, relabelled or
  removed, and that always retrains.
- Model age: the time since the newer of the champion's creation and the newest FINISHED run's
  start reaches `max_model_age_days`. Counting from the run too means that a retrain whose model
  was not blessed (the champion unchanged, or still none) resets the clock: the rule fires again
  `max_model_age_days` after that attempt, not at every cron tick. Without a champion and
  without a finished run, the first rule applies.
- Live metric `live_metric` below `live_metric_min` (higher is better). An unreadable source is
  reported ("unavailable") and triggers nothing. A metric that stays low retrains once per
  cool-down.

What holds a triggered run back (idempotency):
- A run in progress (RUNNING or SCHEDULED) that started less than `running_timeout_hours` ago.
  An older one is reported as abandoned and ignored.
- The cool-down: the newest run of any status started less than `min_hours_between_runs` ago, so
  a failing pipeline is retried at most once per cool-down.
The run a decision triggers is recorded before it is started (`reserve_run`), so a second call
sees it at once, not only when the pipeline's first step runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import logging
import math
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from components.config import Config
from components.ingest.fingerprint import SourceFingerprint, fingerprint_source

logger = logging.getLogger(__name__)

# MLflow statuses of a run that has not ended.
ACTIVE_STATUSES = ("RUNNING", "SCHEDULED")
# Pipeline runs of a source read from MLflow, newest first: enough to find the newest finished one.
HISTORY_RUNS = 200
LIVE_METRIC_TIMEOUT_SECONDS = 10.0


class LiveMetricError(Exception):
    """The live metric cannot be read: the message says where and why."""


@dataclass(frozen=True)
class RetrainPolicy:
    """When to retrain; 0 (or "" for the live metric) switches a rule off."""

    min_new_images: int = 0
    min_new_fraction: float = 0.1
    max_model_age_days: float = 30.0
    live_metric: str = ""  # a key of the live metric document
    live_metric_min: float | None = None  # retrain below this
    live_metric_source: str = ""  # a tf.io.gfile path or an http(s):// URL of a JSON object
    min_hours_between_runs: float = 1.0
    running_timeout_hours: float = 24.0  # a run still active after this long is abandoned

    def __post_init__(self) -> None:
        for name in ("min_new_images", "min_new_fraction", "max_model_age_days", "min_hours_between_runs",
                     "running_timeout_hours"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"retrain policy: {name} must be a finite number >= 0, got {value}")
        if self.live_metric and (self.live_metric_min is None or not self.live_metric_source):
            raise ValueError(f"retrain policy: the live metric {self.live_metric!r} needs a minimum and a source")


@dataclass(frozen=True)
class PipelineRunRecord:
    """One pipeline run of a data source as MLflow recorded it; the data facts are None when untagged."""

    run_id: str
    status: str  # RUNNING, SCHEDULED, FINISHED, FAILED or KILLED
    started: datetime  # timezone-aware
    data_fingerprint: str | None
    data_inputs: int | None


@dataclass(frozen=True)
class Decision:
    """Whether to retrain now, and why: every rule checked is in one of the three lists."""

    retrain: bool
    triggers: tuple[str, ...]  # rules that call for a run
    holds: tuple[str, ...]  # what stops a run now (a run in progress, the cool-down)
    notes: tuple[str, ...]  # rules checked that do not call for a run, and what was ignored
    data: SourceFingerprint  # the data source as it was when deciding

    @property
    def reasons(self) -> list[str]:
        return [*self.triggers, *self.holds, *self.notes]

    def __str__(self) -> str:
        if self.retrain:
            verdict = "yes"
        elif self.triggers:
            verdict = "no, on hold"
        else:
            verdict = "no, nothing calls for it"
        lines = [f"Retrain now: {verdict}."]
        lines += [f"  [trigger] {reason}" for reason in self.triggers]
        lines += [f"  [hold] {reason}" for reason in self.holds]
        lines += [f"  [-] {reason}" for reason in self.notes]
        return "\n".join(lines)


def decide(policy: RetrainPolicy, *, now: datetime, current: SourceFingerprint,
           history: Sequence[PipelineRunRecord], champion_created: datetime | None,
           live_value: float | None, live_error: str = "") -> Decision:
    """Applies `policy` to the facts (see the module docstring); `history` may be in any order,
    `live_error` says why `live_value` is None."""
    if now.tzinfo is None:
        raise ValueError("decide: `now` must be timezone-aware")
    holds, notes = _holds(policy, now, history)
    finished = [run for run in history if run.status == "FINISHED"]
    baseline = max(finished, key=lambda run: run.started) if finished else None
    findings = _data_findings(policy, current, history, baseline)
    findings += _age_findings(policy, now, champion_created, baseline)
    findings += _live_findings(policy, live_value, live_error)
    off = [rule for rule, on in (("new-image count", policy.min_new_images > 0),
                                 ("new-image fraction", policy.min_new_fraction > 0),
                                 ("model age", policy.max_model_age_days > 0),
                                 ("live metric", bool(policy.live_metric))) if not on]
    if off:
        notes.append(f"Rules switched off: {', '.join(off)}.")
    triggers = tuple(text for fires, text in findings if fires)
    notes = [text for fires, text in findings if not fires] + notes
    return Decision(bool(triggers) and not holds, triggers, tuple(holds), tuple(notes), current)


def _holds(policy: RetrainPolicy, now: datetime, history: Sequence[PipelineRunRecord]) -> tuple[list[str], list[str]]:
    """What stops a run now, and the runs and cool-down checked."""
    holds, notes = [], []
    timeout = timedelta(hours=policy.running_timeout_hours)
    for run in history:
        if run.status in ACTIVE_STATUSES:
            active = now - run.started
            if active <= timeout:
                holds.append(f"Run {run.run_id} has been {run.status} for {_duration(active)}: "
                             "not starting another.")
            else:
                notes.append(f"Run {run.run_id} has been {run.status} for {_duration(active)} "
                             f"(> {policy.running_timeout_hours:g} h): ignored as abandoned.")
    if history:
        newest = max(history, key=lambda run: run.started)
        since = now - newest.started
        cool_down = f"the cool-down of {policy.min_hours_between_runs:g} h"
        text = f"The newest run {newest.run_id} ({newest.status}) started {_duration(since)} ago"
        if since < timedelta(hours=policy.min_hours_between_runs):
            holds.append(f"{text}, within {cool_down}.")
        else:
            notes.append(f"{text}, past {cool_down}.")
    return holds, notes


def _data_findings(policy: RetrainPolicy, current: SourceFingerprint, history: Sequence[PipelineRunRecord],
                   baseline: PipelineRunRecord | None) -> list[tuple[bool, str]]:
    """(fires, reason) of the no-finished-run and new-data rules."""
    if baseline is None:
        statuses = Counter(run.status for run in history)
        earlier = f" (runs: {', '.join(f'{n} {status}' for status, n in sorted(statuses.items()))})" if history else ""
        return [(True, f"No pipeline run of {current.source} has finished yet{earlier}.")]
    since = f"since run {baseline.run_id}"
    if baseline.data_fingerprint is None or baseline.data_inputs is None:
        return [(True, f"The newest finished run {baseline.run_id} recorded no data fingerprint or input count: "
                       "what it trained on is unknown.")]
    if current.sha256 == baseline.data_fingerprint:
        return [(False, f"The data is unchanged {since} ({current.inputs} inputs, "
                        f"fingerprint {current.sha256[:12]}).")]
    new = current.inputs - baseline.data_inputs
    counts = f"{baseline.data_inputs} -> {current.inputs}"
    if new <= 0:
        fewer = "the same number of inputs" if new == 0 else f"{-new} fewer inputs"
        return [(True, f"The data changed {since}: {fewer} ({counts}) with another fingerprint "
                       f"({baseline.data_fingerprint[:12]} -> {current.sha256[:12]}), so images were "
                       "replaced, relabelled or removed.")]
    findings = []
    if policy.min_new_images > 0:
        fires = new >= policy.min_new_images
        findings.append((fires, f"{new} new inputs {since} ({counts}, {new} {'>=' if fires else '<'} "
                                f"{policy.min_new_images} new inputs)."))
    if policy.min_new_fraction > 0:
        fraction = new / baseline.data_inputs if baseline.data_inputs else math.inf
        fires = fraction >= policy.min_new_fraction
        findings.append((fires, f"{new} new inputs {since} ({counts}, +{_percent(fraction)} "
                                f"{'>=' if fires else '<'} {_percent(policy.min_new_fraction)})."))
    return findings or [(False, f"{new} new inputs {since} ({counts}); the new-data rules are off.")]


def _age_findings(policy: RetrainPolicy, now: datetime, champion_created: datetime | None,
                  baseline: PipelineRunRecord | None) -> list[tuple[bool, str]]:
    """(fires, reason) of the model-age rule: the clock starts at the newer of the champion and the
    newest finished run (an unblessed retrain resets it)."""
    limit = policy.max_model_age_days
    if limit <= 0 or (champion_created is None and baseline is None):
        return []
    if baseline is None or (champion_created is not None and champion_created >= baseline.started):
        age = now - champion_created
        subject = f"The champion model is {_days(age)} old"
    else:
        age = now - baseline.started
        champion = ("No champion model exists" if champion_created is None
                    else f"The champion model is {_days(now - champion_created)} old")
        subject = (f"{champion}, but run {baseline.run_id} retrained {_days(age)} ago without a blessed model: "
                   f"the model age counts from that run, {_days(age)}")
    fires = age >= timedelta(days=limit)
    return [(fires, f"{subject} ({'>=' if fires else '<'} {limit:g} days).")]


def _live_findings(policy: RetrainPolicy, value: float | None, error: str) -> list[tuple[bool, str]]:
    """(fires, reason) of the live-metric rule; an unavailable metric never fires."""
    if not policy.live_metric:
        return []
    name, minimum = policy.live_metric, policy.live_metric_min
    if value is None:
        return [(False, f"Live metric {name} unavailable ({error or 'not read'}): it triggers nothing.")]
    fires = value < minimum
    return [(fires, f"Live metric {name} = {value:g} {'<' if fires else '>='} {minimum:g} "
                    f"(from {policy.live_metric_source}).")]


def _duration(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    if abs(hours) < 1:
        return f"{hours * 60:.0f} min"
    return f"{hours:.1f} h" if abs(hours) < 48 else _days(delta)


def _days(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 86400:.1f} days"


def _percent(fraction: float) -> str:
    return "inf %" if math.isinf(fraction) else f"{fraction * 100:.2f}".rstrip("0").rstrip(".") + " %"


def read_history(config: Config, data_source: str) -> list[PipelineRunRecord]:
    """The pipeline runs of `data_source` (up to a trailing slash), newest first."""
    # imports mlflow and TensorFlow: only when the facts are read
    from components.tracking.runs import DATA_FINGERPRINT_TAG, DATA_INPUTS_TAG, pipeline_runs

    runs = pipeline_runs(config, data_source=data_source, max_results=HISTORY_RUNS)
    records = []
    for run in runs:
        tags = run.data.tags
        inputs = tags.get(DATA_INPUTS_TAG)
        if inputs is not None and not inputs.isdecimal():
            logger.warning("Pipeline run %s has a malformed %s tag %r: ignored", run.info.run_id,
                           DATA_INPUTS_TAG, inputs)
            inputs = None
        records.append(PipelineRunRecord(
            run_id=run.info.run_id,
            status=run.info.status,
            started=datetime.fromtimestamp(run.info.start_time / 1000, timezone.utc),
            data_fingerprint=tags.get(DATA_FINGERPRINT_TAG),
            data_inputs=None if inputs is None else int(inputs),
        ))
    logger.info("Found %d pipeline runs of %s in MLflow", len(records), data_source)
    return records


def read_champion_created(config: Config) -> datetime | None:
    """When the registered model's champion version was created; None without one."""
    from components.tracking.registry import champion_version

    champion = champion_version(config)
    return None if champion is None else datetime.fromtimestamp(champion.creation_timestamp / 1000, timezone.utc)


def read_live_metric(name: str, source: str, timeout: float = LIVE_METRIC_TIMEOUT_SECONDS) -> float:
    """The number under `name` in the JSON object at `source` (tf.io.gfile path or http(s):// URL).

    Raises LiveMetricError when it cannot be read, is not a JSON object or has no finite number there.
    """
    # urllib's errors are OSErrors (a broken response an HTTPException), JSON and UTF-8 errors ValueErrors.
    try:
        document = json.loads(_read_text(source, timeout))
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise LiveMetricError(f"cannot read {source}: {e}") from e
    if not isinstance(document, dict):
        raise LiveMetricError(f"{source} is not a JSON object")
    if name not in document:
        raise LiveMetricError(f"{source} has no {name!r} (it has {sorted(document)})")
    value = document[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LiveMetricError(f"{name!r} in {source} is not a finite number: {value!r}")
    return float(value)


def _read_text(source: str, timeout: float) -> str:
    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source, timeout=timeout) as response:
            return response.read().decode()
    import tensorflow as tf

    try:
        with tf.io.gfile.GFile(source, "rb") as f:
            return f.read().decode()
    except tf.errors.OpError as e:
        raise OSError(e.message) from e


def evaluate_policy(policy: RetrainPolicy, config: Config, data_source: str, *,
                    now: datetime | None = None) -> Decision:
    """Reads the facts (MLflow history, the source's fingerprint, the champion, the live metric)
    and decides; `now` defaults to the current time."""
    if not config.tracking.enabled:
        raise ValueError("the retrain policy reads the pipeline runs from MLflow, but tracking.enabled is false")
    now = now or datetime.now(timezone.utc)
    history = read_history(config, data_source)
    current = fingerprint_source(data_source)
    champion_created = read_champion_created(config)
    live_value, live_error = None, ""
    if policy.live_metric:
        try:
            live_value = read_live_metric(policy.live_metric, policy.live_metric_source)
        except LiveMetricError as e:
            live_error = str(e)
            logger.warning("Live metric %s unavailable: %s", policy.live_metric, e)
    return decide(policy, now=now, current=current, history=history, champion_created=champion_created,
                  live_value=live_value, live_error=live_error)


def reserve_run(decision: Decision, config: Config) -> str:
    """Records the pipeline run `decision` triggers as RUNNING in MLflow, before it starts; the run's
    start step adopts it (the pipeline parameter `mlflow_run_id`). Returns its id."""
    from components.tracking.runs import reserve_pipeline_run

    tags = {"cvpipe.trigger": "retrain", "cvpipe.retrain_reasons": "; ".join(decision.triggers)}
    return reserve_pipeline_run(config, decision.data, tags=tags)


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds one flag per `RetrainPolicy` field (`--min-new-images` ...), defaulting to the policy's defaults."""
    defaults = RetrainPolicy()
    count, number = _non_negative(int), _non_negative(float)
    group = parser.add_argument_group("retrain policy", "0 (or an empty metric name) switches a rule off")
    group.add_argument("--min-new-images", metavar="N", type=count, default=defaults.min_new_images,
                       help="retrain on at least this many new inputs since the last finished run (default: off)")
    group.add_argument("--min-new-fraction", metavar="FRACTION", type=number, default=defaults.min_new_fraction,
                       help="retrain when the inputs grew by this fraction (default: %(default)s)")
    group.add_argument("--max-model-age-days", metavar="DAYS", type=number, default=defaults.max_model_age_days,
                       help="retrain when the newer of the champion and the last finished run is this old "
                            "(default: %(default)s)")
    group.add_argument("--live-metric", metavar="NAME", default=defaults.live_metric,
                       help="retrain when this key of the live metric document is below --live-metric-min")
    group.add_argument("--live-metric-min", metavar="VALUE", type=float, default=defaults.live_metric_min,
                       help="the live metric's minimum (higher is better)")
    group.add_argument("--live-metric-source", metavar="PATH|URL", default=defaults.live_metric_source,
                       help="JSON object holding the live metric: a tf.io.gfile path or an http(s):// URL")
    group.add_argument("--min-hours-between-runs", metavar="HOURS", type=number,
                       default=defaults.min_hours_between_runs,
                       help="cool-down: no run within this many hours of the last run's start (default: %(default)s)")
    group.add_argument("--running-timeout-hours", metavar="HOURS", type=number,
                       default=defaults.running_timeout_hours,
                       help="a run active for longer is treated as abandoned (default: %(default)s)")


def policy_from_args(args: argparse.Namespace) -> RetrainPolicy:
    """The policy of the flags `add_policy_arguments` added; raises ValueError for an inconsistent one
    (a live metric without its minimum or source)."""
    return RetrainPolicy(**{field.name: getattr(args, field.name) for field in dataclasses.fields(RetrainPolicy)})


def _non_negative(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse

"""Katib (kubeflow.org/v1beta1): what its admission webhook and suggestion services would refuse in an
Experiment, how its controller fills a trial's template, and what its StdOut metrics collector reads from
a trial's log. Ported from kubeflow/katib (pkg/webhook/v1beta1/experiment/validator, the hyperopt, skopt
and hyperband suggestion services' ValidateAlgorithmSettings, the medianstop service, and
pkg/metricscollector/v1beta1/file-metricscollector's text parser), so a check here fails where Katib would."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

PARAMETER_TYPES = {"int", "double", "discrete", "categorical"}
DISTRIBUTIONS = {"uniform", "logUniform", "normal", "logNormal"}
OBJECTIVE_TYPES = {"maximize", "minimize"}
METRIC_STRATEGIES = {"min", "max", "latest"}
COLLECTOR_KINDS = {"StdOut", "File", "TensorFlowEvent", "PrometheusMetric", "Custom", "None"}
# Algorithms of Katib's default suggestion services and the settings each accepts (None: not checked).
ALGORITHM_SETTINGS = {
    "random": {"random_state"},
    "tpe": {"gamma", "prior_weight", "n_EI_candidates", "random_state"},
    "bayesianoptimization": {"base_estimator", "n_initial_points", "acq_func", "acq_optimizer", "random_state"},
    "hyperband": None, "grid": None, "cmaes": None, "sobol": None, "multivariate-tpe": None,
}
EARLY_STOPPING_SETTINGS = {"medianstop": {"min_trials_required", "start_step"}}
_META_REFERENCE = re.compile(r"\$\{trialSpec\.(.+?)\}")
_PLACEHOLDER = re.compile(r"\$\{trialParameters\..+?\}")
_RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def experiment_problems(experiment: dict) -> list[str]:
    """What Katib would refuse in `experiment` (at admission, or when its first trials are made)."""
    spec = experiment.get("spec", {})
    problems = [*_objective_problems(spec), *_algorithm_problems(spec), *_parameter_problems(spec),
                *_trial_template_problems(spec)]
    for key in ("maxTrialCount", "parallelTrialCount"):
        if key in spec and spec[key] <= 0:
            problems.append(f"spec.{key} must be greater than 0")
    if spec.get("maxFailedTrialCount", 0) < 0:
        problems.append("spec.maxFailedTrialCount must not be negative")
    collector = spec.get("metricsCollectorSpec", {})
    kind = collector.get("collector", {}).get("kind", "StdOut")
    if kind not in COLLECTOR_KINDS:
        problems.append(f"metricsCollectorSpec.collector.kind {kind!r} is not one of {sorted(COLLECTOR_KINDS)}")
    for pattern in collector.get("source", {}).get("filter", {}).get("metricsFormat", []):
        try:
            groups = re.compile(pattern).groups
        except re.error as e:
            problems.append(f"metricsFormat {pattern!r}: {e}")
            continue
        if groups < 2:
            problems.append(f"metricsFormat {pattern!r} must capture a name and a value (2 groups)")
    return problems


def _objective_problems(spec: dict) -> list[str]:
    objective = spec.get("objective")
    if not objective:
        return ["spec.objective must be specified"]
    problems = []
    if objective.get("type") not in OBJECTIVE_TYPES:
        problems.append(f"spec.objective.type {objective.get('type')!r} is not maximize or minimize")
    name = objective.get("objectiveMetricName")
    additional = objective.get("additionalMetricNames", [])
    if not name:
        problems.append("spec.objective.objectiveMetricName must be specified")
    if name in additional:
        problems.append(f"spec.objective.additionalMetricNames repeats the objective {name!r}")
    for strategy in objective.get("metricStrategies", []):
        if strategy.get("name") not in {name, *additional}:
            problems.append(f"metricStrategies {strategy.get('name')!r} is not the objective or an additional metric")
        if strategy.get("value") not in METRIC_STRATEGIES:
            problems.append(f"metricStrategies {strategy.get('name')!r}: {strategy.get('value')!r} is not min, max "
                            "or latest")
    return problems


def _settings(spec: dict | None) -> dict[str, str]:
    return {s["name"]: s["value"] for s in (spec or {}).get("algorithmSettings", [])}


def _algorithm_problems(spec: dict) -> list[str]:
    algorithm = spec.get("algorithm", {})
    name = algorithm.get("algorithmName")
    if name not in ALGORITHM_SETTINGS:
        return [f"spec.algorithm.algorithmName {name!r} is not one of {sorted(ALGORITHM_SETTINGS)}"]
    settings = _settings(algorithm)
    allowed = ALGORITHM_SETTINGS[name]
    problems = [f"unknown setting {key} for algorithm {name}" for key in settings if allowed is not None
                and key not in allowed]
    if "random_state" in settings and int(settings["random_state"]) < 0:
        problems.append("random_state should be great or equal than zero")
    if name == "hyperband":
        if "r_l" not in settings or "resource_name" not in settings:
            return [*problems, "r_l and resource_name must be set."]
        r_l = float(settings["r_l"])
        eta = int(float(settings.get("eta", 3))) or 3
        needed = int(math.ceil(eta ** int(math.log(r_l) / math.log(eta))))
        if spec.get("parallelTrialCount", 0) < needed:
            problems.append(f"parallelTrialCount must be not less than {needed}.")
        if settings["resource_name"] not in {p.get("name") for p in spec.get("parameters", [])}:
            problems.append("value of resource_name setting must be in parameters.")
    early = spec.get("earlyStopping")
    if early:
        known = EARLY_STOPPING_SETTINGS.get(early.get("algorithmName"))
        if known is None:
            problems.append(f"earlyStopping algorithm {early.get('algorithmName')!r} is not medianstop")
        else:
            values = _settings(early)
            problems += [f"unknown early stopping setting {key}" for key in values if key not in known]
            if int(values.get("min_trials_required", 3)) <= 0:
                problems.append("min_trials_required must be greater than zero (>0)")
            if int(values.get("start_step", 4)) < 1:
                problems.append("start_step must be greater or equal than one (>=1)")
    return problems


def _parameter_problems(spec: dict) -> list[str]:
    problems = []
    names = [p.get("name") for p in spec.get("parameters", [])]
    if len(set(names)) != len(names):
        problems.append(f"spec.parameters repeat a name: {names}")
    for i, parameter in enumerate(spec.get("parameters", [])):
        where = f"spec.parameters[{i}] ({parameter.get('name')})"
        kind, space = parameter.get("parameterType"), parameter.get("feasibleSpace") or {}
        if kind not in PARAMETER_TYPES:
            problems.append(f"{where}: parameterType {kind!r} is not supported")
        if space.get("distribution", "uniform") not in DISTRIBUTIONS:
            problems.append(f"{where}: distribution {space['distribution']!r} is not supported")
        if not space:
            problems.append(f"{where}: feasibleSpace must be specified")
        elif kind in ("int", "double"):
            if space.get("list"):
                problems.append(f"{where}: feasibleSpace.list is not supported for parameterType {kind}")
            if not space.get("min") or not space.get("max"):
                problems.append(f"{where}: feasibleSpace.max and .min must be specified for parameterType {kind}")
            elif float(space["min"]) > float(space["max"]):
                problems.append(f"{where}: min is above max")
            elif space.get("distribution") == "logUniform" and float(space["min"]) <= 0:
                problems.append(f"{where}: a logUniform range needs min > 0")
        elif kind in ("discrete", "categorical"):
            if any(key in space for key in ("min", "max", "step")):
                problems.append(f"{where}: feasibleSpace .max, .min and .step is not supported for {kind}")
            if not space.get("list"):
                problems.append(f"{where}: feasibleSpace.list must be specified for {kind}")
            if kind == "discrete":
                for value in space.get("list", []):
                    try:
                        float(value)
                    except ValueError:
                        problems.append(f"{where}: discrete value {value!r} is not a number")
    return problems


def _trial_template_problems(spec: dict) -> list[str]:
    template = spec.get("trialTemplate")
    if not template:
        return ["spec.trialTemplate must be specified"]
    problems = []
    if not template.get("successCondition") or not template.get("failureCondition"):
        problems.append("trialTemplate: successCondition and failureCondition must be specified")
    trial_spec = template.get("trialSpec")
    if trial_spec is None:
        return [*problems, "trialTemplate.trialSpec must be specified"]
    text = json.dumps(trial_spec)
    parameter_names = {p.get("name") for p in spec.get("parameters", [])}
    names, references = set(), set()
    for i, trial_parameter in enumerate(template.get("trialParameters", [])):
        name, reference = trial_parameter.get("name", ""), trial_parameter.get("reference", "")
        if not name or not reference or "{" in name or "}" in name:
            problems.append(f"trialParameters[{i}]: name and reference must be specified, name without {{ or }}")
            continue
        if name in names or reference in references:
            problems.append(f"trialParameters[{i}]: name {name!r} or reference {reference!r} is repeated")
        names.add(name)
        references.add(reference)
        if not _META_REFERENCE.fullmatch(reference) and reference not in parameter_names:
            problems.append(f"trialParameters[{i}]: reference {reference!r} does not exist in spec.parameters")
        placeholder = "${trialParameters.%s}" % name
        if placeholder not in text:
            problems.append(f"trialParameters[{i}]: {placeholder} is not in the trialSpec")
        text = text.replace(placeholder, "test-value")
    left = _PLACEHOLDER.findall(text)
    if left:
        problems.append(f"trialSpec placeholders without a trialParameter: {left}")
    unassigned = parameter_names - references
    if unassigned:  # the controller: every assignment must be a trial parameter
        problems.append(f"spec.parameters not in trialParameters (no trial could be made): {sorted(unassigned)}")
    metadata = trial_spec.get("metadata", {})
    if metadata.get("name") or metadata.get("namespace"):
        problems.append("metadata.name and metadata.namespace in spec.trialTemplate must be omitted")
    if not trial_spec.get("apiVersion") or not trial_spec.get("kind"):
        problems.append("APIVersion and Kind in spec.trialTemplate must be specified")
    containers = trial_spec.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
    primary = [c for c in containers if c.get("name") == template.get("primaryContainerName")]
    if not primary:
        problems.append(f"trialTemplate.primaryContainerName {template.get('primaryContainerName')!r} names no "
                        "container of the trialSpec")
    elif spec.get("metricsCollectorSpec", {}).get("collector", {}).get("kind", "StdOut") == "StdOut" \
            and not primary[0].get("command"):
        problems.append("the StdOut collector wraps the primary container's command: it must be set")
    return problems


def fill_trial(experiment: dict, trial_name: str, assignments: dict[str, str]) -> dict:
    """The trial's run spec as Katib's controller makes it: each trial parameter's placeholder replaced by its
    assignment (or by the trial's metadata for `${trialSpec.Name}` and kin)."""
    template = experiment["spec"]["trialTemplate"]
    text = json.dumps(template["trialSpec"])
    for trial_parameter in template["trialParameters"]:
        meta = _META_REFERENCE.fullmatch(trial_parameter["reference"])
        if meta:
            assert meta.group(1) == "Name", f"only ${{trialSpec.Name}} is filled here, not {meta.group(0)}"
            value = trial_name
        else:
            value = assignments[trial_parameter["reference"]]
        text = text.replace("${trialParameters.%s}" % trial_parameter["name"], value)
    return json.loads(text)


@dataclass(frozen=True)
class MetricLog:
    timestamp: str | None  # the line's leading RFC 3339 time; None where Katib records none
    name: str
    value: str


def collect_metrics(log: str, metric_names: list[str], filters: list[str]) -> list[MetricLog]:
    """The observations Katib's StdOut/File collector reads from a trial's log (text format): on each line that
    contains a metric's name, every match of each filter whose first group is one of `metric_names`."""
    patterns = [re.compile(f) for f in filters]
    found = []
    for line in log.split("\n"):
        if not any(name in line for name in metric_names):
            continue
        first = line.split(" ", 1)
        timestamp = first[0] if len(first) == 2 and _RFC3339.match(first[0]) else None
        for pattern in patterns:
            for match in pattern.finditer(line):
                name, value = match.group(1).strip(), match.group(2).strip()
                if name in metric_names:
                    found.append(MetricLog(timestamp, name, value))
    return found

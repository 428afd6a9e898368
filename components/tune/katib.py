"""The search of `components.tune` as a Katib `Experiment` (kubeflow.org/v1beta1), for clusters.

The same `tune.space`, objective, algorithm, trial budget and median stopping rule, with every trial a
batch/v1 Job that runs `python -m components.train` in the project image on the trial's values, for
`tune.epochs` epochs (Hyperband: the epochs Katib gives the trial), into `<output>/<trial name>`. The
train settings of the configuration that differ from the defaults go to every trial as `--set` flags,
so a trial trains as `components.tune` would train it here. Katib reads the metrics from the trial's
log (the StdOut collector): train logs `val_accuracy 0.9512, val_loss 0.1734` per epoch, which the
median stopping rule compares, and last those of the weights it kept, which are the trial's objective
(the strategy `latest`), as in `components.tune`.

Where Katib differs: `tune.max_minutes` has no counterpart (an Experiment has no time budget);
Katib's `bayesianoptimization` (scikit-optimize) samples every continuous float range log-uniformly
and integer ranges uniformly, so a linear float range needs a `step` (rendered as its grid) or another
algorithm; its Hyperband needs `parallelTrialCount` of at least `ceil(eta ** s_max)`.
Needs no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shlex
import sys
from typing import Any, Iterator, Mapping

import yaml

from components.config import TUNE_OBJECTIVES, Config, HyperParameter, TrainConfig, TuneConfig, train_key_type
from components.tune import add_tune_flags, tune_overrides

logger = logging.getLogger(__name__)

API_VERSION = "kubeflow.org/v1beta1"
# Katib's algorithm for each tune.algorithm.
KATIB_ALGORITHMS = {"random": "random", "bayesian": "bayesianoptimization", "hyperband": "hyperband"}
TRIAL_CONTAINER = "train"
# The Hyperband resource: a parameter Katib sets per bracket, which the trial trains as train.epochs.
EPOCHS_PARAMETER = "epochs"
# A trial's name (Katib's trial metadata), the directory of its train output.
TRIAL_NAME_PARAMETER = "trialName"
# The StdOut collector's pattern (RE2): the `name value` pairs of train's epoch and final lines
# ("... epoch 3: accuracy 0.9102, loss 0.2311, val_accuracy 0.9400, val_loss 0.1890 (80 images/s)").
METRICS_FORMAT = r"(?:: |, )([\w-]+) ([+-]?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)"
DEFAULT_NAME = "cvpipe-tune"
DEFAULT_TRANSFORMED = "/data/runs/demo/transform"
DEFAULT_OUTPUT = "/data/runs/demo/tune"
DEFAULT_PARALLEL_TRIALS = 3
# The in-cluster MLflow server (infra/mlflow) that every trial's train run is tracked in.
MLFLOW_URI = "http://mlflow.cvpipe.svc.cluster.local:5000"
DATA_CLAIM = "cvpipe-data"


def render_experiment(config: Config, *, transformed: str = DEFAULT_TRANSFORMED, output: str = DEFAULT_OUTPUT,
                      name: str = DEFAULT_NAME, namespace: str | None = None, image: str | None = None,
                      parallel_trials: int | None = None) -> dict[str, Any]:
    """The Katib Experiment of `config.tune` over a transform output at `transformed` (paths as the trial
    pods see them, on the claim `cvpipe-data` mounted at /data, or gs://). Raises ValueError for a search
    Katib cannot run as configured, naming the setting to change."""
    settings = config.tune
    algorithm = KATIB_ALGORITHMS[settings.algorithm]
    parameters = [_parameter(p, algorithm) for p in settings.space]
    if algorithm == "hyperband":
        parameters.append({"name": EPOCHS_PARAMETER, "parameterType": "int",
                           "feasibleSpace": {"min": "1", "max": str(settings.epochs)}})
    needed = hyperband_parallel_trials(settings) if algorithm == "hyperband" else 1
    parallel = needed if parallel_trials is None and algorithm == "hyperband" else (
        parallel_trials or DEFAULT_PARALLEL_TRIALS)
    if parallel < needed:
        raise ValueError(f"Katib's Hyperband with tune.epochs={settings.epochs} and tune.hyperband_factor="
                         f"{settings.hyperband_factor} runs its first bracket at once: it needs at least "
                         f"{needed} parallel trials, got {parallel}")
    objective = settings.objective
    other = next(o for o in TUNE_OBJECTIVES if o != objective)
    spec: dict[str, Any] = {
        "objective": {
            "type": "maximize" if TUNE_OBJECTIVES[objective] == "max" else "minimize",
            "objectiveMetricName": objective,
            "additionalMetricNames": [other],
            "metricStrategies": [{"name": objective, "value": "latest"}, {"name": other, "value": "latest"}],
        },
        "algorithm": {"algorithmName": algorithm, "algorithmSettings": _algorithm_settings(settings, algorithm)},
        "parallelTrialCount": parallel,
        "maxTrialCount": settings.max_trials,
        "maxFailedTrialCount": parallel,
        "parameters": parameters,
        "metricsCollectorSpec": {"collector": {"kind": "StdOut"},
                                 "source": {"filter": {"metricsFormat": [METRICS_FORMAT]}}},
        "trialTemplate": _trial_template(config, parameters, transformed, output, name, image),
    }
    if settings.median_stop_after_epochs:
        spec["earlyStopping"] = {"algorithmName": "medianstop", "algorithmSettings": [
            {"name": "min_trials_required", "value": str(max(1, settings.median_stop_min_trials))},
            {"name": "start_step", "value": str(settings.median_stop_after_epochs)}]}
    metadata: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/name": name,
                                                         "app.kubernetes.io/part-of": "cvpipe"}}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": API_VERSION, "kind": "Experiment", "metadata": metadata, "spec": spec}


def hyperband_parallel_trials(settings: TuneConfig) -> int:
    """The parallel trials Katib's Hyperband requires: ceil(eta ** s_max), s_max = floor(log_eta(epochs))."""
    eta = settings.hyperband_factor
    return math.ceil(eta ** int(math.log(settings.epochs) / math.log(eta)))


def _parameter(parameter: HyperParameter, algorithm: str) -> dict[str, Any]:
    """One `tune.space` entry as a Katib parameter named by its `train.` key: switches and names are
    categorical, numbers to choose from (and ranges with a step) discrete, other ranges int or double."""
    kind = train_key_type(parameter.key)
    if parameter.values:
        if kind in (bool, str):
            return {"name": parameter.key, "parameterType": "categorical",
                    "feasibleSpace": {"list": [_text(kind(v)) for v in parameter.values]}}
        return {"name": parameter.key, "parameterType": "discrete",
                "feasibleSpace": {"list": [_text(kind(v)) for v in parameter.values]}}
    if kind is float and parameter.step and not parameter.log:
        count = int(round((parameter.max - parameter.min) / parameter.step))
        grid = [round(parameter.min + i * parameter.step, 12) for i in range(count + 1)]
        return {"name": parameter.key, "parameterType": "discrete",
                "feasibleSpace": {"list": [_text(v) for v in grid if v <= parameter.max + 1e-12]}}
    if algorithm == "bayesianoptimization" and kind is float and not parameter.log:
        raise ValueError(f"tune.space {parameter.key}: Katib's bayesianoptimization samples every float range "
                         "log-uniformly; give the range a step (or values), or set tune.algorithm to random")
    if algorithm == "bayesianoptimization" and kind is int and parameter.log:
        logger.warning("tune.space %s: Katib's bayesianoptimization samples integer ranges uniformly, not "
                       "log-uniformly", parameter.key)
    space = {"min": _text(kind(parameter.min)), "max": _text(kind(parameter.max))}
    if parameter.step:
        space["step"] = _text(kind(parameter.step))
    if parameter.log:
        space["distribution"] = "logUniform"
    return {"name": parameter.key, "parameterType": "int" if kind is int else "double", "feasibleSpace": space}


def _algorithm_settings(settings: TuneConfig, algorithm: str) -> list[dict[str, str]]:
    if algorithm == "hyperband":
        return [{"name": "resource_name", "value": EPOCHS_PARAMETER},
                {"name": "eta", "value": str(settings.hyperband_factor)},
                {"name": "r_l", "value": str(settings.epochs)}]
    return [{"name": "random_state", "value": str(settings.seed)}]


def _trial_template(config: Config, parameters: list[dict[str, Any]], transformed: str, output: str,
                    name: str, image: str | None) -> dict[str, Any]:
    if image is None:
        from pipeline.image import PROJECT_IMAGE

        image = PROJECT_IMAGE
    trial_parameters = [{"name": TRIAL_NAME_PARAMETER, "reference": "${trialSpec.Name}",
                         "description": "the trial's name: its train output directory"}]
    searched = {p["name"] for p in parameters}
    args = [f"--transformed={transformed}", f"--output={output.rstrip('/')}/${{trialParameters.{TRIAL_NAME_PARAMETER}}}"]
    for key, value in _changed_train_settings(config.train):
        if key not in searched and key != EPOCHS_PARAMETER:
            args += ["--set", f"train.{key}={value}"]
    if EPOCHS_PARAMETER not in searched:
        args += ["--set", f"train.{EPOCHS_PARAMETER}={config.tune.epochs}"]
    args += ["--set", f"tracking.experiment={name}"]
    for parameter in parameters:
        placeholder = _placeholder_name(parameter["name"])
        trial_parameters.append({"name": placeholder, "reference": parameter["name"],
                                 "description": f"train.{parameter['name']}"})
        args += ["--set", f"train.{parameter['name']}=${{trialParameters.{placeholder}}}"]
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "cvpipe"}
    container = {
        "name": TRIAL_CONTAINER, "image": image, "command": ["python", "-m", "components.train"], "args": args,
        "env": [{"name": "MLFLOW_TRACKING_URI", "value": MLFLOW_URI},
                *({"name": key, "valueFrom": {"secretKeyRef": {"name": "cvpipe-mlflow", "key": key, "optional": True}}}
                  for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"))],
        "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "2", "memory": "8Gi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    job = {
        "apiVersion": "batch/v1", "kind": "Job",
        # A pod killed mid-trial is retried and train resumes the trial from its checkpoints.
        "spec": {"backoffLimit": 2, "template": {
            "metadata": {"labels": labels, "annotations": {"sidecar.istio.io/inject": "false"}},
            "spec": {
                "restartPolicy": "Never", "automountServiceAccountToken": False,
                "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [container],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": DATA_CLAIM}}],
            }}},
    }
    return {"primaryContainerName": TRIAL_CONTAINER,
            "successCondition": 'status.conditions.#(type=="Complete")#|#(status=="True")#',
            "failureCondition": 'status.conditions.#(type=="Failed")#|#(status=="True")#',
            "retain": True,  # finished trials' pods keep their logs
            "trialParameters": trial_parameters, "trialSpec": job}


def _changed_train_settings(train: TrainConfig) -> Iterator[tuple[str, str]]:
    """(dotted key, value as --set takes it) of every train setting that differs from the defaults."""
    def flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, Mapping):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[prefix + key] = value
        return out

    current, default = flat(dataclasses.asdict(train)), flat(dataclasses.asdict(TrainConfig()))
    for key in sorted(current):
        if current[key] != default.get(key):
            value = current[key]
            yield key, ",".join(map(_text, value)) if isinstance(value, list) else _text(value)


def _placeholder_name(key: str) -> str:
    """A trial parameter's name for a `train.` key: `augment.crop_ratio` -> `augmentCropRatio`."""
    words = key.replace(".", "_").split("_")
    return words[0] + "".join(w.capitalize() for w in words[1:])


def _text(value: Any) -> str:
    """A value as Katib lists it and `--set` reads it back (YAML): true/false, numbers, names."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def experiment_yaml(experiment: Mapping[str, Any], command: str) -> str:
    """The Experiment as a YAML file that says how it was made and how to run it."""
    name = experiment["metadata"]["name"]
    header = (
        f"# Generated by components/tune/katib.py:\n#   {command}\n"
        "# Edit the configuration and render again rather than this file. The search of components.tune on a\n"
        "# cluster: Katib runs each"
        " trial as a Job of the project image (python -m components.train on the trial's\n"
        f"# values) on the transform output in the {DATA_CLAIM} claim (infra/kubeflow; see\n"
        "# infra/training/prepare-demo-data.yaml).\n"
        "# Needs Katib v0.18 or later (logUniform ranges) and a namespace labelled\n"
        "# katib.kubeflow.org/metrics-collector-injection=enabled (Kubeflow profiles are).\n"
        "#   kubectl apply -k infra/katib\n"
        f"#   kubectl -n kubeflow get experiment {name} -w; kubectl -n kubeflow get trials\n"
        f"#   kubectl -n kubeflow get experiment {name} -o jsonpath='{{.status.currentOptimalTrial}}'\n"
    )
    return header + yaml.safe_dump(dict(experiment), sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    from components import cli

    parser = cli.parser("python -m components.tune.katib", "Render the hyperparameter search of the configuration "
                        "(tune.*) as a Katib Experiment whose trials run components.train in the project image.")
    parser.add_argument("--output", metavar="FILE", help="write the Experiment here (default: print it)")
    parser.add_argument("--transformed", default=DEFAULT_TRANSFORMED, help="the transform output as the trial "
                        f"pods see it (default: {DEFAULT_TRANSFORMED})")
    parser.add_argument("--trials-dir", default=DEFAULT_OUTPUT, help="where each trial writes its train output, "
                        f"as the pods see it (default: {DEFAULT_OUTPUT})")
    parser.add_argument("--name", default=DEFAULT_NAME, help=f"the Experiment's name (default: {DEFAULT_NAME})")
    parser.add_argument("--namespace", help="the Experiment's namespace (default: none, as kustomize sets it)")
    parser.add_argument("--image", help="the trials' image (default: the project image of this version)")
    parser.add_argument("--parallel-trials", type=int, help=f"trials at once (default: {DEFAULT_PARALLEL_TRIALS}; "
                        "Hyperband: what its first bracket needs)")
    add_tune_flags(parser, "algorithm", "max_trials", "epochs", "seed")
    cli.add_config_arguments(parser)
    args = parser.parse_args(argv)
    args.overrides += tune_overrides(args)
    if args.parallel_trials is not None and args.parallel_trials < 1:
        cli.usage_error(parser, "--parallel-trials must be >= 1")
    cli.start_logging(args)
    config = cli.config_from_args(parser, args)
    if args.image:
        from pipeline.image import check_pinned

        try:
            check_pinned(args.image)
        except ValueError as e:
            cli.usage_error(parser, f"--image {e}")
    try:
        experiment = render_experiment(config, transformed=args.transformed, output=args.trials_dir, name=args.name,
                                       namespace=args.namespace, image=args.image, parallel_trials=args.parallel_trials)
    except ValueError as e:
        cli.usage_error(parser, str(e))
    command = shlex.join(["python", "-m", "components.tune.katib", *(sys.argv[1:] if argv is None else argv)])
    text = experiment_yaml(experiment, command)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
        logger.info("Wrote the Katib Experiment %s (%d parameters, %s) to %s", args.name,
                    len(experiment["spec"]["parameters"]), experiment["spec"]["algorithm"]["algorithmName"],
                    args.output)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

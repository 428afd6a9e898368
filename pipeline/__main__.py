"""CLI: python -m pipeline compile | run | submit | schedule | retrain (see --help of each)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import yaml

from components import cli
from components.config import Config
from components.ingest.layout import EXPECTED_LAYOUT, local_input_problem

if TYPE_CHECKING:  # it loads kfp: the command line is checked first
    from pipeline.definition import PlatformOptions

logger = logging.getLogger("pipeline")

DEFAULT_PACKAGE = "cvpipe.yaml"
DEFAULT_WORKDIR = "runs/local"


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("python -m pipeline", "The cvpipe Kubeflow pipeline: compile it, run it here (kfp.local), "
                        "submit or schedule it on a cluster, or retrain on a policy.")
    commands = parser.add_subparsers(dest="command", required=True)
    compile_ = cli.add_subcommand(commands, "compile", "write the KFP IR YAML")
    compile_.add_argument("--output", default=DEFAULT_PACKAGE, help=f"IR YAML file (default {DEFAULT_PACKAGE})")
    run = cli.add_subcommand(commands, "run", "run the whole pipeline on this machine with kfp.local")
    submit = cli.add_subcommand(commands, "submit", "start one run on a Kubeflow Pipelines cluster")
    schedule = cli.add_subcommand(commands, "schedule", "create a recurring run (scheduled retraining) on a cluster")
    retrain = cli.add_subcommand(commands, "retrain", "run the pipeline now if the retraining policy says so")
    for command in (compile_, run, submit, schedule, retrain):
        cli.add_config_arguments(command)
    for command in (compile_, submit, schedule, retrain):
        _add_platform_arguments(command)
    for command in (run, submit, schedule, retrain):
        _add_run_arguments(command)
    for command in (submit, schedule, retrain):
        _add_cluster_arguments(command, required=command is not retrain)
    run.add_argument("--workdir", default=DEFAULT_WORKDIR, help="pipeline artifacts go to WORKDIR/kfp and the served "
                     f"model to WORKDIR/serving unless --serving-base-path (default {DEFAULT_WORKDIR})")
    run.add_argument("--no-cache", action="store_true", help="rerun ingest and transform even on unchanged data")
    schedule.add_argument("--cron", required=True, help='when, in cron syntax, e.g. "0 3 * * *" (03:00 daily)')
    schedule.add_argument("--name", default="cvpipe-retraining", help="the recurring run's name")
    from pipeline.retrain import add_policy_arguments

    add_policy_arguments(retrain)
    retrain.add_argument("--dry-run", action="store_true", help="decide and explain, run nothing")
    retrain.add_argument("--workdir", default=DEFAULT_WORKDIR, help="where a local run writes (without --host)")

    args = parser.parse_args(argv)
    reads_here = args.command == "run" or (args.command == "retrain" and not args.host)  # else: the cluster's
    problem = local_input_problem(args.data) if reads_here else None
    if problem:
        cli.usage_error(parser, f"--data {problem}")
    cli.start_logging(args)
    config = cli.config_from_args(parser, args)
    from mlflow.exceptions import MlflowException

    try:
        return _COMMANDS[args.command](args, config)
    except (OSError, ValueError, RuntimeError, MlflowException) as e:
        logger.error("%s", e)
        return 1


def _compile(args: argparse.Namespace, config: Config) -> int:
    from kfp import compiler

    from pipeline.definition import build_pipeline

    compiler.Compiler().compile(build_pipeline(config, _platform(args)), args.output)
    logger.info("Wrote the pipeline's IR to %s", args.output)
    return 0


def _run(args: argparse.Namespace, config: Config, extra: Mapping[str, Any] = {}) -> int:
    from pipeline.local import run_local

    arguments = {**_arguments(args, config, serving_default=os.path.join(args.workdir, "serving")), **extra}
    summary = run_local(arguments, config, pipeline_root=os.path.join(args.workdir, "kfp"),
                        log_file=os.path.join(args.workdir, "pipeline.log"), cache=not args.no_cache)
    print(summary)  # noqa: T201 (the command's output)
    return 0


def _submit(args: argparse.Namespace, config: Config, extra: Mapping[str, Any] = {}) -> int:
    from pipeline.cluster import submit

    arguments = {**_arguments(args, config), **extra}
    _warn_about_pod_local_paths(args, config, arguments)
    with _package(args, config) as package:
        run_id = submit(package, arguments, host=args.host, experiment=args.experiment,
                        run_name=args.run_name, namespace=args.namespace, token=args.token)
    print(run_id)  # noqa: T201
    return 0


def _schedule(args: argparse.Namespace, config: Config) -> int:
    from pipeline.cluster import schedule

    arguments = _arguments(args, config)
    _warn_about_pod_local_paths(args, config, arguments)
    with _package(args, config) as package:
        recurring_id = schedule(package, arguments, host=args.host, experiment=args.experiment,
                                name=args.name, cron=args.cron, namespace=args.namespace, token=args.token)
    print(recurring_id)  # noqa: T201
    return 0


def _retrain(args: argparse.Namespace, config: Config) -> int:
    from components.tracking.runs import finish_run
    from pipeline.parameters import CONFIG_KEYS, resolve_config
    from pipeline.retrain import evaluate_policy, policy_from_args, reserve_run

    # The policy reads the MLflow store (and registered model) the pipeline run will write to.
    typed = {name: value for name, value in _arguments(args, config).items() if name in CONFIG_KEYS}
    policy_config = resolve_config(config.to_dict(), typed)
    decision = evaluate_policy(policy_from_args(args), policy_config, args.data)
    print(decision)  # noqa: T201
    if not decision.retrain or args.dry_run:
        return 0
    reserved = {"mlflow_run_id": reserve_run(decision, policy_config)}
    try:
        if args.host:
            return _submit(args, config, reserved)
        return _run(argparse.Namespace(**vars(args), no_cache=False), config, reserved)
    except BaseException as e:  # the run did not start or did not end: say so in MLflow
        status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
        finish_run(reserved["mlflow_run_id"], policy_config, status=status, if_running=True)
        raise


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help=f"the images: {EXPECTED_LAYOUT} (any tf.io.gfile path, "
                        "e.g. gs://)")
    parser.add_argument("--model-name", help="the registered and served model name "
                        "(default: tracking.registered_model)")
    parser.add_argument("--serving-base-path", help="TF Serving's model root: models.config and NAME/<version>")
    parser.add_argument("--serving-address", help="a running TF Serving (host:grpc_port) for a safe label move")
    parser.add_argument("--batch-input", help="what to score after deploy: images, a CSV or TFRecords, or "
                        "split:test for this run's test split")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="any pipeline parameter, e.g. --param epochs=10 (repeatable; YAML values)")


def _add_platform_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", help="the project image for every step (pinned tag or digest); default "
                        "pipeline.image.PROJECT_IMAGE")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs for the tune and train steps (they then run the GPU image)")
    parser.add_argument("--gpu-image", help="the GPU image (default pipeline.image.GPU_IMAGE)")
    parser.add_argument("--pvc", action="append", default=[], metavar="NAME:/MOUNT/PATH",
                        help="mount a PersistentVolumeClaim on every step (repeatable)")
    parser.add_argument("--gcp-secret", help="Secret with key.json: Google credentials for gs://")
    parser.add_argument("--aws-secret", help="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for s3://")
    parser.add_argument("--mlflow-secret", help="Secret with MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")


def _add_cluster_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--host", required=required, help="the KFP API, e.g. http://localhost:8080 (port-forward "
                        "of ml-pipeline-ui)" + ("" if required else "; without it the run is local"))
    parser.add_argument("--experiment", default="cvpipe", help="KFP experiment (default cvpipe)")
    parser.add_argument("--run-name", help="the KFP run's name")
    parser.add_argument("--namespace", help="the KFP namespace (multi-user Kubeflow: your profile's)")
    parser.add_argument("--token", default=os.environ.get("KFP_TOKEN"), help="a bearer token (default $KFP_TOKEN)")


def _platform(args: argparse.Namespace) -> PlatformOptions:
    from pipeline.definition import PlatformOptions

    pvcs = {}
    for item in args.pvc:
        name, sep, mount_path = item.partition(":")
        if not sep or not name or not mount_path.startswith("/"):
            raise ValueError(f"--pvc {item!r}: expected NAME:/MOUNT/PATH")
        pvcs[name] = mount_path
    return PlatformOptions(image=args.image, gpus=args.gpus, gpu_image=args.gpu_image, pvcs=pvcs,
                           gcp_secret=args.gcp_secret, aws_secret=args.aws_secret, mlflow_secret=args.mlflow_secret)


def _arguments(args: argparse.Namespace, config: Config, serving_default: str | None = None) -> dict[str, Any]:
    """The run's pipeline arguments: the flags given, then --param NAME=VALUE (names checked)."""
    from pipeline.definition import build_pipeline

    known = set(build_pipeline(config).component_spec.inputs)
    arguments: dict[str, Any] = {"data_source": args.data}
    for flag in ("model_name", "serving_base_path", "serving_address", "batch_input"):
        if getattr(args, flag) is not None:
            arguments[flag] = getattr(args, flag)
    if serving_default is not None:
        arguments.setdefault("serving_base_path", os.path.abspath(serving_default))
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--param {item!r}: expected NAME=VALUE")
        if name.strip() not in known:
            raise ValueError(f"--param {item!r}: the pipeline has no parameter {name.strip()!r}; "
                             f"it has {sorted(known)}")
        arguments[name.strip()] = yaml.safe_load(value) if value.strip() else ""
    return arguments


def _warn_about_pod_local_paths(args: argparse.Namespace, config: Config, arguments: Mapping[str, Any]) -> None:
    """On a cluster, a SQLite MLflow store or a serving base path outside every mounted volume is a
    file inside each step's pod: it vanishes with the pod."""
    uri = arguments.get("mlflow_tracking_uri") or config.tracking.tracking_uri
    if config.tracking.enabled and uri.startswith("sqlite:"):
        logger.warning("MLflow tracking URI %s is a file inside each step's pod on a cluster: pass "
                       "--param mlflow_tracking_uri=http://<your MLflow server> (infra/mlflow)", uri)
    serving = arguments.get("serving_base_path", "/models")
    mounts = _platform(args).pvcs.values()
    if "://" not in serving and not any(serving.startswith(mount.rstrip("/") + "/") or serving == mount
                                        for mount in mounts):
        logger.warning("serving_base_path %s is on no mounted volume (--pvc NAME:/PATH): deploy would write "
                       "into its own pod, where TF Serving never sees it", serving)


@contextlib.contextmanager
def _package(args: argparse.Namespace, config: Config) -> Iterator[str]:
    """The pipeline compiled into a temporary IR file, for the duration of a `with` block."""
    with tempfile.TemporaryDirectory(prefix="cvpipe-pipeline-") as directory:
        path = os.path.join(directory, DEFAULT_PACKAGE)
        _compile(argparse.Namespace(**vars(args), output=path), config)
        yield path


_COMMANDS = {"compile": _compile, "run": _run, "submit": _submit, "schedule": _schedule, "retrain": _retrain}

if __name__ == "__main__":
    sys.exit(main())

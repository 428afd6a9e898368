"""Command-line plumbing shared by the stage CLIs: logging, configuration and Beam options."""

from __future__ import annotations

import argparse
import logging
import os
import re
from typing import TYPE_CHECKING, Callable, Sequence

from components.config import DIRECT_RUNNING_MODES, Config, ConfigError, load_config

if TYPE_CHECKING:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from components.staging import OutputExistsError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Set by a pipeline run: stage runs are tracked as children of this MLflow run.
PARENT_RUN_ENV = "CVPIPE_MLFLOW_PARENT_RUN_ID"
_DIRECT_RUNNERS = ("directrunner", "direct", "apache_beam.runners.direct.direct_runner.directrunner")


# The DirectRunner relays each worker log line as one INFO line of protobuf text on this logger.
_RELAY_LOGGER = "apache_beam.runners.portability.local_job_service"
_RELAYED = re.compile(r'message: "(?P<message>(?:[^"\\]|\\.)*)".*?log_location: "(?P<location>[^"]*)"', re.S)


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


def configure_logging(level: str | None = None) -> None:
    """Logs to stderr at `level` (default: $CVPIPE_LOG_LEVEL or INFO), Beam's own lines from WARNING."""
    logging.basicConfig(level=(level or os.environ.get("CVPIPE_LOG_LEVEL", "INFO")).upper(), format=LOG_FORMAT)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for chatty in ("apache_beam", "absl", "tensorflow"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    relay = logging.getLogger(_RELAY_LOGGER)
    relay.setLevel(logging.INFO)
    relay.addFilter(_WorkerLogFilter())


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds `--config FILE` and repeatable `--set section.key=value`."""
    parser.add_argument("--config", help="YAML or JSON configuration file (any tf.io.gfile path)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one configuration value, e.g. --set ingest.min_side=64 (repeatable)",
    )


def add_beam_stage_arguments(parser: argparse.ArgumentParser, input_help: str) -> None:
    """The arguments every Beam stage takes: --input, --output, --runner, --overwrite, config.

    Parse with `parse_known_args`: what is left over are Beam pipeline options, passed on unchanged.
    """
    parser.add_argument("--input", required=True, help=input_help)
    parser.add_argument("--output", required=True, help="output directory (any tf.io.gfile path)")
    parser.add_argument("--runner", help="Beam runner: DirectRunner (default), DataflowRunner, FlinkRunner, SparkRunner")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    add_config_arguments(parser)


def config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Config:
    """Loads the configuration named by the parsed arguments; a bad one exits with a clear message."""
    try:
        return load_config(args.config, args.overrides)
    except ConfigError as e:
        parser.error(str(e))


def beam_options(config: Config, runner: str | None, extra_args: Sequence[str],
                 direct_running_mode: str = "multi_processing"):
    """Pipeline options: the config's runner and options, then command-line Beam flags.

    The DirectRunner runs in `--direct_running_mode` or `beam.direct_running_mode`, or else in the
    stage's `direct_running_mode` (multi_processing when only a worker count above one is given),
    with `--direct_num_workers`, or one worker in memory and `beam.direct_num_workers` otherwise. Any
    other runner receives its flags (`--project`, `--region`, `--flink_master`, ...) unchanged.
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    runner = runner or config.beam.runner
    flags = [f"--runner={runner}", *config.beam.options, *extra_args]
    if is_direct_runner(runner):
        given = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)  # as Beam parses
        given.add_argument("--direct_running_mode", choices=DIRECT_RUNNING_MODES)
        given.add_argument("--direct_num_workers", type=int)
        try:
            flag, _ = given.parse_known_args(flags)
        except argparse.ArgumentError as e:
            raise ConfigError(f"Beam option {e}") from None
        mode = (flag.direct_running_mode or config.beam.direct_running_mode
                or ("multi_processing" if (flag.direct_num_workers or 1) > 1 else direct_running_mode))
        workers = flag.direct_num_workers
        if workers is None:
            workers = 1 if mode == "in_memory" else config.beam.direct_num_workers
        flags += [f"--direct_running_mode={mode}", f"--direct_num_workers={workers}"]
    return PipelineOptions(flags)


def is_direct_runner(runner: str) -> bool:
    """Whether Beam resolves the runner name `runner` to its DirectRunner."""
    return runner.lower() in _DIRECT_RUNNERS


def _uses_direct_runner(options: PipelineOptions) -> bool:
    from apache_beam.options.pipeline_options import StandardOptions

    return is_direct_runner(options.view_as(StandardOptions).runner or "DirectRunner")


def runs_on_one_worker(options: PipelineOptions) -> bool:
    """Whether the pipeline runs on a single DirectRunner worker: a reshuffle has nothing to spread work over."""
    from apache_beam.options.pipeline_options import DirectOptions

    return _uses_direct_runner(options) and options.view_as(DirectOptions).direct_num_workers == 1


def beam_pipeline(options: PipelineOptions) -> beam.Pipeline:
    """A Beam pipeline with `options` (see `beam_options`).

    The DirectRunner runs on its batch engine, the FnApiRunner, named here: since Beam 2.6x the
    DirectRunner first tries Prism, a binary it downloads from GitHub at run time, and falls back
    to the FnApiRunner when that fails. Prism would ignore `--direct_running_mode`; offline, the
    download attempt costs time or hangs on a firewall that drops packets.

    In-process bundles also get a shorter state-sampling period (`_shorten_state_sampling`).
    """
    import apache_beam as beam
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    if not _uses_direct_runner(options):
        return beam.Pipeline(options=options)
    _shorten_state_sampling()
    # What the DirectRunner hands the FnApiRunner: workers read the pipeline options from it.
    provision_info = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(
        pipeline_options=JobServiceHandle.encode_pipeline_options(options.get_all_options())))
    return beam.Pipeline(runner=fn_runner.FnApiRunner(provision_info=provision_info), options=options)


# Beam's SDK worker ends every bundle by joining its state-sampler thread, which sleeps up to 200 ms
# between samples (statesampler.DEFAULT_SAMPLING_PERIOD_MS, with no option to change it): a long
# bundle waits 0-200 ms for nothing. An ingest run of 3,000 images lost 0.14-0.2 s to it here.
# The sampler's thread runs without the GIL; waking every 20 ms costs nothing measurable.
EMBEDDED_SAMPLING_PERIOD_MS = 20


def _shorten_state_sampling() -> None:
    """Makes the state samplers of bundles processed in this process tick every EMBEDDED_SAMPLING_PERIOD_MS."""
    from apache_beam.runners.worker import statesampler

    try:
        init = statesampler.StateSampler.__init__
        if init.__defaults__ == (statesampler.DEFAULT_SAMPLING_PERIOD_MS,):
            init.__defaults__ = (EMBEDDED_SAMPLING_PERIOD_MS,)
        patched = init.__defaults__ == (EMBEDDED_SAMPLING_PERIOD_MS,)
    except (AttributeError, TypeError):  # a Beam whose sampler is built otherwise
        patched = False
    if not patched:
        logging.getLogger(__name__).warning(
            "Beam's StateSampler is not as expected: in-process bundles may end up to a sampling period late")


def run_stage(stage: str, action: Callable[[], str | None], config: Config,
              errors: tuple[type[Exception], ...] = (OSError, ValueError)) -> int:
    """Runs a stage CLI's `action` and tracks the output directory it returns.

    Returns the exit code: 1 with one clear log line for the expected `errors`, 0 otherwise. With
    `tracking.enabled`, the finished output is logged to MLflow, as a child of the run named by
    $CVPIPE_MLFLOW_PARENT_RUN_ID when a pipeline set it. A rerun refused because its output exists
    (staging.OutputExistsError) tracks that output instead when it is all that is missing: the
    output is finished, made from the origin the rerun was given, and not tracked yet (its run was
    killed after writing it).
    """
    from components.staging import OutputExistsError

    logger = logging.getLogger(f"components.{stage}")
    try:
        output = action()
    except OutputExistsError as e:
        output = _untracked_output(stage, e, config, logger)
        if output is None:
            return 1
    except errors as e:
        logger.error("%s", e)
        return 1
    if output is not None and config.tracking.enabled:  # None: a non-chief worker, nothing of its own
        from components.tracking.client import tracking_uri
        from components.tracking.runs import log_stage

        try:
            log_stage(stage, output, config, parent_run_id=os.environ.get(PARENT_RUN_ENV))
        except Exception as e:  # the output is complete; say so and fail the command
            logger.error("%s is complete, but logging it to MLflow (%s) failed: %s", output,
                         tracking_uri(config.tracking), e)
            return 1
    return 0


def _untracked_output(stage: str, error: OutputExistsError, config: Config, logger: logging.Logger) -> str | None:
    """The existing output of `error` when only its tracking is missing (see `run_stage`); otherwise
    None, with the error logged (and why the output is not taken as it is, when that is known)."""
    from components.manifest import read_manifest
    from components.tracking.client import tracking_uri
    from components.tracking.runs import stage_runs

    if error.origin is None or not config.tracking.enabled:
        logger.error("%s", error)
        return None
    try:
        manifest = read_manifest(error.output, stage)
    except (OSError, ValueError) as e:
        logger.error("%s (%s)", error, e)
        return None
    difference = error.origin.difference(manifest)
    if difference:
        logger.error("%s (it was made from other inputs or config: %s)", error, difference)
        return None
    try:
        runs = stage_runs(stage, error.output, manifest.fingerprint, config)
    except Exception as e:  # MLflow is unreachable: nothing is known, nothing is done
        logger.error("%s (whether MLflow (%s) tracked it is unknown: %s)", error,
                     tracking_uri(config.tracking), e)
        return None
    if runs:
        logger.error("%s (it is tracked already: MLflow run %s)", error, runs[0])
        return None
    logger.warning("%s is finished and made from the same inputs and config, but was never tracked (its run "
                   "ended before logging it to MLflow): tracking it now", error.output)
    return error.output

"""The Beam runtime of the Beam stages: pipeline options, DirectRunner settings and the sampler patch."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING, Sequence

from components.config import DIRECT_RUNNING_MODES, Config, ConfigError

if TYPE_CHECKING:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

_DIRECT_RUNNERS = ("directrunner", "direct", "apache_beam.runners.direct.direct_runner.directrunner")


def beam_options(config: Config, runner: str | None, extra_args: Sequence[str],
                 direct_running_mode: str = "multi_processing") -> PipelineOptions:
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

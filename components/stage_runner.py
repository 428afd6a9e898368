"""Runs a stage's command: exit codes for expected errors, and MLflow tracking of the output it finishes."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Callable

from components.config import Config

if TYPE_CHECKING:  # it loads TensorFlow: a stage command checks its arguments first
    from components.staging import OutputExistsError

# Set by a pipeline run: stage runs are tracked as children of this MLflow run.
PARENT_RUN_ENV = "CVPIPE_MLFLOW_PARENT_RUN_ID"


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
    from components.tracking.client import tracking_uri
    from components.tracking.runs import stage_runs
    from components.manifest import read_manifest

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

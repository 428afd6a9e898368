"""The register stage: an evaluated export becomes a new version of the registered MLflow model.

    python -m components.register --model EXPORT_DIR --evaluation EVALUATE_DIR

The version is tagged with its lineage, blessing and headline metrics; a blessed version takes the
alias `champion` (the previous champion keeps its version number), an unblessed one leaves the
alias where it was. The run is a child of $CVPIPE_MLFLOW_PARENT_RUN_ID when a pipeline set it, and
that pipeline run gets the model and its headline metrics too.
"""

from __future__ import annotations

import logging
import os
import posixpath
import sys

from components.artifacts import BLESSING_FILE, EVALUATION_FILE, saved_model_dir
from components.config import Config
from components.files import read_json
from components.manifest import read_manifest

logger = logging.getLogger("components.register")


def run_register(model: str, evaluation: str, config: Config, *, parent_run_id: str | None = None):
    """Registers the exported `model` that `evaluation` evaluated; returns its registry.ModelVersionInfo."""
    from components.tracking.registry import register_model
    from components.tracking.runs import finish_run, start_run

    model = saved_model_dir(model)
    read_manifest(evaluation, "evaluate")
    evaluated = read_json(posixpath.join(evaluation, EVALUATION_FILE))
    if posixpath.normpath(evaluated["model"]) != posixpath.normpath(model):
        raise ValueError(f"{evaluation} evaluated {evaluated['model']}, not {model}: evaluate this model first")
    blessing = read_json(posixpath.join(evaluation, BLESSING_FILE))
    metrics = {f"{split}.{name}": value for split, m in evaluated["splits"].items()
               for name, value in (("accuracy", m["accuracy"]), ("macro_f1", m["macro"]["f1"]))}
    run_id = start_run(config, run_name="register", tags={"cvpipe.stage": "register"},
                       parent_run_id=parent_run_id)
    try:
        info = register_model(model, config, run_id=run_id, blessed=blessing["blessed"], metrics=metrics,
                              parent_run_id=parent_run_id)
    except BaseException:
        finish_run(run_id, config, status="FAILED")
        raise
    finish_run(run_id, config)
    return info


def main(argv: list[str] | None = None) -> int:
    """CLI: registers `--model` evaluated by `--evaluation`; the exit code says whether it is registered."""
    from components import cli
    from components.stage_runner import PARENT_RUN_ENV

    parser = cli.parser("python -m components.register", "Register an evaluated export in the MLflow model "
                        "registry; a blessed one becomes the champion (alias `champion`).")
    parser.add_argument("--model", required=True, help="exported SavedModel (BASE/NAME/<version> or BASE/NAME)")
    parser.add_argument("--evaluation", required=True, help="the evaluate output of that model")
    cli.add_config_arguments(parser)
    args = parser.parse_args(argv)
    cli.require_path(parser, args.model, "--model", "an exported SavedModel (BASE/NAME/<version> or BASE/NAME)")
    cli.require_path(parser, args.evaluation, "--evaluation", "an evaluate output directory")
    cli.start_logging(args)
    config = cli.config_from_args(parser, args)
    if not config.tracking.enabled:
        cli.usage_error(parser, "registering needs MLflow: tracking.enabled is false")
    try:
        info = run_register(args.model, args.evaluation, config, parent_run_id=os.environ.get(PARENT_RUN_ENV))
    except (OSError, ValueError) as e:
        logger.error("%s", e)
        return 1
    logger.info("%s %s", info.uri, "is the champion" if info.champion else "is registered (not blessed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

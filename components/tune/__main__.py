"""CLI: python -m components.tune --transformed DIR --output DIR [--max-trials N] [--algorithm NAME] [--max-minutes M]."""

from __future__ import annotations

import sys

from components import cli
from components.stage_runner import run_stage
from components.tune import add_tune_flags, tune_overrides


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("python -m components.tune", "Search hyperparameters of the train stage on a transform "
                        "output (the space is tune.space; every trial trains a model). Rerun the same command "
                        "to resume a killed search. The best hyperparameters go to best_config.yaml, which "
                        "`python -m components.train --config` takes.")
    parser.add_argument("--transformed", required=True, help="transform output directory")
    parser.add_argument("--output", required=True, help="search output directory")
    parser.add_argument("--overwrite", action="store_true", help="search again over a finished search")
    add_tune_flags(parser)
    cli.add_config_arguments(parser)
    args = parser.parse_args(argv)
    cli.require_path(parser, args.transformed, "--transformed", "a transform output directory")
    args.overrides += tune_overrides(args)
    cli.start_logging(args)
    config = cli.config_from_args(parser, args)
    from components.tune.search import run_tuning  # TensorFlow and KerasTuner load after the arguments are checked

    return run_stage("tune", lambda: run_tuning(args.transformed, args.output, config,
                                                overwrite=args.overwrite).output, config,
                     errors=(OSError, ValueError, RuntimeError))


if __name__ == "__main__":
    sys.exit(main())

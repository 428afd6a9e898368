"""CLI: python -m components.evaluate --model EXPORT_DIR --data INGEST_OR_TRANSFORM_DIR --output DIR."""

from __future__ import annotations

import sys
import tempfile

from components import cli
from components.stage_runner import run_stage


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(
        "python -m components.evaluate",
        "Evaluate an exported serving model on held-out splits (metrics, slices, confusion matrix, "
        "calibration) and bless it against thresholds and the current champion.")
    parser.add_argument("--model", required=True, help="exported SavedModel (BASE/NAME/<version>, or BASE/NAME for "
                        "its latest version)")
    parser.add_argument("--data", required=True, help="ingest (or transform) output to evaluate on")
    parser.add_argument("--output", required=True, help="evaluation output directory")
    champion = parser.add_mutually_exclusive_group()
    champion.add_argument("--champion", help="the champion SavedModel to compare with (default: the registered "
                          "model's @champion in MLflow, when tracking is on)")
    champion.add_argument("--no-champion", action="store_true", help="absolute thresholds only")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    cli.add_config_arguments(parser)
    args = parser.parse_args(argv)
    cli.require_path(parser, args.model, "--model", "an exported SavedModel (BASE/NAME/<version> or BASE/NAME)")
    cli.require_path(parser, args.data, "--data", "an ingest or transform output directory")
    if args.champion:
        cli.require_path(parser, args.champion, "--champion", "an exported SavedModel")
    cli.start_logging(args)
    config = cli.config_from_args(parser, args)
    from components.evaluate.champion import Champion, registered_champion
    from components.evaluate.run import run_evaluate  # TensorFlow loads after the arguments are checked

    def evaluate() -> str:
        with tempfile.TemporaryDirectory(prefix="cvpipe-champion-") as download:
            champion = Champion(args.champion) if args.champion else None
            if not champion and not args.no_champion and config.tracking.enabled:
                champion = registered_champion(config, download)
            return run_evaluate(args.model, args.data, args.output, config, champion=champion,
                                overwrite=args.overwrite).output

    return run_stage("evaluate", evaluate, config)


if __name__ == "__main__":
    sys.exit(main())

"""CLI: python -m components.export --model TRAIN_DIR --transform TRANSFORM_DIR --output BASE/NAME."""

from __future__ import annotations

import sys

from components import cli
from components.stage_runner import run_stage


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(
        "python -m components.export",
        "Export a trained model with its tf.transform graph as a versioned SavedModel "
        "(TF Serving layout BASE/NAME/<version>/), with warm-up requests and TFLite variants.")
    parser.add_argument("--model", required=True, help="training output directory")
    parser.add_argument("--transform", required=True, help="transform output the model was trained on")
    parser.add_argument("--output", required=True, help="model base path and name, BASE/NAME")
    parser.add_argument("--version", type=int, help="version number (default: the next free integer)")
    cli.add_config_arguments(parser)
    args = parser.parse_args(argv)
    cli.require_path(parser, args.model, "--model", "a training output directory")
    cli.require_path(parser, args.transform, "--transform", "a transform output directory")
    cli.start_logging(args)
    config = cli.config_from_args(parser, args)
    from components.export.run import run_export  # TensorFlow loads after the arguments are checked

    return run_stage("export", lambda: run_export(args.model, args.transform, args.output, config,
                                                  version=args.version).output, config)


if __name__ == "__main__":
    sys.exit(main())

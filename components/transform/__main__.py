"""CLI: python -m components.transform --input INGEST_DIR --output DIR [--image-size N] [beam options]."""

from __future__ import annotations

import sys

from components import cli
from components.config import TransformConfig
from components.stage_runner import run_stage


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(
        "python -m components.transform",
        "Analyse the training split with tf.transform and materialise resized images. "
        "Arguments not listed here are passed to Beam.",
    )
    cli.add_beam_stage_arguments(parser, "ingest output directory")
    defaults = TransformConfig()
    parser.add_argument("--image-size", type=int,
                        help=f"output side in pixels (transform.image_size, default: {defaults.image_size})")
    parser.add_argument("--resize-method", choices=["pad", "crop", "stretch"],
                        help=f"pad: keep the aspect ratio, pad with black; crop: central square; stretch: ignore the "
                        f"ratio (transform.resize_method, default: {defaults.resize_method})")
    args, beam_args = parser.parse_known_args(argv)
    cli.require_path(parser, args.input, "--input", "an ingest output directory")
    if args.image_size:
        args.overrides.append(f"transform.image_size={args.image_size}")
    if args.resize_method:
        args.overrides.append(f"transform.resize_method={args.resize_method}")
    cli.start_logging(args)
    config = cli.config_from_args(parser, args)
    from components.transform.run import TransformError, run_transform  # TensorFlow loads after the arguments

    return run_stage("transform", lambda: run_transform(args.input, args.output, config, runner=args.runner,
                                                        beam_args=beam_args, overwrite=args.overwrite).output,
                     config, (TransformError, OSError, ValueError))


if __name__ == "__main__":
    sys.exit(main())

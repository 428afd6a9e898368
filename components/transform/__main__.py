"""CLI: python -m components.transform --input INGEST_DIR --output DIR [--image-size N] [beam options]."""

from __future__ import annotations

import argparse
import sys

from components.cli import add_beam_stage_arguments, config_from_args
from components.logging_setup import configure_logging
from components.stage_runner import run_stage
from components.transform.run import TransformError, run_transform


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m components.transform",
        description="Analyse the training split with tf.transform and materialise resized images. "
        "Arguments not listed here are passed to Beam.",
    )
    add_beam_stage_arguments(parser, "ingest output directory")
    parser.add_argument("--image-size", type=int, help="output side in pixels (transform.image_size)")
    parser.add_argument("--resize-method", choices=["pad", "crop", "stretch"], help="transform.resize_method")
    args, beam_args = parser.parse_known_args(argv)
    if args.image_size:
        args.overrides.append(f"transform.image_size={args.image_size}")
    if args.resize_method:
        args.overrides.append(f"transform.resize_method={args.resize_method}")
    configure_logging()
    config = config_from_args(parser, args)
    return run_stage("transform", lambda: run_transform(args.input, args.output, config, runner=args.runner,
                                                        beam_args=beam_args, overwrite=args.overwrite).output,
                     config, (TransformError, OSError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
